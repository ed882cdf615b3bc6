"""The Megatron indexed format: what the writer puts on disk, byte for byte, and what the reader refuses."""

import struct

import numpy as np
import pytest

from factory.corpus.indexed import IndexedReader, IndexedWriter, token_dtype
from foundation.errors import FactoryError

DOCS = [[5, 6, 7], [8], [9, 10, 11, 12, 65535]]


def _write(prefix, docs=DOCS, dtype=np.uint16):
    w = IndexedWriter(prefix, dtype)
    for d in docs:
        w.add(d)
    return w.finish()


def test_idx_header_and_arrays_follow_the_megatron_layout(tmp_path):
    assert _write(tmp_path / "s") == {"documents": 3, "tokens": 9}
    raw = (tmp_path / "s.idx").read_bytes()
    magic, version, code, seqs, docs = struct.unpack_from("<9sQBQQ", raw)
    assert (magic, version, code, seqs, docs) == (b"MMIDIDX\x00\x00", 1, 8, 3, 4)
    off = struct.calcsize("<9sQBQQ")
    assert off == 34
    assert np.frombuffer(raw, "<i4", 3, off).tolist() == [3, 1, 5]
    assert np.frombuffer(raw, "<i8", 3, off + 12).tolist() == [0, 6, 8]  # byte offsets of uint16 tokens
    assert np.frombuffer(raw, "<i8", 4, off + 36).tolist() == [0, 1, 2, 3]
    assert len(raw) == off + 12 + 24 + 32
    assert (tmp_path / "s.bin").read_bytes() == np.array(sum(DOCS, []), "<u2").tobytes()


def test_reader_gives_back_every_document_from_the_memmap(tmp_path):
    _write(tmp_path / "s")
    r = IndexedReader(tmp_path / "s")
    assert len(r) == 3 and r.total_tokens == 9
    assert [r[i].tolist() for i in range(3)] == DOCS and r[-1].tolist() == DOCS[-1]
    assert isinstance(r.tokens, np.memmap) and r.lengths.dtype == np.int32 and r.pointers.dtype == np.int64
    with pytest.raises(IndexError):
        r[3]


def test_int32_for_a_large_vocabulary_and_an_empty_shard(tmp_path):
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.int32
    _write(tmp_path / "big", [[70000, 1], [2]], np.int32)
    assert struct.unpack_from("<B", (tmp_path / "big.idx").read_bytes(), 17) == (4,)
    r = IndexedReader(tmp_path / "big")
    assert [r[i].tolist() for i in range(len(r))] == [[70000, 1], [2]]
    assert r.pointers.tolist() == [0, 8]
    _write(tmp_path / "none", [])
    assert len(IndexedReader(tmp_path / "none")) == 0


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda p: (p / "s.bin").write_bytes((p / "s.bin").read_bytes()[:-2]), "s.bin: 16 bytes"),
        (lambda p: (p / "s.bin").write_bytes((p / "s.bin").read_bytes() + b"xx"), "truncated or altered"),
        (lambda p: (p / "s.idx").write_bytes((p / "s.idx").read_bytes()[:20]), "truncated shard index"),
        (lambda p: (p / "s.idx").write_bytes((p / "s.idx").read_bytes()[:-8]), "its header (3 sequences) needs"),
        (lambda p: (p / "s.idx").write_bytes(b"NOTANIDX!" + (p / "s.idx").read_bytes()[9:]), "not a Megatron"),
        (lambda p: (p / "s.bin").unlink(), "shard data missing"),
    ],
)
def test_damaged_shards_are_refused_in_one_line_naming_the_file(tmp_path, damage, says):
    _write(tmp_path / "s")
    damage(tmp_path)
    with pytest.raises(FactoryError) as e:
        IndexedReader(tmp_path / "s")
    msg = str(e.value)
    assert says in msg and str(tmp_path) in msg and "\n" not in msg


def test_megatron_core_reads_our_shards(tmp_path):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    _write(tmp_path / "s")
    ds = indexed.IndexedDataset(str(tmp_path / "s"))
    assert len(ds) == 3
    assert [ds[i].tolist() for i in range(3)] == DOCS
