from pathlib import Path

import pytest

from factory.sources.datasets import DatasetSpec, fingerprint, split_paragraphs
from factory.sources.documents import iter_documents
from foundation.errors import ConfigError, FactoryError


def test_split_paragraphs_groups_to_size():
    text = "\n\n".join(f"para {i} " + "x" * 30 for i in range(10))
    docs = list(split_paragraphs(text, 100))
    assert "".join(d.replace("\n\n", "") for d in docs) == text.replace("\n\n", "")
    assert all(len(d) >= 100 for d in docs[:-1])


def test_local_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo")
    (tmp_path / "b.jsonl").write_text('{"text": "three"}\n\n{"text": "four", "x": 1}\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["five", "six"]}), tmp_path / "c.parquet")
    assert list(iter_documents(DatasetSpec(path=str(tmp_path / "a.txt"), doc_chars=1), tmp_path)) == ["one", "two"]
    assert list(iter_documents(DatasetSpec(path="b.jsonl"), tmp_path)) == ["three", "four"]
    assert list(iter_documents(DatasetSpec(path="c.parquet", text_field="body"), tmp_path)) == ["five", "six"]
    assert len(list(iter_documents(DatasetSpec(path="b.jsonl", max_documents=1), tmp_path))) == 1


@pytest.mark.parametrize(
    "content,msg",
    [
        ('{"text": "ok"}\n{"text": "broken"\n', "b.jsonl:2: invalid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', "b.jsonl:2: missing field 'text'"),
        ('{"text": 3}\n', "b.jsonl:1: field 'text' must be a string"),
        ("[1, 2]\n", "b.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, msg):
    (tmp_path / "b.jsonl").write_text(content)
    with pytest.raises(FactoryError, match=msg):
        list(iter_documents(DatasetSpec(path="b.jsonl"), tmp_path))


def test_bad_text_and_parquet(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"ok\xff\xfe")
    with pytest.raises(FactoryError, match="bin.txt:1: not UTF-8"):  # file:line, as every data fault
        list(iter_documents(DatasetSpec(path="bin.txt"), tmp_path))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(FactoryError, match="no column 'text'"):
        list(iter_documents(DatasetSpec(path="c.parquet"), tmp_path))
    (tmp_path / "d.csv").write_text("a,b")
    with pytest.raises(ConfigError, match="cannot tell the format"):
        DatasetSpec(path="d.csv").check_files("datasets.d", tmp_path)


def test_fingerprint_follows_content(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    spec = DatasetSpec(path="a.txt")
    before = fingerprint(spec, tmp_path)
    assert fingerprint(spec, tmp_path) == before
    f.write_text("hello!")
    assert fingerprint(spec, tmp_path) != before


def test_stdlib_corpus_is_local():
    docs = list(iter_documents(DatasetSpec(packaged="python-stdlib", max_documents=3), Path(".")))
    assert len(docs) == 3 and all(len(d) > 0 for d in docs)
