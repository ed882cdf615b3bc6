"""Writer and reader of the Megatron indexed-dataset format (``.bin`` + ``.idx``),
the token-shard format Megatron-Core and NeMo read natively, written here from
its documented layout.

``P.bin`` holds the token ids of every document back to back (little-endian,
``uint16`` when the vocabulary fits, else ``int32``). ``P.idx`` is:

- 9 bytes of magic ``MMIDIDX\\0\\0``, ``<Q`` version 1, ``<B`` dtype code,
- ``<Q`` sequence count S, ``<Q`` document-index count D = S + 1,
- int32[S] sequence lengths in tokens, int64[S] byte offsets of the sequences
  in ``P.bin``, int64[D] document indices (0, 1, ..., S: one sequence per document).

The reader memory-maps both files: nothing of the corpus is loaded."""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from foundation import storage
from foundation.errors import FactoryError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# Megatron-Core's dtype codes
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document-index count


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest dtype Megatron uses for a vocabulary of ``vocab_size`` ids."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.int32)


def bin_path(prefix: Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: Path) -> Path:
    return Path(f"{prefix}.idx")


class IndexedWriter:
    """Writes one shard: ``add`` streams each document's tokens to ``P.bin`` (only
    its length is kept, 4 bytes a document); ``finish`` writes ``P.idx`` atomically."""

    def __init__(self, prefix: Path, dtype):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise FactoryError(f"{self.prefix}: dtype {self.dtype} has no Megatron code")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(bin_path(self.prefix), "wb")  # noqa: SIM115 - closed by finish()
        self._lengths = array("i")
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Append one document's token ids."""
        arr = np.asarray(tokens)
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        self._bin.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        self._lengths.append(int(arr.size))
        self.tokens += int(arr.size)

    def finish(self) -> dict:
        """Close ``P.bin``, write ``P.idx`` (temp file + rename) and return the shard's counts."""
        self._bin.flush()
        os.fsync(self._bin.fileno())  # the shard's tokens are on disk before anything records it as finished
        self._bin.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int32) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with storage.atomic_file(idx_path(self.prefix), "shard index") as f:
            f.write(HEADER.pack(MAGIC, VERSION, CODE_OF[self.dtype], len(lengths), len(lengths) + 1))
            f.write(lengths.astype("<i4").tobytes())
            f.write(pointers.astype("<i8").tobytes())
            f.write(np.arange(len(lengths) + 1, dtype="<i8").tobytes())
        return {"documents": len(lengths), "tokens": self.tokens}


def _read_header(path: Path) -> tuple[np.dtype, int, int]:
    """(token dtype, sequence count, document-index count) of an ``.idx`` file."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
    except OSError as e:
        raise FactoryError(f"{path}: cannot read the shard index ({e.strerror})") from None
    if len(head) < HEADER.size:
        raise FactoryError(f"{path}: truncated shard index ({len(head)} bytes, header needs {HEADER.size})")
    magic, version, code, seqs, docs = HEADER.unpack(head)
    if magic != MAGIC:
        raise FactoryError(f"{path}: not a Megatron indexed-dataset index (magic {magic!r})")
    if version != VERSION:
        raise FactoryError(f"{path}: index version {version}, only {VERSION} is read")
    if code not in DTYPE_CODES:
        raise FactoryError(f"{path}: unknown dtype code {code}")
    return DTYPE_CODES[code], seqs, docs


class IndexedReader:
    """One shard, memory-mapped: ``len(r)`` documents, ``r[i]`` the token ids of
    document ``i`` (a view into ``P.bin``), ``lengths``, ``pointers`` (byte offsets),
    ``tokens`` (every token) and ``total_tokens``. Sizes are checked against the
    files, so a truncated or padded shard is refused in one line naming the file."""

    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        idx, binf = idx_path(self.prefix), bin_path(self.prefix)
        self.dtype, seqs, docs = _read_header(idx)
        want = HEADER.size + seqs * 4 + seqs * 8 + docs * 8
        size = idx.stat().st_size
        if size != want:
            raise FactoryError(f"{idx}: {size} bytes, its header ({seqs} sequences) needs {want}")
        off = HEADER.size
        self.lengths = np.memmap(idx, dtype="<i4", mode="r", offset=off, shape=(seqs,)) if seqs else np.zeros(0, "<i4")
        off += seqs * 4
        self.pointers = np.memmap(idx, dtype="<i8", mode="r", offset=off, shape=(seqs,)) if seqs else np.zeros(0, "<i8")
        self.total_tokens = int(self.lengths.sum(dtype=np.int64))
        if not binf.is_file():
            raise FactoryError(f"{binf}: shard data missing")
        got = binf.stat().st_size
        if got != self.total_tokens * self.dtype.itemsize:
            raise FactoryError(
                f"{binf}: {got} bytes, its index says {self.total_tokens} tokens "
                f"({self.total_tokens * self.dtype.itemsize} bytes): truncated or altered"
            )
        le = self.dtype.newbyteorder("<")
        self.tokens = np.memmap(binf, dtype=le, mode="r") if got else np.zeros(0, le)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.prefix}: document {i} of {len(self)}")
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.lengths[i])]
