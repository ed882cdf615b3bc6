"""Streaming tokenization into shards: exact token ids, the held-out split, resume, workers, bad input."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoTokenizer

from factory.corpus import IndexedWriter, load_corpus, tokenizer_digest
from factory.corpus import tokenize as tk
from factory.corpus.artifact import CORPUS_FILE
from factory.corpus.tokenize import TokenizeSettings, corpus_documents, tokenize_corpus
from factory.sources.datasets import DatasetSpec
from foundation.errors import FactoryError
from tests.conftest import ROOT

CHAT = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi!"}]


def _docs(n=60):
    return [f"document {i}: " + "word " * (i % 13 + 1) + "é∑ end" for i in range(n)]


def _settings(**kw):
    return TokenizeSettings(**{"shard_tokens": 200, "heldout_tokens": 0, "workers": 1, "progress": False, **kw})


def _corpus(work, made):
    (work / CORPUS_FILE).write_text(json.dumps(made))
    return load_corpus(work)


def _all(readers):
    return [r[i].tolist() for r in readers for i in range(len(r))]


def _shard_bytes(work):
    return {p.name: p.read_bytes() for p in sorted((work / "shards").iterdir()) if p.suffix in (".bin", ".idx")}


def test_round_trip_gives_the_tokenizers_ids_with_eos(tmp_path, tok_dir):
    docs = [*_docs(), CHAT]
    made = tokenize_corpus(iter(docs), tok_dir, tmp_path, _settings(heldout_tokens=100))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    texts = [*docs[:-1], tok.apply_chat_template(CHAT, tokenize=False)]
    want = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    corpus = _corpus(tmp_path, made)
    assert _all(corpus.heldout) + _all(corpus.train) == want
    assert made["documents"] == len(docs) and made["tokens"] == sum(map(len, want))
    assert sum(r.total_tokens for r in corpus.heldout) >= 100 > sum(map(len, want[: len(_all(corpus.heldout)) - 1]))
    assert len(corpus.train) > 2 and all(r.total_tokens <= 200 for r in corpus.train)
    assert made["dtype"] == "uint16" and made["tokenizer"] == {
        "sha256": tokenizer_digest(tok_dir),
        "vocab_size": len(tok),
        "eos_id": tok.eos_token_id,
    }
    assert corpus.tokenizer_sha256 == tokenizer_digest(tok_dir)


def test_without_eos_and_with_workers_the_shards_are_the_same_bytes(tmp_path, tok_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    tokenize_corpus(iter(_docs()), tok_dir, one, _settings(append_eos=False, batch_documents=7))
    tokenize_corpus(iter(_docs()), tok_dir, two, _settings(append_eos=False, batch_documents=7, workers=2))
    assert _shard_bytes(one) == _shard_bytes(two)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert (one / "shards" / "train-00000.bin").read_bytes()[:8] == np.array(
        tok(_docs()[0], add_special_tokens=False)["input_ids"][:4], "<u2"
    ).tobytes()


class Crash(Exception):
    pass


def test_a_crash_mid_run_resumes_at_the_last_shard_with_identical_shards(tmp_path, tok_dir, monkeypatch, capsys):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    tokenize_corpus(iter(_docs()), tok_dir, clean, _settings(heldout_tokens=50, batch_documents=5))
    finish, calls = IndexedWriter.finish, []

    def dying_finish(self):
        calls.append(self.prefix.name)
        if len(calls) == 4:  # held-out + 2 train shards done, the 3rd train shard half written
            raise Crash
        return finish(self)

    monkeypatch.setattr(IndexedWriter, "finish", dying_finish)
    with pytest.raises(Crash):
        tokenize_corpus(iter(_docs()), tok_dir, crashed, _settings(heldout_tokens=50, batch_documents=5))
    monkeypatch.setattr(IndexedWriter, "finish", finish)
    progress = json.loads((crashed / tk.PROGRESS_FILE).read_text())
    assert len(progress["train"]) == 2 and progress["documents_read"] > 0
    encoded = []
    monkeypatch.setattr(tk, "encode", lambda docs, *a: encoded.extend(docs) or tk_encode(docs, *a))
    made = tokenize_corpus(
        iter(_docs()), tok_dir, crashed, _settings(heldout_tokens=50, batch_documents=5, progress=True)
    )
    assert f"resuming after {progress['documents_read']} documents" in capsys.readouterr().err
    assert encoded == _docs()[progress["documents_read"] :]  # finished shards are not tokenized again
    assert _shard_bytes(crashed) == _shard_bytes(clean)
    assert made["documents"] == len(_docs())


tk_encode = tk.encode


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, shard, kept",
    [
        (_flip, "train-00001.bin", 2),  # altered in place, same size: only its hash tells
        (lambda p: p.write_bytes(p.read_bytes()[:-2]), "train-00000.bin", 1),
        (lambda p: p.unlink(), "heldout-00000.idx", 0),
    ],
)
def test_a_damaged_finished_shard_is_found_by_hash_and_rebuilt_on_resume(
    tmp_path, tok_dir, monkeypatch, capsys, damage, shard, kept
):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    settings = _settings(heldout_tokens=50, batch_documents=5)
    tokenize_corpus(iter(_docs()), tok_dir, clean, settings)
    finish, calls = IndexedWriter.finish, []

    def dying_finish(self):
        calls.append(self.prefix.name)
        if len(calls) == 5:  # held-out + 3 train shards finished
            raise Crash
        return finish(self)

    monkeypatch.setattr(IndexedWriter, "finish", dying_finish)
    with pytest.raises(Crash):
        tokenize_corpus(iter(_docs()), tok_dir, crashed, settings)
    monkeypatch.setattr(IndexedWriter, "finish", finish)
    marks = json.loads((crashed / tk.PROGRESS_FILE).read_text())["marks"]
    damage(crashed / "shards" / shard)
    encoded = []
    monkeypatch.setattr(tk, "encode", lambda docs, *a: encoded.extend(docs) or tk_encode(docs, *a))
    made = tokenize_corpus(
        iter(_docs()), tok_dir, crashed, _settings(heldout_tokens=50, batch_documents=5, progress=True)
    )
    err = capsys.readouterr().err
    assert f"{crashed / 'shards' / shard} does not match its sha256: rebuilding from it" in err
    start = marks[kept - 1]["documents_read"] if kept else 0
    assert encoded == _docs()[start:]  # the shards before the damaged one are kept, it and the rest redone
    assert _shard_bytes(crashed) == _shard_bytes(clean)
    assert made["documents"] == len(_docs()) and made["tokens"] == sum(
        s["tokens"] for s in made["train"] + made["heldout"]
    )


def test_changed_settings_start_over_instead_of_resuming(tmp_path, tok_dir):
    tokenize_corpus(iter(_docs()), tok_dir, tmp_path, _settings())
    made = tokenize_corpus(iter(_docs()), tok_dir, tmp_path, _settings(shard_tokens=400))
    assert all(s["tokens"] <= 400 for s in made["train"]) and made["documents"] == len(_docs())
    assert max(s["tokens"] for s in made["train"]) > 200


def test_empty_documents_are_skipped_and_counted(tmp_path, tok_dir):
    made = tokenize_corpus(iter(["", "a b", "  \n ", "c", []]), tok_dir, tmp_path, _settings())
    assert made["empty_documents"] == 3 and made["documents"] == 2  # a conversation with no turns is empty too
    tok = AutoTokenizer.from_pretrained(tok_dir)
    want = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in ("a b", "c")]
    assert _all(_corpus(tmp_path, made).train) == want


def test_a_huge_document_is_one_document_in_its_own_shard(tmp_path, tok_dir):
    huge = "x" * 300_000
    made = tokenize_corpus(iter(["small", huge, "after"]), tok_dir, tmp_path, _settings(shard_tokens=1000))
    assert [s["tokens"] for s in made["train"]] == [6, 300_001, 6]
    r = _corpus(tmp_path, made).train[1]
    assert len(r) == 1 and r[0].shape == (300_001,)


def test_a_corpus_smaller_than_the_heldout_split_is_refused_in_one_line(tmp_path, tok_dir):
    with pytest.raises(FactoryError, match=r"^the corpus has \d+ tokens, fewer than heldout_tokens \(10000\)") as e:
        tokenize_corpus(iter(_docs(5)), tok_dir, tmp_path, _settings(heldout_tokens=10_000))
    assert "\n" not in str(e.value)
    with pytest.raises(FactoryError, match="all in the held-out split"):
        tokenize_corpus(iter(["abc"]), tok_dir, tmp_path / "b", _settings(heldout_tokens=3))


def test_shards_of_another_tokenizer_are_refused_naming_both_digests(tmp_path, tok_dir):
    made = tokenize_corpus(iter(_docs()), tok_dir, tmp_path, _settings())
    (tmp_path / CORPUS_FILE).write_text(json.dumps(made))
    other = "f" * 64
    with pytest.raises(FactoryError) as e:
        load_corpus(tmp_path, expect_tokenizer=other)
    msg = str(e.value)
    assert f"made with tokenizer {tokenizer_digest(tok_dir)}, the model's is {other}" in msg and "\n" not in msg
    assert load_corpus(tmp_path, expect_tokenizer=tokenizer_digest(tok_dir)).train


def test_the_digest_ignores_a_resave_but_not_a_changed_vocabulary(tmp_path, tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.save_pretrained(tmp_path / "again")
    assert tokenizer_digest(tmp_path / "again") == tokenizer_digest(tok_dir)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(tmp_path / "grown")
    assert tokenizer_digest(tmp_path / "grown") != tokenizer_digest(tok_dir)


def _bad_text(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_bytes(b"first good line\n\nsecond \xff\xfe bad\n\nthird good\n")
    (tmp_path / "data" / "b.txt").write_bytes(b"all good here\n")
    (tmp_path / "data" / "c.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "\xc3("}\n')
    return DatasetSpec(path=str(tmp_path / "data"), doc_chars=10)


def test_undecodable_lines_are_skipped_and_counted_per_file(tmp_path):
    spec = _bad_text(tmp_path)
    spec.on_bad_record = "skip"
    bad: dict[str, int] = {}
    docs = list(corpus_documents(spec, tmp_path, bad))
    assert docs == ["first good line", "third good\n", "all good here\n"]  # c.jsonl has a bad line: skipped whole
    assert bad == {str(tmp_path / "data" / "a.txt"): 1, str(tmp_path / "data" / "c.jsonl"): 1}


def test_undecodable_bytes_stop_the_run_with_file_and_line(tmp_path):
    spec = _bad_text(tmp_path)
    with pytest.raises(FactoryError, match=r"a\.txt:3: not UTF-8 text"):
        list(corpus_documents(spec, tmp_path, {}))


KILLED = """
import os, signal, sys
from pathlib import Path
from factory.corpus.indexed import IndexedWriter
from factory.corpus.tokenize import TokenizeSettings, tokenize_corpus

finish, done = IndexedWriter.finish, []

def finish_then_die(self):
    done.append(finish(self))
    if len(done) == 3:  # shard 3 is on disk but not yet in the progress file
        os.kill(os.getpid(), signal.SIGKILL)
    return done[-1]

IndexedWriter.finish = finish_then_die
docs = [f"document {i}: " + "word " * (i % 13 + 1) + "é∑ end" for i in range(60)]
tokenize_corpus(iter(docs), Path(sys.argv[1]), Path(sys.argv[2]), TokenizeSettings(shard_tokens=200, heldout_tokens=50, workers=1, progress=False, batch_documents=5))
"""


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_shards(tmp_path, tok_dir):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    tokenize_corpus(iter(_docs()), tok_dir, clean, _settings(heldout_tokens=50, batch_documents=5))
    run = subprocess.run([sys.executable, "-c", KILLED, str(tok_dir), str(killed)], cwd=ROOT, capture_output=True)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
    assert len(json.loads((killed / tk.PROGRESS_FILE).read_text())["train"]) == 1
    tokenize_corpus(iter(_docs()), tok_dir, killed, _settings(heldout_tokens=50, batch_documents=5))
    assert _shard_bytes(killed) == _shard_bytes(clean)
