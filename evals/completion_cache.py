"""Completions kept on disk as they are made, so an interrupted eval resumes.

The `full` suite is thousands of generations (hours on a CPU); losing them all to a
Ctrl-C, a pre-empted node or a crashed scorer is not acceptable. An engine that hands
over each request as it finishes (``Engine.streams``: hf, openai, vLLM with
``LLM.enqueue``) has its completions appended every few seconds (``CompletionWriter``);
other engines run in chunks, each appended when done. One line per request, keyed by
what determines the output: the engine, the model's content hash (for a served model,
its name and URL), the dtype, and the whole request (messages, tools, prompt,
sampling including n and seed). A rerun reads the file and sends only
the requests it lacks. Log-likelihood tasks are kept whole, one line per task, and
while one runs each answer (log p(continuation | context), is-greedy) is kept as it
is computed (``LoglikStore``), so an interrupted MMLU resumes where it stopped.

Each completion row also carries the engine identity it was made under, so
``factory eval --cached-only`` can score a file without building an engine. Such a
reader opens the file ``readonly``: it takes what is there (a torn last line is
skipped, not cut) and is safe while a running eval appends. Only one eval may
append to a file at a time (``writer_lock``).

A torn last line (killed mid-write) is cut off. Every row carries a checksum of its key
and what it answers (``sum``, written with it): a line that does not parse, lacks its
checksum or does not match it (damaged, edited, or written by a version that kept none)
is reported in one line naming the file, and its entry is computed again; a writer
also removes such lines from the file, so the report is made once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import threading
from array import array
from pathlib import Path
from typing import Any

from evals.api import Completion, Request
from foundation import storage
from foundation.errors import FactoryError
from foundation.hashing import sha256_json


def engine_identity(described: dict) -> dict:
    """What in an engine's description decides its outputs (batching settings only
    move float rounding, so they are left out)."""
    ident = {"engine": described.get("engine"), "dtype": described.get("dtype")}
    if described.get("model_hash"):
        ident["model"] = described["model_hash"]
    else:  # a served model: all we know is its name and where it is served
        ident.update(model=described.get("model"), base_url=described.get("base_url"))
    return ident


@contextlib.contextmanager
def writer_lock(path: Path):
    """Hold the right to append to the completions file ``path`` (an advisory lock on
    ``path.lock``, released when the process ends however it ends). A second eval on
    the same output dir fails at once instead of interleaving and truncating lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FactoryError(
                f"{path}: another eval (pid {holder}) is writing it; wait for it, use another "
                "--out, or read what it has so far with --cached-only"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


SUM = "sum"  # the field holding a row's checksum


def row_checksum(row: dict) -> str:
    """The checksum a row carries: of its key and what it answers, serialised as written
    (the engine tag it may carry only describes the key, and is left out)."""
    body = {k: v for k, v in row.items() if k not in (SUM, "engine")}
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


def _check(line: bytes) -> tuple[dict | None, str]:
    """The row on ``line`` and "", or None and what is wrong with it."""
    try:
        row = json.loads(line)
    except ValueError:
        return None, "is not JSON"
    if not isinstance(row, dict) or not isinstance(row.get("key"), str):
        return None, "is not a completions row"
    if SUM not in row:
        return None, "carries no checksum"
    if row[SUM] != row_checksum(row):
        return None, "does not match its checksum"
    return row, ""


class CompletionCache:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._rows: dict[str, dict] = {}
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        """Load the rows that pass their check; report the others in one line (a writer
        also drops them from the file). A torn last line is a write cut short, not damage:
        a writer cuts it off, a reader skips it."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n") and not self.readonly:  # killed mid-write: drop the torn tail
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
        lines = data.split(b"\n")
        lines.pop()  # what follows the last newline: nothing, or (to a reader) a writer mid-append
        kept, bad = [], []
        for n, line in enumerate(lines, 1):
            row, why = _check(line)
            if row is None:
                bad.append((n, why))
                continue
            self._rows[row["key"]] = row
            kept.append(line + b"\n")
        if bad:
            n, why = bad[0]
            more = f" ({len(bad) - 1} more lines fail their check)" if len(bad) > 1 else ""
            then = "not used by this read" if self.readonly else "their entries are computed again"
            storage.warn(self.path, f"{len(bad)} of its lines", f"line {n} {why}{more}", then)
            if not self.readonly:
                storage.write_bytes(self.path, b"".join(kept), "the completions file")

    def __len__(self) -> int:
        return len(self._rows)

    def identities(self) -> list[tuple[dict, int]]:
        """The engine identities completions were recorded under, with how many each, most first."""
        seen: dict[str, list] = {}
        for row in self._rows.values():
            ident = row.get("engine")
            if isinstance(ident, dict) and "texts" in row:
                seen.setdefault(json.dumps(ident, sort_keys=True), [ident, 0])[1] += 1
        return sorted(((i, n) for i, n in seen.values()), key=lambda x: -x[1])

    @staticmethod
    def request_key(identity: dict, request: Request) -> str:
        return sha256_json({"engine": identity, "request": dataclasses.asdict(request)})

    @staticmethod
    def task_key(identity: dict, task: dict) -> str:
        return sha256_json({"model": identity, "task": task})

    def completion(self, key: str) -> Completion | None:
        row = self._rows.get(key)
        if row is None or "texts" not in row:
            return None
        return Completion(texts=row["texts"], tokens=row.get("tokens", []), finish_reasons=row.get("finish", []))

    def records(self, key: str) -> list[dict] | None:
        row = self._rows.get(key)
        return row.get("records") if row is not None else None

    def loglik(self, key: str) -> tuple[float, bool] | None:
        row = self._rows.get(key)
        if row is None or "ll" not in row:
            return None
        logp, greedy = row["ll"]
        return float(logp), bool(greedy)

    def add_logliks(self, keys: list[str], answers: list[tuple[float, bool]]) -> None:
        self._append([{"key": k, "ll": [float(a[0]), bool(a[1])]} for k, a in zip(keys, answers)])

    def add_completions(self, keys: list[str], completions: list[Completion], engine: dict | None = None) -> None:
        """``engine``: the identity the keys were made under, kept on each row."""
        extra = {"engine": engine} if engine else {}
        self._append(
            [
                {"key": k, "texts": c.texts, "tokens": c.tokens, "finish": c.finish_reasons, **extra}
                for k, c in zip(keys, completions)
            ]
        )

    def add_records(self, key: str, records: list[dict]) -> None:
        self._append([{"key": key, "records": records}])

    def _append(self, rows: list[dict[str, Any]]) -> None:
        if self.readonly:
            raise FactoryError(f"{self.path}: opened read-only")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                row = {SUM: row_checksum(row), **row}
                f.write(json.dumps(row) + "\n")
                self._rows[row["key"]] = row
            f.flush()
            os.fsync(f.fileno())


class _Buffered:
    """Appends to a ``CompletionCache`` every ``flush_s`` seconds (a daemon thread does
    it, so answers that land in a burst before a long quiet spell are not left in
    memory) and on ``close()``: a kill loses only the last few seconds of work."""

    def __init__(self, cache: CompletionCache, flush_s: float):
        self.cache, self.flush_s = cache, flush_s
        self._keys: list[str] = []
        self._items: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _put(self, keys: list[str], items: list[Any]) -> None:
        with self._lock:
            self._keys += keys
            self._items += items
        if self.flush_s <= 0:
            self.flush()
        elif self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._every, name="evals-cache-flush", daemon=True)
            self._thread.start()

    def _every(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def _write(self, keys: list[str], items: list[Any]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        with self._lock:
            if self._keys:
                self._write(self._keys, self._items)
                self._keys, self._items = [], []

    def close(self) -> None:
        """Write what is left and stop the flushing thread (it may be used again after)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()
        self._stop.clear()


class CompletionWriter(_Buffered):
    """Completions appended as an engine hands them over (``Engine.streams``)."""

    def __init__(self, cache: CompletionCache, flush_s: float = 20.0, engine: dict | None = None):
        super().__init__(cache, flush_s)
        self.engine = engine

    def add(self, key: str, completion: Completion) -> None:
        self._put([key], [completion])

    def _write(self, keys: list[str], items: list[Any]) -> None:
        self.cache.add_completions(keys, items, self.engine)


class LoglikStore(_Buffered):
    """One model's log-likelihood answers in a ``CompletionCache``, for
    ``FastLM(store=...)``. ``identity`` says what decides the numbers besides
    the tokens (the model's content hash, the code that computes them); the
    scorer adds its dtype and context length."""

    def __init__(self, cache: CompletionCache, identity: dict, flush_s: float = 20.0):
        super().__init__(cache, flush_s)
        self.identity = identity

    def keys(self, pairs: list[tuple[list[int], list[int]]], settings: dict) -> list[str]:
        """A key per (context tokens, continuation tokens) under ``settings``."""
        salt = sha256_json({"loglik": self.identity, "settings": settings}).encode()
        out = []
        for context, continuation in pairs:
            h = hashlib.sha256(salt)
            for part in (context, continuation):
                h.update(len(part).to_bytes(4, "little"))
                h.update(array("q", part).tobytes())
            out.append(h.hexdigest())
        return out

    def get(self, key: str) -> tuple[float, bool] | None:
        return self.cache.loglik(key)

    def add(self, keys: list[str], answers: list[tuple[float, bool]]) -> None:
        self._put(keys, answers)

    def _write(self, keys: list[str], items: list[Any]) -> None:
        self.cache.add_logliks(keys, items)
