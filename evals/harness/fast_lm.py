"""A log-likelihood model for lm-eval, registered as ``factory-hf``.

It tokenizes exactly as lm-eval's ``hf`` model (HFLM) does and returns the same
(log-likelihood, is-greedy) pairs, but computes them with less work:

- requests that share a context are packed into one row (``packing``): the
  context runs once per document instead of once per choice;
- rows are sorted by length and batched by a token budget, so padding is small;
- only the positions that predict a continuation token go through the output
  head and the log-softmax over the vocabulary, in chunks, instead of every
  position of every padded sequence.

Use it from Python (``FastLM(pretrained=dir)``) or from the command line:
``lm_eval --model factory-hf --model_args pretrained=DIR`` after importing
``evals.harness``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from evals.engines import sizing
from evals.harness import packing
from foundation.device import resolve_device
from foundation.errors import FactoryError
from foundation.hashing import sha256_json, source_digests

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_model("factory-hf")
class FastLM(TemplateLM):
    def __init__(
        self,
        pretrained: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str | None = None,
        max_batch_tokens: int | None = None,
        row_tokens: int = 1024,
        head_chunk: int = 512,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        trust_remote_code: bool = False,
        store=None,
        **_ignored,
    ):
        """``store``: where answers are kept as they are computed, so an interrupted
        run resumes (``evals.completion_cache.LoglikStore``); None keeps nothing.
        ``batch_size`` (rows) and ``max_batch_tokens`` left unset (or ``batch_size``
        "auto") are sized for the device (``evals.engines.sizing``): 64 rows and 1024
        tokens on a CPU, from the memory left free by the weights on a GPU."""
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers loads only when a model does

        if str(dtype) not in _DTYPES:
            raise FactoryError(f"factory-hf: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self._device = resolve_device(str(device or "auto"))
        kwargs = {} if add_bos_token is None else {"add_bos_token": add_bos_token}
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=trust_remote_code, **kwargs)
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                pretrained, dtype=_DTYPES[str(dtype)], trust_remote_code=trust_remote_code, attn_implementation="sdpa"
            )
            .to(self._device)
            .eval()
        )
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self._max_length = max_length
        self.row_tokens = int(row_tokens)
        self.head_chunk = int(head_chunk)
        cost = sizing.ModelCost.from_config(self.model.config, self.model.dtype)
        rows, tokens = sizing.scoring_batch(
            sizing.device_free_bytes(self._device), cost, self.row_tokens, self.head_chunk
        )
        self.max_rows = rows if batch_size is None or str(batch_size).startswith("auto") else _rows(batch_size)
        self.max_batch_tokens = tokens if max_batch_tokens is None else int(max_batch_tokens)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.store = store
        self._split_head = self._head_is_separable()

    # -- what TemplateLM needs, with HFLM's semantics ----------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        from lm_eval.models.utils import resolve_max_length  # heavy: lm-eval's model helpers load transformers

        return self._max_length or resolve_max_length(self.model.config, self.tokenizer, default=2048)

    @property
    def device(self):
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            # A string that already starts with the BOS text gets no second one.
            if string.startswith(self.tokenizer.decode(self.prefix_token_id)):
                add_special_tokens = False
        extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **extra)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise FactoryError(
            "factory-hf scores multiple-choice log-likelihoods only; use lm-eval's hf model "
            "for rolling (perplexity) tasks"
        )

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise FactoryError(
            "factory-hf scores multiple-choice log-likelihoods only; run generation tasks through an evals engine"
        )

    # -- the fast part ----------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_ignored):
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        keys = None
        if self.store is not None:
            keys = self.store.keys(pairs, {"dtype": str(self.model.dtype), "max_length": self.max_length})
            results = [self.store.get(key) for key in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        rows = packing.plan_rows([pairs[i] for i in todo], self.max_length, self.row_tokens)
        bar = tqdm(
            total=len(requests),
            initial=len(requests) - len(todo),
            disable=disable_tqdm,
            desc="factory-hf loglikelihood",
        )
        try:
            with torch.inference_mode():
                for batch in packing.batches(rows, self.max_rows, self.max_batch_tokens):
                    done = []
                    for j, answer in self._score_batch(batch):
                        i = todo[j]
                        results[i] = answer
                        done.append(i)
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                    if keys is not None:
                        self.store.add([keys[i] for i in done], [results[i] for i in done])
                    bar.update(len(done))
        finally:
            if self.store is not None:
                self.store.close()  # what was computed is kept even when interrupted
            bar.close()
        return results

    def _score_batch(self, batch: list[packing.Row]):
        """(request index, (log-likelihood, is-greedy)) for every request the rows answer."""
        t = packing.collate(batch, self.pad_id, self._device)
        rows, cols, targets, owner, owners = [], [], [], [], []
        for b, row in enumerate(batch):
            for who, read_cols, read_targets in row.reads:
                owner += [len(owners)] * len(read_cols)
                owners.append(who)
                rows += [b] * len(read_cols)
                cols += read_cols
                targets += read_targets
        logp, greedy = self._target_logprobs(
            t,
            torch.tensor(rows, device=self._device),
            torch.tensor(cols, device=self._device),
            torch.tensor(targets, device=self._device),
        )
        owner_t = torch.tensor(owner, device=self._device)
        total = torch.zeros(len(owners), dtype=torch.float64, device=self._device).index_add_(0, owner_t, logp)
        missed = torch.zeros(len(owners), dtype=torch.long, device=self._device).index_add_(
            0, owner_t, (~greedy).long()
        )
        for k, who in enumerate(owners):
            answer = (float(total[k]), bool(missed[k] == 0))
            for i in who:
                yield i, answer

    def _target_logprobs(self, t, rows, cols, targets):
        """log p(target) and whether it is the argmax, at each (row, col) read."""
        mask = packing.attention_mask(t["segments"])
        if self.model.config._attn_implementation != "sdpa":
            mask = torch.zeros(mask.shape, dtype=self.model.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(self.model.dtype).min
            )
        inputs = {"input_ids": t["input_ids"], "position_ids": t["position_ids"], "attention_mask": mask}
        if self._split_head:
            picked = self.model.get_decoder()(**inputs).last_hidden_state[rows, cols]
            head = self.model.get_output_embeddings()
        else:  # the model changes its logits after the head: take them whole
            picked = self.model(**inputs).logits[rows, cols]
            head = None
        logp = torch.empty(len(targets), dtype=torch.float64, device=self._device)
        greedy = torch.empty(len(targets), dtype=torch.bool, device=self._device)
        for s in range(0, len(targets), self.head_chunk):
            part = picked[s : s + self.head_chunk]
            # log_softmax rather than logit - logsumexp: the same kernel as lm-eval's,
            # so the values agree to the last bits rather than to about 1e-5 a token.
            logprobs = torch.log_softmax((head(part) if head is not None else part).float(), dim=-1)
            tgt = targets[s : s + self.head_chunk]
            logp[s : s + len(tgt)] = logprobs.gather(1, tgt[:, None])[:, 0].double()
            greedy[s : s + len(tgt)] = logprobs.argmax(-1) == tgt
        return logp, greedy

    def _head_is_separable(self) -> bool:
        """Whether logits are exactly the output head applied to the decoder's
        last hidden state (not so for models with logit soft-capping or scaling)."""
        try:
            decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        except (AttributeError, ValueError, NotImplementedError):  # models with no generic decoder lookup
            return False
        if decoder is None or head is None or decoder is self.model:
            return False
        ids = torch.arange(2, 10, device=self._device)[None] % self.model.config.vocab_size
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits.float()
            split = head(decoder(input_ids=ids).last_hidden_state).float()
        return bool(torch.allclose(full, split, rtol=1e-4, atol=1e-4))


def _rows(batch_size) -> int:
    """lm-eval passes ``batch_size`` as given on its command line: a number (here), or
    "auto"/"auto:N", which the device's sizing covers."""
    text = str(batch_size)
    try:
        return max(1, int(text))
    except ValueError:
        raise FactoryError(f"factory-hf: batch_size must be a number or 'auto', got {batch_size!r}") from None


def numerics_hash() -> str:
    """The source that turns tokens into log-likelihoods (this file and the
    packing): a cached answer is reused only while it is unchanged."""
    return sha256_json(source_digests(Path(__file__).parent, ("fast_lm.py", "packing.py")))
