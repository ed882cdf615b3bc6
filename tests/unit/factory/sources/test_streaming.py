"""Sources are streamed: hub datasets through ``streaming=True``, local text and JSON-lines
files in bounded pieces, parquet a batch at a time; nothing of a corpus is held whole."""

import json
import random
import subprocess
import sys

import pytest

from factory.sources import datasets as ds
from factory.sources.datasets import DatasetSpec, hub_dataset, paragraph_documents, text_pieces
from factory.sources.documents import iter_documents
from foundation.errors import FactoryError
from tests.conftest import ROOT

# ---- hub datasets ---------------------------------------------------------------------------------


@pytest.fixture
def hub_dir(tmp_path):
    """A local dataset directory (what `hub:` also accepts): a good file, then a broken one."""
    root = tmp_path / "hub"
    root.mkdir()
    with open(root / "a.jsonl", "w") as f:
        for i in range(100):
            f.write(json.dumps({"text": f"document {i}", "n": i}) + "\n")
    (root / "b.jsonl").write_text('{"text": "fine", "n": 100}\n{"text": broken\n')
    return root


def test_hub_datasets_are_opened_streaming_and_read_lazily(hub_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    spec = DatasetSpec(hub=str(hub_dir), max_documents=5)
    assert isinstance(hub_dataset(spec), datasets.IterableDataset)
    # only the rows asked for are read: the broken second file is never reached
    assert list(iter_documents(spec, tmp_path)) == [f"document {i}" for i in range(5)]
    with pytest.raises(Exception, match="generating the dataset"):  # what loading it whole would do
        datasets.load_dataset(str(hub_dir), split="train", cache_dir=str(tmp_path / "cache"))


def test_a_bad_hub_row_stops_the_run_in_one_line_naming_the_row(hub_dir, tmp_path):
    pytest.importorskip("datasets")
    docs = iter_documents(DatasetSpec(hub=str(hub_dir)), tmp_path)
    assert [next(docs) for _ in range(100)][-1] == "document 99"
    with pytest.raises(FactoryError) as e:  # the json reader parses a file a block at a time
        next(docs)
    assert str(e.value).startswith(f"{hub_dir}:100: could not read the row") and "\n" not in str(e.value)
    with pytest.raises(FactoryError, match=rf"^{hub_dir}:0: missing field 'body'"):
        next(iter_documents(DatasetSpec(hub=str(hub_dir), text_field="body"), tmp_path))


def test_hub_chat_records_are_streamed_too(tmp_path):
    pytest.importorskip("datasets")
    root = tmp_path / "chats"
    root.mkdir()
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    (root / "c.jsonl").write_text("\n".join(json.dumps({"messages": chat}) for _ in range(3)) + "\n")
    assert list(iter_documents(DatasetSpec(hub=str(root), format="chat"), tmp_path)) == [chat] * 3


# ---- local text, in pieces ----------------------------------------------------------------------------


def _whole_text_documents(text: str, doc_chars: int) -> list[str]:
    """The documents of reading the whole text at once (what the readers did before streaming)."""
    out, buf, size = [], [], 0
    for para in text.replace("\r\n", "\n").split("\n\n"):
        if not para.strip():
            continue
        buf.append(para)
        size += len(para) + 2
        if size >= doc_chars:
            out.append("\n\n".join(buf))
            buf, size = [], 0
    return out + (["\n\n".join(buf)] if buf else [])


def _random_text(seed: int) -> str:
    rng = random.Random(seed)
    parts = ["word", "é", "日本", "😀", " ", "\n", "\n\n", "\r\n", "\r\n\r\n", "\n\n\n", "  \n", "\r"]
    return "".join(rng.choice(parts) for _ in range(400))


@pytest.mark.parametrize("read_bytes", [1, 2, 7, 64])
def test_text_read_in_small_pieces_gives_the_whole_texts_documents(tmp_path, monkeypatch, read_bytes):
    monkeypatch.setattr(ds, "READ_BYTES", read_bytes)
    for seed in range(25):
        text = _random_text(seed)
        (tmp_path / "t.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())  # a byte-order mark too
        pieces = list(text_pieces(tmp_path / "t.txt"))
        assert "".join(pieces) == text
        assert max(len(p.encode()) for p in pieces) <= read_bytes + 3  # + a character's bytes held from before
        for doc_chars in (1, 40, 10**6):
            got = list(iter_documents(DatasetSpec(path="t.txt", doc_chars=doc_chars), tmp_path))
            assert got == _whole_text_documents(text, doc_chars), (seed, doc_chars)


def test_a_text_with_no_blank_lines_is_cut_at_line_breaks(monkeypatch):
    monkeypatch.setattr(ds, "MAX_PARAGRAPH_CHARS", 100)
    text = "".join(f"line {i} " + "x" * (i % 37) + "\n" for i in range(200)) + "y" * 250
    docs = list(paragraph_documents([text[i : i + 9] for i in range(0, len(text), 9)], doc_chars=1))
    assert "".join(docs) == text and len(docs) > 20
    assert all(len(d) <= 100 for d in docs)
    assert all(d.endswith("\n") for d in docs[:-3])  # cut after a line; the last line has no break to cut at
    assert docs[-3:] == ["y" * 100, "y" * 100, "y" * 50]


@pytest.mark.parametrize("read_bytes", [3, 1 << 20])
def test_undecodable_bytes_name_file_line_and_column_whatever_the_piece_size(tmp_path, monkeypatch, read_bytes):
    monkeypatch.setattr(ds, "READ_BYTES", read_bytes)
    (tmp_path / "a.txt").write_bytes(b"one \xc3\xa9\ntwo\nthree \xf0\x9f\x98\x80 \xff four\n")
    with pytest.raises(FactoryError, match=r"a\.txt:3: not UTF-8 text \(byte 0xff at column 12\)"):
        list(text_pieces(tmp_path / "a.txt"))
    bad: dict[str, int] = {}
    assert "".join(text_pieces(tmp_path / "a.txt", bad=bad)) == "one é\ntwo\n\n"
    assert bad == {str(tmp_path / "a.txt"): 1}
    (tmp_path / "cut.txt").write_bytes(b"ends inside a character \xe6\x97")
    with pytest.raises(FactoryError, match=r"cut\.txt:1: not UTF-8 text \(byte 0xe6 at column 25\)"):
        list(text_pieces(tmp_path / "cut.txt"))


def test_an_empty_text_file_is_named(tmp_path):
    (tmp_path / "e.txt").write_text(" \n\n \n")
    with pytest.raises(FactoryError, match=r"e\.txt: empty data file \(5 bytes, no text\)"):
        list(text_pieces(tmp_path / "e.txt"))
    assert list(text_pieces(tmp_path / "e.txt", empty_ok=True)) == [" \n", "\n", " \n"]


def test_json_lines_are_read_a_line_at_a_time_and_arrays_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "READ_BYTES", 5)
    lines = [json.dumps({"text": f"doc {i} \u2028 é"}, ensure_ascii=False) for i in range(30)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:10]) + "\n\n" + "\r\n".join(lines[10:]) + "\n")
    assert list(iter_documents(DatasetSpec(path="a.jsonl"), tmp_path)) == [f"doc {i} \u2028 é" for i in range(30)]
    (tmp_path / "b.jsonl").write_text("\n".join(lines[:3]) + '\n{"text": oops}\n')
    with pytest.raises(FactoryError, match=r"b\.jsonl:4: invalid JSON"):
        list(iter_documents(DatasetSpec(path="b.jsonl"), tmp_path))
    (tmp_path / "c.json").write_text("\n  [" + ",\n".join(lines[:4]) + "]\n")
    assert list(iter_documents(DatasetSpec(path="c.json"), tmp_path)) == [f"doc {i} \u2028 é" for i in range(4)]


