import json
from pathlib import Path

import pytest
import torch

from foundation.errors import ConfigError, FactoryError
from factory.sources.datasets import DatasetSpec, fingerprint, split_paragraphs
from factory.sources.documents import iter_documents
from factory.sources.tiny import byte_tokenizer
from factory.training.data import pack


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


@pytest.mark.parametrize("content,msg", [
    ('{"text": "ok"}\n{"text": "broken"\n', "b.jsonl:2: invalid JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', "b.jsonl:2: missing field 'text'"),
    ('{"text": 3}\n', "b.jsonl:1: field 'text' must be a string"),
    ('[1, 2]\n', "b.jsonl:1: expected a JSON object"),
])
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


def test_pack_is_deterministic_and_holds_out():
    tok = byte_tokenizer()
    docs = [f"document number {i} " * 5 for i in range(50)]
    a = pack(docs, tok, seq_len=32, train_blocks=20, heldout_blocks=4, seed=3, source="t")
    b = pack(docs, tok, seq_len=32, train_blocks=20, heldout_blocks=4, seed=3, source="t")
    c = pack(docs, tok, seq_len=32, train_blocks=20, heldout_blocks=4, seed=4, source="t")
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert a.train.shape == (20, 32) and a.heldout.shape == (4, 32)
    assert (a.train == tok.eos_token_id).any()  # documents are separated by EOS
    # batches are a pure function of (step, micro): resuming sees the same data
    assert torch.equal(a.batch(7, 1, 4, 2, 0), b.batch(7, 1, 4, 2, 0))
    # one epoch visits every training block once
    seen = torch.cat([a.batch(s, 0, 4, 1, 0) for s in range(5)])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, a.train.tolist()))


def test_pack_too_small():
    with pytest.raises(FactoryError, match="need at least"):
        pack(["tiny"], byte_tokenizer(), seq_len=64, train_blocks=4, heldout_blocks=2, seed=0, source="stages.x.data")


def test_byte_tokenizer_specials_and_chat():
    tok = byte_tokenizer()
    ids = tok.encode("hi")
    assert len(ids) == 2 and tok.bos_token_id not in ids  # no stray BOS on plain text
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == tok.pad_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hé"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhé<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok.encode("héllo wörld")) == "héllo wörld"


def test_chat_records_render_with_the_chat_template(tmp_path):
    rec = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    (tmp_path / "c.jsonl").write_text(json.dumps(rec) + "\n")
    docs = list(iter_documents(DatasetSpec(path="c.jsonl", format="chat"), tmp_path))
    assert docs == [rec["messages"]]
    tok = byte_tokenizer()
    packed = pack(docs * 20, tok, seq_len=16, train_blocks=4, heldout_blocks=1, seed=0, source="t")
    text = tok.decode(packed.train[0])
    assert "<|im_start|>user" in text or "<|im_start|>assistant" in text or "<|im_end|>" in text


@pytest.mark.parametrize("line,msg", [
    ('{"messages": []}', "c.jsonl:1: field 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "user"}]}', "c.jsonl:1: message 0 needs string 'role' and 'content'"),
    ('{"text": "x"}', "c.jsonl:1: field 'messages' must be a non-empty list"),
])
def test_bad_chat_records(tmp_path, line, msg):
    (tmp_path / "c.jsonl").write_text(line + "\n")
    with pytest.raises(FactoryError, match=msg):
        list(iter_documents(DatasetSpec(path="c.jsonl", format="chat"), tmp_path))


def test_a_model_built_twice_at_once_keeps_the_first_copy(tmp_path, monkeypatch):
    """Two processes (ranks, parallel runs) build the same cached model: the one that
    publishes second must neither delete the first copy (a reader may be loading it) nor fail."""
    import factory.sources.models as models
    from factory.sources.tiny import TinyLlamaSpec

    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    spec = models.ModelSpec(tiny=TinyLlamaSpec(num_hidden_layers=1, hidden_size=32, intermediate_size=64))
    real_build = models.build_tiny
    calls = []

    def rival_publishes_first(tiny, out):
        calls.append(out)
        real_build(tiny, out)
        if len(calls) == 1:  # the rival: same key, finished while we were building
            rival = models.materialize(spec, tmp_path)
            (rival / "being-read").write_text("x")

    monkeypatch.setattr(models, "build_tiny", rival_publishes_first)
    got = models.materialize(spec, tmp_path)
    assert (got / "being-read").exists() and (got / ".complete").exists()
    assert [p.name for p in got.parent.iterdir()] == [got.name]  # no build dir left behind

    # a partial leftover (no .complete) is replaced
    (got / ".complete").unlink()
    monkeypatch.setattr(models, "build_tiny", real_build)
    again = models.materialize(spec, tmp_path)
    assert again == got and (again / ".complete").exists() and not (again / "being-read").exists()


def test_more_ranks_than_gpus_is_one_line(monkeypatch):
    from factory.training import dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(FactoryError, match=r"local rank 1 has no GPU of its own \(1 visible on this node\); "
                                           r"start at most 1 processes per node"):
        dist.init_from_env()


def test_source_digests_name_files_by_part_and_skip_compiled_caches(tmp_path):
    from foundation.hashing import sha256_file, source_digests

    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "top.py").write_text("t = 1\n")
    want_a, want_top = sha256_file(tmp_path / "pkg" / "a.py"), sha256_file(tmp_path / "top.py")
    assert source_digests(tmp_path) == {"pkg/a.py": want_a, "top.py": want_top}
    assert source_digests(tmp_path, ("pkg", "top.py")) == {"pkg/a.py": want_a, "top.py": want_top}
    assert source_digests(tmp_path / "pkg") == {"a.py": want_a}
