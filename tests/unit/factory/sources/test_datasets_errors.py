"""Faulty data files stop with one line naming the file (and line); a UTF-8 byte-order mark is
tolerated as Python's utf-8-sig tolerates it."""

import pytest

from factory.alignment.records import iter_conversations
from factory.cli import main
from factory.sources.datasets import DatasetSpec
from factory.sources.documents import iter_documents
from foundation.errors import ConfigError, FactoryError

CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _read(tmp_path, name, fmt="auto"):
    return list(iter_documents(DatasetSpec(path=name, format=fmt), tmp_path))


@pytest.mark.parametrize("name,fmt", [("c.txt", "auto"), ("c.jsonl", "auto"), ("c.jsonl", "chat")])
def test_an_empty_file_is_named_at_validate_and_at_read(tmp_path, name, fmt):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        DatasetSpec(path=name, format=fmt).check_files("datasets.corpus", tmp_path)
    assert str(e.value) == f"datasets.corpus.path: {tmp_path / name}: empty data file"
    with pytest.raises(FactoryError) as e:
        _read(tmp_path, name, fmt)
    assert str(e.value) == f"{tmp_path / name}: empty data file (0 bytes, no text)"


def test_a_blank_file_is_named_when_read(tmp_path):
    (tmp_path / "c.txt").write_text("  \n\n\t\n")
    with pytest.raises(FactoryError, match=r"c\.txt: empty data file \(6 bytes, no text\)$"):
        _read(tmp_path, "c.txt")


def test_an_empty_file_in_a_recipe_fails_validate_in_one_line(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_bytes(b"")
    (tmp_path / "r.yaml").write_text(
        "name: r\nmodels:\n  teacher: {tiny: {num_hidden_layers: 1}}\ndatasets:\n  corpus: {path: corpus.txt}\n"
        "stages:\n  correct: {kind: correct, model: teacher, data: corpus, seq_len: 16, max_tokens: 64}\n"
    )
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'r.yaml'}: datasets.corpus.path: {tmp_path / 'corpus.txt'}: empty data file"
    )


@pytest.mark.parametrize(
    "name,content,fmt,where",
    [
        (
            "c.jsonl",
            b'{"text": "fine"}\n{"text": "fine too"}\n{"text": "bad \xff\xfe"}\n',
            "auto",
            "c.jsonl:3: not UTF-8 text (byte 0xff at column 15)",
        ),
        ("c.txt", b"first line\nsecond \xc3\x28 line\n", "auto", "c.txt:2: not UTF-8 text (byte 0xc3 at column 8)"),
        (
            "c.jsonl",
            CHAT.encode() + b"\x00\x01\x02\x89PNG\r\n",
            "chat",
            "c.jsonl:2: not UTF-8 text (byte 0x89 at column 4)",
        ),
    ],
)
def test_a_binary_line_is_reported_as_file_and_line(tmp_path, name, content, fmt, where):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FactoryError) as e:
        _read(tmp_path, name, fmt)
    assert str(e.value) == f"{tmp_path}/{where}: a binary file?"


def test_a_utf8_bom_is_tolerated(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "c.txt").write_bytes(bom + b"hello world\n")
    assert _read(tmp_path, "c.txt") == ["hello world\n"]
    (tmp_path / "t.jsonl").write_bytes(bom + b'{"text": "a"}\n{"text": "b"}\n')
    assert _read(tmp_path, "t.jsonl") == ["a", "b"]
    (tmp_path / "chat.jsonl").write_bytes(bom + CHAT.encode())
    convs = list(iter_conversations(DatasetSpec(path="chat.jsonl", format="chat"), tmp_path))
    assert [m["content"] for m in convs[0].messages] == ["hi", "hello"]
    (tmp_path / "array.json").write_bytes(bom + b"[" + CHAT.strip().encode() + b"]")
    assert len(list(iter_conversations(DatasetSpec(path="array.json", format="chat"), tmp_path))) == 1
