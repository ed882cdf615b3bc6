"""What tokenizer worker processes run. Kept apart from ``factory.corpus.tokenize``
so that a worker imports only numpy and transformers (torch only for chat records)."""

from __future__ import annotations

import os

import numpy as np

_TOKENIZER = None


def init_worker(tokenizer_dir: str) -> None:
    """Load the tokenizer once per worker process."""
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are the parallelism
    from transformers import AutoTokenizer  # heavy: only tokenizing needs it

    _TOKENIZER = AutoTokenizer.from_pretrained(tokenizer_dir)


def _render_chat(conversation: list[dict], tok) -> str:
    """A conversation as the training stages render it; one with no turns is empty."""
    from factory.training.data import render  # heavy: imports torch, which plain-text workers never need

    return render(conversation, tok) if conversation else ""


def encode(docs: list, append_eos: bool, dtype: str) -> list[np.ndarray | None]:
    """Token ids of each document (EOS appended), None for an empty one. Text as is,
    conversations through the chat template, as ``factory.training.data.render`` does."""
    tok = _TOKENIZER
    texts = [d if isinstance(d, str) else _render_chat(d, tok) for d in docs]
    keep = [i for i, t in enumerate(texts) if t.strip()]
    out: list[np.ndarray | None] = [None] * len(docs)
    if not keep:
        return out
    ids = tok([texts[i] for i in keep], add_special_tokens=False)["input_ids"]
    for i, one in zip(keep, ids, strict=True):
        if append_eos:
            one.append(tok.eos_token_id)
        out[i] = np.asarray(one, dtype=dtype)
    return out
