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


JOIN_SPAN = 8192  # characters at a window's end searched for a pre-token boundary to cut at


def _cut(piece: str, pre_tokenizer, span: int) -> int:
    """Where to end a window: the start of the last whole pre-token in the last ``span``
    characters of ``piece`` that follows a non-space (a run of whitespace is split by
    looking at the character after it, which the cut would hide); the first pre-token,
    which may begin before the span, and the last, which may run past the window, are
    not used. With no pre-tokenizer to ask, the last whitespace that follows a non-space;
    with no such place, the window's end."""
    lo = len(piece) - span
    if pre_tokenizer is not None:
        starts = [lo + s for _, (s, _) in pre_tokenizer.pre_tokenize_str(piece[lo:])][1:-1]
    else:
        starts = [i for i in range(lo + 1, len(piece)) if piece[i].isspace()]
    starts = [i for i in starts if not piece[i - 1].isspace()]
    return starts[-1] if starts else len(piece)


def window_ids(text: str, tok, window_chars: int, dtype: str) -> np.ndarray:
    """Token ids of ``text`` tokenized ``window_chars`` characters at a time, so that the
    tokenizer's working memory (about 150 bytes a character for a fast tokenizer) is
    bounded by the window, not the document; only the ids (2 or 4 bytes a token) grow.

    Each window ends at a pre-token boundary near its end (:func:`_cut`) and the rest is
    carried into the next window. For a tokenizer with no normalizer whose pre-tokenizer
    splits with bounded look-ahead (byte-level BPE: GPT-2, Llama 3, Qwen, SmolLM2) the
    ids equal those of the whole document. Where no boundary is found near a window's end
    (a pre-token longer than ``JOIN_SPAN`` characters) or the tokenizer normalizes first,
    the ids may differ from the whole document's around that join: the pre-token crossing
    it is split in two (for a 50,000-character run of one letter, within two tokens a join)."""
    backend = getattr(tok, "backend_tokenizer", None)
    pre = backend.pre_tokenizer if backend is not None and backend.normalizer is None else None
    span = max(1, min(JOIN_SPAN, window_chars // 2))
    parts: list[np.ndarray] = []
    pos = 0
    while len(text) - pos > window_chars:
        piece = text[pos : pos + window_chars]
        cut = _cut(piece, pre, span)
        parts.append(np.asarray(tok(piece[:cut], add_special_tokens=False)["input_ids"], dtype=dtype))
        pos += cut
    parts.append(np.asarray(tok(text[pos:], add_special_tokens=False)["input_ids"], dtype=dtype))
    return np.concatenate(parts)


def encode(docs: list, append_eos: bool, dtype: str, window_chars: int) -> list[np.ndarray | None]:
    """Token ids of each document (EOS appended), None for an empty one. Text as is,
    conversations through the chat template, as ``factory.training.data.render`` does;
    a document longer than ``window_chars`` characters is tokenized in windows
    (:func:`window_ids`)."""
    tok = _TOKENIZER
    texts = [d if isinstance(d, str) else _render_chat(d, tok) for d in docs]
    out: list[np.ndarray | None] = [None] * len(docs)
    keep = [i for i, t in enumerate(texts) if t.strip() and len(t) <= window_chars]
    if keep:
        ids = tok([texts[i] for i in keep], add_special_tokens=False)["input_ids"]
        for i, one in zip(keep, ids, strict=True):
            out[i] = np.asarray(one, dtype=dtype)
    for i, t in enumerate(texts):
        if len(t) > window_chars and t.strip():
            out[i] = window_ids(t, tok, window_chars, dtype)
    if append_eos:
        eos = np.asarray([tok.eos_token_id], dtype=dtype)
        out = [None if a is None else np.concatenate([a, eos]) for a in out]
    return out
