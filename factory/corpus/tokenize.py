"""Streaming tokenization of a dataset into Megatron shards.

Documents come one at a time from the dataset (``factory.sources.documents``),
are tokenized in batches by worker processes (at most ``2 * workers`` batches
in flight, results taken in order) and written straight to shards of about
``shard_tokens`` tokens, so memory does not grow with the corpus. After every
finished shard a small progress file in the work dir records how many documents
of the (deterministic) stream are in finished shards: a killed run resumes
there and writes byte-identical shards."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from factory.corpus.artifact import CORPUS_FORMAT, tokenizer_digest
from factory.corpus.indexed import IndexedWriter, token_dtype
from factory.corpus.workers import encode, init_worker
from factory.sources.datasets import (
    RECORD_FORMATS,
    DatasetSpec,
    files_of,
    format_of,
    paragraph_documents,
    read_file,
    text_pieces,
)
from factory.sources.documents import iter_documents
from factory.sources.models import resolve_path
from foundation import storage
from foundation.errors import FactoryError
from foundation.hashing import sha256_file, sha256_json

PROGRESS_FILE = "tokenize-progress.json"


@dataclass
class TokenizeSettings:
    """How a corpus is cut and tokenized (all of it decides the shards' bytes but ``workers``)."""

    shard_tokens: int = 64 * 2**20
    heldout_tokens: int = 0
    workers: int = 1
    append_eos: bool = True
    batch_documents: int = 256
    window_chars: int = 1 << 18  # a longer document is tokenized in windows of this many characters
    progress: bool = True


@dataclass
class _State:
    """What the progress file holds: the stream position of the finished shards and counts so far."""

    key: str
    documents_read: int = 0  # documents of the stream wholly behind the finished shards
    heldout: list = field(default_factory=list)
    train: list = field(default_factory=list)
    documents: int = 0
    tokens: int = 0
    empty: int = 0
    # per finished shard, in the order finished (held-out first): its files' sha256 and the
    # stream position and empty-document count after it, to fall back to if it is damaged
    marks: list = field(default_factory=list)


# ---- documents ------------------------------------------------------------------------------------------


def _skipping_file_documents(path: Path, spec: DatasetSpec, bad: dict[str, int]) -> Iterator[str | list[dict]]:
    """A local file's documents with undecodable lines skipped and counted: a text
    file loses only those lines; a jsonl file with any is skipped whole (other formats
    are read as they are)."""
    fmt = format_of(path, spec.format, "format")
    if fmt == "text":
        yield from paragraph_documents(text_pieces(path, empty_ok=True, bad=bad), spec.doc_chars)
        return
    if fmt == "jsonl":
        for _ in text_pieces(path, empty_ok=True, bad=bad):
            pass
        if bad.get(str(path)):
            return
    yield from read_file(path, spec.format, spec)


def corpus_documents(spec: DatasetSpec, base: Path, undecodable: dict[str, int]) -> Iterator[str | list[dict]]:
    """The dataset's documents in stored order. With ``on_bad_record: skip``, lines of
    local text and jsonl files that are not UTF-8 are skipped and counted per file in
    ``undecodable``; otherwise the first one stops the run with ``file:line``."""
    if spec.on_bad_record != "skip" or spec.path is None or spec.format in RECORD_FORMATS:
        yield from iter_documents(spec, base)
        return
    docs = (d for p in files_of(resolve_path(spec.path, base)) for d in _skipping_file_documents(p, spec, undecodable))
    yield from islice(docs, spec.max_documents)


# ---- batches to worker processes (what a worker runs is in factory.corpus.workers) --------------------


def _batches(stream: Iterable[tuple[int, object]], size: int) -> Iterator[tuple[list[int], list]]:
    it = iter(stream)
    while chunk := list(islice(it, size)):
        yield [n for n, _ in chunk], [d for _, d in chunk]


def _encoded(batches, tokenizer_dir: Path, settings: TokenizeSettings, dtype: np.dtype):
    """(ordinal, ids or None) per document, in stream order; ``workers`` processes
    with a bounded number of batches in flight, or this process for one worker."""
    args = (settings.append_eos, dtype.str, settings.window_chars)
    if settings.workers <= 1:
        init_worker(str(tokenizer_dir))
        for ords, docs in batches:
            yield from zip(ords, encode(docs, *args), strict=True)
        return
    with multiprocessing.get_context("spawn").Pool(
        settings.workers, initializer=init_worker, initargs=(str(tokenizer_dir),)
    ) as pool:
        pending: deque = deque()
        for ords, docs in batches:
            pending.append((ords, pool.apply_async(encode, (docs, *args))))
            if len(pending) >= 2 * settings.workers:
                ords0, res = pending.popleft()
                yield from zip(ords0, res.get(), strict=True)
        while pending:
            ords0, res = pending.popleft()
            yield from zip(ords0, res.get(), strict=True)


# ---- shards ---------------------------------------------------------------------------------------------


class _Shards:
    """Routes tokenized documents to the held-out shard, then to train shards, and
    saves progress whenever a shard is finished."""

    def __init__(self, root: Path, dtype: np.dtype, settings: TokenizeSettings, state: _State):
        self.root, self.dtype, self.settings, self.state = root, dtype, settings, state
        self.writer: IndexedWriter | None = None
        self.split = "heldout" if settings.heldout_tokens > 0 and not state.heldout else "train"

    def _open(self) -> IndexedWriter:
        n = len(getattr(self.state, self.split))
        return IndexedWriter(self.root / f"{self.split}-{n:05d}", self.dtype)

    def _close(self, documents_read: int) -> None:
        entry = {"prefix": f"shards/{self.writer.prefix.name}", **self.writer.finish()}
        getattr(self.state, self.split).append(entry)
        self.state.documents_read = documents_read
        files = {ext: sha256_file(Path(f"{self.writer.prefix}{ext}")) for ext in (".bin", ".idx")}
        self.state.marks.append({"sha256": files, "documents_read": documents_read, "empty": self.state.empty})
        _save_progress(self.root.parent, self.state)
        self.writer = None

    def add(self, ordinal: int, ids: np.ndarray) -> None:
        s = self.state
        if (
            self.split == "train"
            and self.writer is not None
            and self.writer.tokens + len(ids) > self.settings.shard_tokens
        ):
            self._close(ordinal)
        if self.writer is None:
            self.writer = self._open()
        self.writer.add(ids)
        s.documents += 1
        s.tokens += len(ids)
        if self.split == "heldout" and self.writer.tokens >= self.settings.heldout_tokens:
            self._close(ordinal + 1)
            self.split = "train"

    def finish(self, documents_read: int) -> None:
        if self.split == "heldout":
            raise FactoryError(
                f"the corpus has {self.state.tokens} tokens, fewer than heldout_tokens "
                f"({self.settings.heldout_tokens}): nothing would be left for training"
            )
        if self.writer is not None:
            self._close(documents_read)
        if not self.state.train:
            raise FactoryError(
                f"the corpus has {self.state.tokens} tokens, all in the held-out split "
                f"(heldout_tokens {self.settings.heldout_tokens}): nothing is left for training"
            )


def _save_progress(work_dir: Path, state: _State) -> None:
    storage.write_text(work_dir / PROGRESS_FILE, json.dumps(asdict(state)), "tokenization progress")


def _load_progress(work_dir: Path, key: str) -> _State:
    """The saved state of an earlier run with the same settings, or a fresh one."""
    try:
        saved = json.loads((work_dir / PROGRESS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return _State(key=key)
    return _State(**saved) if saved.get("key") == key else _State(key=key)


def _damaged(work_dir: Path, state: _State) -> tuple[int, str] | None:
    """(place in finishing order, file) of the first finished shard whose file is missing
    or differs from the sha256 recorded when it was finished, or None."""
    for k, (shard, mark) in enumerate(zip(state.heldout + state.train, state.marks, strict=True)):
        for ext, want in mark["sha256"].items():
            path = work_dir / f"{shard['prefix']}{ext}"
            if not path.is_file() or sha256_file(path) != want:
                return k, f"{shard['prefix']}{ext}"
    return None


def _checked_progress(work_dir: Path, state: _State, say: bool) -> _State:
    """``state`` cut back to before its first damaged shard (truncated or altered on disk
    since it was finished), so that shard and those after it are tokenized again."""
    if len(state.marks) != len(state.heldout) + len(state.train):
        return _State(key=state.key)  # not a progress file this version wrote: start over
    found = _damaged(work_dir, state)
    if found is None:
        return state
    k, name = found
    if say:
        print(f"tokenize: {work_dir / name} does not match its sha256: rebuilding from it", file=sys.stderr)
    kept = (state.heldout + state.train)[:k]
    held = len(state.heldout) if k >= len(state.heldout) else k
    before = state.marks[k - 1] if k else {"documents_read": 0, "empty": 0}
    return _State(
        key=state.key,
        documents_read=before["documents_read"],
        heldout=kept[:held],
        train=kept[held:],
        documents=sum(s["documents"] for s in kept),
        tokens=sum(s["tokens"] for s in kept),
        empty=before["empty"],
        marks=state.marks[:k],
    )


class _Progress:
    """Tokens/s on stderr, at most every ``every`` seconds, and once at the end."""

    def __init__(self, on: bool, every: float = 2.0):
        self.on, self.every = on, every
        self.t0 = self.last = time.perf_counter()
        self.tokens = 0

    def tick(self, state: _State, n: int, final: bool = False) -> float:
        self.tokens += n
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t0, 1e-9)
        if self.on and (final or now - self.last >= self.every):
            self.last = now
            print(
                f"tokenize: {state.documents} documents, {state.tokens:,} tokens, "
                f"{len(state.train)} train shards done, {rate:,.0f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
        return rate


def tokenize_corpus(documents: Iterable, tokenizer_dir: Path, work_dir: Path, settings: TokenizeSettings) -> dict:
    """Tokenize ``documents`` (a deterministic stream) with the tokenizer in
    ``tokenizer_dir`` into ``work_dir/shards``, resuming after the last finished
    shard of an earlier run with the same settings. Returns the ``corpus.json``
    body (without source and licence) plus ``empty_documents`` and ``tokens_per_s``."""
    from transformers import AutoTokenizer  # heavy: only tokenizing needs it

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if settings.append_eos and tok.eos_token_id is None:
        raise FactoryError(f"{tokenizer_dir}: the tokenizer has no eos token (set append_eos: false)")
    digest = tokenizer_digest(tokenizer_dir)
    dtype = token_dtype(len(tok))
    shaping = {k: v for k, v in asdict(settings).items() if k not in ("workers", "progress")}
    state = _load_progress(work_dir, sha256_json({"tokenizer": digest, **shaping}))
    state = _checked_progress(work_dir, state, settings.progress)
    if state.documents_read and settings.progress:
        print(f"tokenize: resuming after {state.documents_read} documents", file=sys.stderr, flush=True)
    shards = _Shards(work_dir / "shards", dtype, settings, state)
    (work_dir / "shards").mkdir(parents=True, exist_ok=True)
    progress = _Progress(settings.progress)
    stream = islice(enumerate(documents), state.documents_read, None)
    end = state.documents_read
    for ordinal, ids in _encoded(_batches(stream, settings.batch_documents), tokenizer_dir, settings, dtype):
        end = ordinal + 1
        if ids is None:
            state.empty += 1
            continue
        shards.add(ordinal, ids)
        progress.tick(state, len(ids))
    shards.finish(end)
    rate = progress.tick(state, 0, final=True)
    meta = {
        "format": CORPUS_FORMAT,
        "version": 1,
        "dtype": dtype.name,
        "tokenizer": {"sha256": digest, "vocab_size": len(tok), "eos_id": tok.eos_token_id},
        "append_eos": settings.append_eos,
        "train": state.train,
        "heldout": state.heldout,
        "documents": state.documents,
        "tokens": state.tokens,
    }
    return {**meta, "empty_documents": state.empty, "tokens_per_s": round(rate, 1)}
