"""The ``tokenize`` stage end to end on a tiny model's tokenizer: validate, run, cache,
the artifact as a produced dataset, a damaged shard, a held-out split too large."""

import json

import pytest

from factory.cli import main
from factory.corpus import CORPUS_FORMAT, is_corpus, load_corpus, tokenizer_digest
from factory.recipe import load_recipe
from factory.sources import models as model_sources
from factory.sources.produced import dataset_from_artifact
from foundation.artifacts import read_manifest
from tests.conftest import RECIPES

RECIPE = """
name: tok
seed: 0
models:
  teacher: {tiny: {num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 64}}
datasets:
  corpus: {path: %s, doc_chars: 300, licence: CC0-1.0}
stages:
  tok: {kind: tokenize, data: corpus, tokenizer: teacher, shard_tokens: 1000, heldout_tokens: %d, workers: 1}
"""


def _recipe(tmp_path, heldout=300):
    path = tmp_path / "tok.yaml"
    path.write_text(RECIPE % (RECIPES / "data" / "smoke.txt", heldout))
    return path


def test_validate_and_run_write_a_corpus_that_reads_back(tmp_path, runs, capsys):
    recipe = _recipe(tmp_path)
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe), "--runs-dir", str(runs)]) == 0
    assert "tokens/s" in capsys.readouterr().err
    art = runs / "tok" / "tok"
    meta = json.loads((art / "corpus.json").read_text())
    assert meta["format"] == CORPUS_FORMAT and meta["licence"] == "CC0-1.0" and meta["source"] == "corpus"
    assert meta["tokenizer"]["source"] == "teacher" and meta["dtype"] == "uint16"
    m = read_manifest(art)
    assert m["tokens"] == meta["tokens"] and m["metrics"]["tokens"] == meta["tokens"]
    assert m["corpus"]["shards"]["train"] == [{k: s[k] for k in ("documents", "tokens")} for s in meta["train"]]
    assert m["corpus"]["tokenizer"]["sha256"] == meta["tokenizer"]["sha256"]
    assert {f"shards/train-00000.{x}" for x in ("bin", "idx")} <= set(m["files"])
    corpus = load_corpus(art, expect_tokenizer=meta["tokenizer"]["sha256"])
    assert sum(r.total_tokens for r in corpus.train + corpus.heldout) == meta["tokens"]
    assert corpus.heldout[0].total_tokens >= 300 and len(corpus.train) > 1
    spec = dataset_from_artifact(art, "stages.next.data")
    assert is_corpus(spec) and spec.path == str(art) and spec.licence == "CC0-1.0"
    capsys.readouterr()
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress"]) == 0
    assert "cached" in capsys.readouterr().err


def test_the_corpus_digest_is_the_models_tokenizer(tmp_path, runs):
    recipe = _recipe(tmp_path)
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress"]) == 0
    r = load_recipe(recipe)
    teacher = model_sources.materialize(r.models["teacher"], r.base)
    assert load_corpus(runs / "tok" / "tok").tokenizer_sha256 == tokenizer_digest(teacher)


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_a_damaged_shard_is_caught_and_rebuilt_identically(tmp_path, runs, capsys, damage):
    recipe = _recipe(tmp_path)
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress"]) == 0
    shard = runs / "tok" / "tok" / "shards" / "train-00001.bin"
    good = shard.read_bytes()
    shard.unlink()  # the artifact's files may be links into the work dir: never write through them
    shard.write_bytes(good[:-2] if damage == "truncate" else good[:10] + bytes([good[10] ^ 0xFF]) + good[11:])
    capsys.readouterr()
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress"]) == 2
    assert "shards/train-00001.bin does not match its sha256" in capsys.readouterr().err
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress", "--force", "tok"]) == 0
    assert shard.read_bytes() == good


def test_a_corpus_smaller_than_the_heldout_split_fails_in_one_line(tmp_path, runs, capsys):
    recipe = _recipe(tmp_path, heldout=10**6)
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress"]) != 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "heldout_tokens" in x)
    assert "fewer than heldout_tokens (1000000)" in line