def test_parquet_is_read_a_batch_at_a_time_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"row {i}" for i in range(5000)]
    pq.write_table(pa.table({"text": texts, "other": list(range(5000))}), tmp_path / "p.parquet", row_group_size=700)
    assert list(iter_documents(DatasetSpec(path="p.parquet"), tmp_path)) == texts
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "n.parquet")
    with pytest.raises(FactoryError, match=r"n\.parquet: row 1: column 'text' is not a string"):
        list(iter_documents(DatasetSpec(path="n.parquet"), tmp_path))


PEAK = """
import resource, sys
from pathlib import Path
from factory.sources.datasets import DatasetSpec
from factory.sources.documents import iter_documents

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = sum(len(d) for d in iter_documents(DatasetSpec(path=sys.argv[1]), Path(".")))
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_large_text_file_is_read_in_flat_memory(tmp_path):
    para = "All the world's a stage, and all the men and women merely players. " * 12 + "\n\n"
    with open(tmp_path / "big.txt", "w") as f:
        for _ in range(40):
            f.write(para * 1000)  # 40 x 0.8 MB
    size = (tmp_path / "big.txt").stat().st_size
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(tmp_path / "big.txt")], cwd=ROOT, capture_output=True, text=True, check=True
    )
    chars, grew_kib = map(int, out.stdout.split())
    assert size > 30 * 2**20 and chars > 0.99 * size
    assert grew_kib < 8 * 1024, grew_kib  # reading it whole would hold 30+ MiB of bytes and as much text


def test_an_undecodable_record_line_is_a_bad_record_skipped_or_named(tmp_path):
    from factory.alignment.records import BadRecords, iter_conversations

    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    good = json.dumps({"messages": chat}).encode()
    (tmp_path / "c.jsonl").write_bytes(good + b"\n" + good[:-3] + b'\xff"}]}\n' + good + b"\n")
    with pytest.raises(FactoryError, match=r"c\.jsonl:2: not UTF-8 text \(byte 0xff at column \d+\)"):
        list(iter_documents(DatasetSpec(path="c.jsonl", format="chat"), tmp_path))
    bad = BadRecords()
    kept = list(iter_conversations(DatasetSpec(path="c.jsonl", format="chat", on_bad_record="skip"), tmp_path, bad))
    assert [c.messages for c in kept] == [chat, chat]
    assert bad.reasons == {"not UTF-8": 1} and bad.first["not UTF-8"].startswith(f"{tmp_path / 'c.jsonl'}:2:")
