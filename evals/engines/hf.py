"""The transformers engine: continuous batching over a KV cache this module manages.

``model.generate`` decodes fixed batches: a batch runs until its longest answer ends,
rows that finished early keep being computed, and its cache grows by concatenation
(a full copy of the cache per token). Here up to ``max_batch`` sequences decode
together; finished rows leave and waiting prompts (taken in order of length, so
that rows that meet need little padding) are prefilled and join, so the batch stays
full. The cache is a preallocated buffer written in place, and decode attention
groups the query heads of each key/value head instead of copying keys and values
per query head (grouped-query attention). What each change was worth is in
bench/eval_speed.py's results.

Greedy decoding gives the same tokens as unbatched ``generate`` up to float
rounding (left padding changes summation order). Sampling is seeded per
completion (``stream_seed``), so it does not depend on batching or request order.
"""

from __future__ import annotations

import functools
import gc
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from evals.api import Completion, Request
from evals.engines import register, sizing
from evals.engines.common import (
    check_choice,
    check_positive,
    cut_at_stop,
    empty_completion,
    model_hash,
    render_prompt,
    stream_seed,
)
from foundation.errors import FactoryError

ATTENTION_NAME = "evals_grouped_sdpa"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA that never repeats keys/values per query head. Decoding (one query
    position) views the query heads sharing a key/value head as that head's query
    positions; prefill lets SDPA broadcast the groups (``enable_gqa``).
    ``attention_mask`` is our boolean [B, 1, q, kv] mask."""
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len == 1:
        grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            grouped, key, value, attn_mask=attention_mask, scale=scaling
        )
        return out.reshape(batch, 1, heads, dim), None
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=heads != kv_heads
    )
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface  # heavy: transformers loads only when a model does

    AttentionInterface.register(ATTENTION_NAME, grouped_sdpa)


@functools.cache
def _slab_layer_class():
    from transformers.cache_utils import DynamicLayer  # heavy: transformers loads only when a model does

    class SlabLayer(DynamicLayer):
        """One layer's keys/values in a buffer with room to grow: a new token is written
        in place; ``keys``/``values`` are views of the filled part."""

        def __init__(self, kbuf: torch.Tensor, vbuf: torch.Tensor, length: int):
            super().__init__()
            self.kbuf, self.vbuf, self.length = kbuf, vbuf, length
            self.dtype, self.device, self.is_initialized = kbuf.dtype, kbuf.device, True
            self._view()

        def _view(self):
            self.keys = self.kbuf[:, :, : self.length]
            self.values = self.vbuf[:, :, : self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            if self.length + n > self.kbuf.shape[2]:
                self.kbuf = _grow(self.kbuf, self.length + n + 64)
                self.vbuf = _grow(self.vbuf, self.length + n + 64)
            self.kbuf[:, :, self.length : self.length + n] = key_states
            self.vbuf[:, :, self.length : self.length + n] = value_states
            self.length += n
            self._view()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

    return SlabLayer


def _grow(buf: torch.Tensor, capacity: int) -> torch.Tensor:
    new = buf.new_zeros(*buf.shape[:2], capacity, buf.shape[3])
    new[:, :, : buf.shape[2]] = buf
    return new


@dataclass
class _Stream:
    """One completion being generated."""

    request: int
    index: int  # which of the request's n completions
    prompt: list[int]
    max_tokens: int
    stops: list[str]
    temperature: float
    top_p: float
    generator: torch.Generator | None
    out: list[int] = field(default_factory=list)
    finish: str | None = None


def _capacity(streams: list[_Stream], length: int) -> int:
    """Cache columns needed: what is there plus the most tokens any live stream may still add
    (all rows advance together), so decoding never reallocates."""
    return length + max((s.max_tokens - len(s.out) for s in streams if s.finish is None), default=0) + 1


class _Rows:
    """The batch being decoded: streams, their KV cache ([rows, kv_heads, capacity,
    head_dim] per layer, left-padded), attention mask, next positions, last tokens."""

    def __init__(self, streams, kbufs, vbufs, mask, length, pos, last):
        self.streams, self.kbufs, self.vbufs = streams, kbufs, vbufs
        self.mask, self.length, self.pos, self.last = mask, length, pos, last

    def __len__(self):
        return len(self.streams)

    def select(self, keep: list[int]) -> _Rows:
        """Only rows ``keep``, with the leading columns no row attends to cut away."""
        idx = torch.tensor(keep, dtype=torch.long)
        mask = self.mask[idx, : self.length]
        start = int(mask.any(0).int().argmax()) if len(keep) else self.length
        length = self.length - start
        streams = [self.streams[i] for i in keep]
        cap = _capacity(streams, length)

        def take(buf):
            new = buf.new_zeros(len(keep), buf.shape[1], cap, buf.shape[3])
            new[:, :, :length] = buf[idx, :, start : self.length]
            return new

        new_mask = torch.zeros(len(keep), cap, dtype=torch.bool)
        new_mask[:, :length] = mask[:, start:]
        return _Rows(
            streams,
            [take(b) for b in self.kbufs],
            [take(b) for b in self.vbufs],
            new_mask,
            length,
            self.pos[idx],
            self.last[idx],
        )

    def merge(self, other: _Rows) -> _Rows:
        """Both batches in one, right-aligned (the shorter one gains left padding)."""
        if not len(self):
            return other
        length = max(self.length, other.length)
        streams = self.streams + other.streams
        cap = _capacity(streams, length)
        rows = len(streams)

        def join(a, b):
            new = a.new_zeros(rows, a.shape[1], cap, a.shape[3])
            new[: len(self), :, length - self.length : length] = a[:, :, : self.length]
            new[len(self) :, :, length - other.length : length] = b[:, :, : other.length]
            return new

        mask = torch.zeros(rows, cap, dtype=torch.bool)
        mask[: len(self), length - self.length : length] = self.mask[:, : self.length]
        mask[len(self) :, length - other.length : length] = other.mask[:, : other.length]
        return _Rows(
            streams,
            [join(a, b) for a, b in zip(self.kbufs, other.kbufs)],
            [join(a, b) for a, b in zip(self.vbufs, other.vbufs)],
            mask,
            length,
            torch.cat([self.pos, other.pos]),
            torch.cat([self.last, other.last]),
        )

    def cache(self):
        from transformers.cache_utils import Cache  # heavy: transformers loads only when a model does

        layer = _slab_layer_class()
        return Cache(layers=[layer(k, v, self.length) for k, v in zip(self.kbufs, self.vbufs)])


@register("hf")
class HFEngine:
    """Chat or raw-prompt generation with a transformers causal LM (see module doc)."""

    name = "hf"

    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch: int | None = None,
        prefill_tokens: int | None = None,
        attention: str = "grouped",
        threads: int | None = None,
        trust_remote_code: bool = False,
    ):
        self.check(
            dtype=dtype, attention=attention, max_batch=max_batch, prefill_tokens=prefill_tokens, threads=threads
        )
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers loads only when a model does

        if threads:
            torch.set_num_threads(threads)
        self.path, self.dtype, self.device = model, dtype, torch.device(device)
        self.attention = attention
        _register_attention()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model = (
                AutoModelForCausalLM.from_pretrained(
                    model,
                    dtype=DTYPES[dtype],
                    trust_remote_code=trust_remote_code,
                    attn_implementation=ATTENTION_NAME if attention == "grouped" else "sdpa",
                )
                .to(self.device)
                .eval()
            )
        except (OSError, ValueError) as e:
            raise FactoryError(f"engine hf: cannot load {model}: {str(e).splitlines()[0]}") from None
        config = self.model.config.get_text_config()
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
            raise FactoryError(
                f"engine hf: {model} uses sliding-window or linear attention layers, "
                "which this engine's cache does not handle (use the vllm engine)"
            )
        self.context = getattr(config, "max_position_embeddings", None) or 1 << 30
        self.max_batch, self.prefill_tokens = self._batch(config, max_batch, prefill_tokens)
        eos = self.model.generation_config.eos_token_id
        self.eos = {e for e in ([eos] if isinstance(eos, int) else eos or []) if e is not None}
        if self.tokenizer.eos_token_id is not None:
            self.eos.add(self.tokenizer.eos_token_id)
        self._hash = None

    def _batch(self, config, max_batch: int | None, prefill_tokens: int | None) -> tuple[int, int]:
        """The settings given, else sized for the device (``evals.engines.sizing``): 64
        sequences and 4096 prefill tokens on a CPU; on a GPU from the memory the weights
        left free, for sequences of up to 4096 tokens (or the model's context)."""
        cost = sizing.ModelCost.from_config(config, self.model.dtype)
        sized = sizing.generation_batch(sizing.device_free_bytes(self.device), cost, min(self.context, 4096))
        return max_batch or sized[0], prefill_tokens or sized[1]

    @staticmethod
    def check(
        dtype: str, attention: str, max_batch: int | None, prefill_tokens: int | None, threads: int | None, **_
    ) -> None:
        """Reject bad setting values before anything is loaded (see engines.check_engine_settings)."""
        check_choice("hf", "dtype", dtype, tuple(DTYPES))
        check_choice("hf", "attention", attention, ("grouped", "sdpa"))
        check_positive("hf", max_batch=max_batch, prefill_tokens=prefill_tokens, threads=threads)

    @staticmethod
    def identity(model: str, dtype: str, **_) -> dict | None:
        """What ``describe`` will say decides the outputs (see engines.planned_identity)."""
        digest = model_hash(model)
        return {"engine": HFEngine.name, "dtype": dtype, "model": digest} if digest else None

    # ---- the Engine protocol -------------------------------------------------------------------

    streams = True  # on_done as each request finishes

    def generate(self, requests: list[Request], progress: bool = True, on_done=None) -> list[Completion]:
        streams = self._streams(requests)
        total = sum(len(group) for group in streams)
        left = [len(group) for group in streams]

        def finished(s: _Stream) -> None:
            bar.update(1)
            left[s.request] -= 1
            if on_done is not None and left[s.request] == 0:
                on_done(s.request, self._completion(requests[s.request], streams[s.request]))

        with torch.inference_mode(), tqdm(total=total, desc="hf generate", unit="seq", disable=not progress) as bar:
            self._run([g for g in streams if g and g[0].finish is None], finished)
        return [self._completion(req, group) for req, group in zip(requests, streams)]

    def describe(self) -> dict[str, Any]:
        if self._hash is None:
            self._hash = model_hash(self.path)
        import transformers  # heavy: transformers loads only when a model does

        return {
            "engine": self.name,
            "model": str(self.path),
            "model_hash": self._hash,
            "dtype": self.dtype,
            "device": str(self.device),
            "max_batch": self.max_batch,
            "prefill_tokens": self.prefill_tokens,
            "attention": self.attention,
            "threads": torch.get_num_threads(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def close(self) -> None:
        self.model = None
        gc.collect()

    # ---- requests -> streams -> completions -----------------------------------------------------

    def _streams(self, requests: list[Request]) -> list[list[_Stream]]:
        """Per request, the streams to decode: n sampled streams, or one greedy stream whose
        answer is copied n times (greedy completions are identical)."""
        texts = [render_prompt(self.tokenizer, r) for r in requests]
        raw = [r.prompt is not None for r in requests]
        ids = self._encode(texts, raw)
        out = []
        for i, (req, text, prompt) in enumerate(zip(requests, texts, ids)):
            s = req.sampling
            room = min(s.max_tokens, self.context - len(prompt))
            greedy = s.temperature <= 0
            group = []
            for j in range(1 if greedy else s.n):
                gen = None if greedy else torch.Generator().manual_seed(stream_seed(s.seed, text, j))
                group.append(_Stream(i, j, prompt, max(room, 0), list(s.stop or []), s.temperature, s.top_p, gen))
                if room <= 0:
                    group[-1].finish = "length"
            out.append(group)
        return out

    def _encode(self, texts: list[str], raw: list[bool]) -> list[list[int]]:
        # Raw prompts get the tokenizer's own special tokens (as servers do for completions);
        # rendered chats already carry whatever the template puts in.
        ids: list[list[int] | None] = [None] * len(texts)
        for flag in (True, False):
            idx = [i for i, r in enumerate(raw) if r == flag]
            if idx:
                enc = self.tokenizer([texts[i] for i in idx], add_special_tokens=flag)["input_ids"]
                for i, e in zip(idx, enc):
                    ids[i] = list(e)
        return ids

    def _completion(self, request: Request, group: list[_Stream]) -> Completion:
        n = request.sampling.n
        if not group or group[0].max_tokens == 0:
            return empty_completion(n)
        texts, tokens, reasons = [], [], []
        for s in group:
            body = s.out[:-1] if s.out and s.out[-1] in self.eos and s.finish == "stop" else s.out
            text, hit = cut_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), s.stops)
            texts.append(text)
            tokens.append(len(s.out))
            reasons.append("stop" if hit else s.finish)
        if len(group) < n:  # greedy: one answer stands for all n
            texts, tokens, reasons = texts * n, tokens * n, reasons * n
        return Completion(texts=texts, tokens=tokens, finish_reasons=reasons)

    # ---- the decode loop ---------------------------------------------------------------------------

    def _run(self, groups: list[list[_Stream]], done) -> None:
        """Decode every stream. Waiting prompts (shortest first) are admitted when a quarter
        of the batch is free; finished rows are dropped when they are a quarter of it."""
        waiting = sorted(groups, key=lambda g: len(g[0].prompt), reverse=True)  # pop() takes the shortest
        rows: _Rows | None = None
        while waiting or rows is not None:
            live = [i for i, s in enumerate(rows.streams) if s.finish is None] if rows is not None else []
            free = self.max_batch - len(live)
            refill = bool(waiting) and (free >= max(1, self.max_batch // 4) or not live)
            if rows is not None and (refill or not live or (len(rows) - len(live)) * 4 > len(rows)):
                rows = rows.select(live) if live else None
            while refill and waiting and (rows is None or free >= len(waiting[-1])):
                batch = self._admit(waiting, max(free, len(waiting[-1])) if rows is None else free)
                free -= sum(map(len, batch))
                new = self._prefill(batch, done)
                rows = new if rows is None else rows.merge(new)
            if rows is not None and any(s.finish is None for s in rows.streams):
                self._step(rows, done)
            elif rows is not None:
                rows = None

    def _admit(self, waiting: list[list[_Stream]], free: int) -> list[list[_Stream]]:
        """Groups to prefill together: shortest first, within ``free`` rows and the prefill token budget."""
        batch: list[list[_Stream]] = []
        while waiting and len(waiting[-1]) <= free - sum(map(len, batch)):
            longest = max(len(waiting[-1][0].prompt), *(len(g[0].prompt) for g in batch)) if batch else 0
            if batch and longest * (len(batch) + 1) > self.prefill_tokens:
                break
            batch.append(waiting.pop())
        return batch

    def _prefill(self, groups: list[list[_Stream]], done) -> _Rows:
        """Run the prompts of ``groups`` (left-padded), pick each stream's first token,
        and return them as rows (a group's streams share the prompt's cache)."""
        prompts = [g[0].prompt for g in groups]
        length = max(map(len, prompts))
        ids = torch.full((len(prompts), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        keymask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            ids[i, length - len(p) :] = torch.tensor(p)
            keymask[i, length - len(p) :] = True
        pos = (keymask.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        # Padding positions attend to themselves so their (unused) states stay finite.
        mask4 = (causal[None] & keymask[:, None, :]) | torch.eye(length, dtype=torch.bool)[None]
        streams = [s for g in groups for s in g]
        cap = _capacity(streams, length)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask4[:, None].to(self.device),
            position_ids=pos.to(self.device),
            past_key_values=self._empty_cache(),
            use_cache=True,
            logits_to_keep=1,
        )
        expand = torch.tensor([i for i, g in enumerate(groups) for _ in g])
        kbufs, vbufs = [], []
        for layer in out.past_key_values.layers:
            for src, dst in ((layer.keys, kbufs), (layer.values, vbufs)):
                buf = src.new_zeros(len(streams), src.shape[1], cap, src.shape[3])
                buf[:, :, :length] = src[expand]
                dst.append(buf)
        mask = torch.zeros(len(streams), cap, dtype=torch.bool)
        mask[:, :length] = keymask[expand]
        logits = out.logits[expand, -1].float()
        cache = _Rows(
            streams, kbufs, vbufs, mask, length, pos[expand, -1] + 1, torch.zeros(len(streams), dtype=torch.long)
        )
        self._advance(cache, logits, done)
        return cache

    def _empty_cache(self):
        from transformers.cache_utils import Cache, DynamicLayer  # heavy: transformers loads only when a model does

        return Cache(layer_class_to_replicate=DynamicLayer)

    def _step(self, rows: _Rows, done) -> None:
        """One token for every row."""
        length = rows.length
        if length + 1 > rows.mask.shape[1]:  # cannot happen while capacities track max_tokens; be safe
            rows.mask = torch.cat([rows.mask, torch.zeros(len(rows), 64, dtype=torch.bool)], 1)
        rows.mask[:, length] = True
        cache = rows.cache()
        out = self.model(
            input_ids=rows.last[:, None].to(self.device),
            attention_mask=rows.mask[:, None, None, : length + 1].to(self.device),
            position_ids=rows.pos[:, None].to(self.device),
            past_key_values=cache,
            use_cache=True,
        )
        layers = cache.layers
        rows.kbufs = [layer.kbuf for layer in layers]
        rows.vbufs = [layer.vbuf for layer in layers]
        rows.length = length + 1
        rows.pos = rows.pos + 1
        self._advance(rows, out.logits[:, -1].float(), done)

    def _advance(self, rows: _Rows, logits: torch.Tensor, done) -> None:
        """Choose each live row's next token and decide whether its stream is finished."""
        tokens = logits.argmax(-1).cpu()  # one device-to-host copy a step, not one per row
        for i, s in enumerate(rows.streams):
            if s.finish is not None:
                continue
            if s.generator is not None:
                tokens[i] = _sample(logits[i], s.temperature, s.top_p, s.generator)
            tok = int(tokens[i])
            s.out.append(tok)
            if tok in self.eos:
                s.finish = "stop"
            elif s.stops and cut_at_stop(self._tail(s.out, s.stops), s.stops)[1]:
                s.finish = "stop"
            elif len(s.out) >= s.max_tokens:
                s.finish = "length"
            if s.finish is not None:
                done(s)
        rows.last = tokens

    def _tail(self, out: list[int], stops: list[str]) -> str:
        # A stop string just completed lies within the last len(stop) tokens (a token is at
        # least one character, bar special tokens, hence the margin).
        return self.tokenizer.decode(out[-(max(map(len, stops)) + 8) :], skip_special_tokens=True)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    # Drawn on the CPU with a CPU generator wherever the model runs, so that a seed gives the
    # same draws on a GPU as on the CPU (up to the logits' own numerics).
    probs = torch.softmax(logits.float().cpu() / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))
