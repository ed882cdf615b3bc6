"""How a NeMo 2 job's corpus reaches it: the host prepare step tokenizes a plain text
dataset into Megatron shards with factory.corpus (the job tokenizes nothing); a
``tokenize`` stage's artifact, or a blend of them, is read where it lies after its
tokenizer is checked; the job config carries the blend weights, and the job turns
each corpus into its shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from factory.cli import main
from factory.corpus.artifact import load_corpus
from factory.engines.base import SourceHashes
from factory.engines.nemo import executor, prepare
from factory.engines.nemo.scripts.nemo2_job import megatron_blend
from factory.recipe import load_recipe
from factory.sources.documents import iter_documents
from factory.sources.tiny import TinyLlamaSpec, build_tiny
from foundation.errors import FactoryError
from tests.conftest import write

TINY = "{tiny: {num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 64}}"
RECIPE = f"""
name: data
engine: nemo
engines: {{web: native, code: native, bare: native}}
nemo: {{gpus_per_node: 1, workers: 1}}
models:
  teacher: {TINY}
  other: {{path: other}}
datasets:
  text: {{path: corpus.txt, doc_chars: 300, licence: CC0-1.0}}
stages:
  web: {{kind: tokenize, data: text, tokenizer: teacher, shard_tokens: 2000, heldout_tokens: 200, workers: 1}}
  code: {{kind: tokenize, data: text, tokenizer: TOKENIZER, shard_tokens: 1500, heldout_tokens: 300, workers: 1}}
  bare: {{kind: tokenize, data: text, tokenizer: teacher, workers: 1}}
  correct: {{kind: correct, model: teacher, data: DATA, seq_len: 32, batch_size: 2, max_tokens: 1024, eval_tokens: 64}}
"""


def _recipe(tmp_path: Path, data: str = "text", tokenizer: str = "teacher"):
    text = "\n\n".join(f"paragraph {i:02d}: " + " ".join(f"word{j * i % 97}" for j in range(40)) for i in range(60))
    (tmp_path / "corpus.txt").write_text(text)
    build_tiny(
        TinyLlamaSpec(
            num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
        ),
        tmp_path / "other",
    )
    tok = AutoTokenizer.from_pretrained(tmp_path / "other")
    tok.add_tokens(["<another-token>"])  # another vocabulary, so another tokenizer digest
    tok.save_pretrained(tmp_path / "other")
    path = write(tmp_path / "r.yaml", RECIPE.replace("DATA", data).replace("TOKENIZER", tokenizer))
    return load_recipe(path)


def _prepare(recipe, runs: Path, stage: str = "correct") -> tuple[dict, Path, dict]:
    """What `factory run` does on this machine before launching the stage's job."""
    run_dir = (runs / recipe.name).resolve()
    fingerprint = SourceHashes(recipe)
    spec, job_dir = executor.NemoExecutor(recipe).render(stage, run_dir, fingerprint)
    prepare.materialize_sources(recipe, stage, run_dir, fingerprint)
    counts = prepare.export_data(recipe, spec, run_dir)
    return yaml.safe_load((job_dir / "config.yaml").read_text()), run_dir, counts


def _tokenize_stages(recipe, runs: Path, *stages: str) -> None:
    for stage in stages:
        assert main(["run", str(recipe.file), "--only", stage, "--runs-dir", str(runs), "--no-progress"]) == 0


def _shard_files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".bin", ".idx")}


def _expanded(spec: dict, run_dir: Path, split: str) -> list:
    entries = [
        e.replace("$RUN_DIR", str(run_dir)) if isinstance(e, str) else e for e in spec["nemo2"]["data"]["paths"][split]
    ]
    return megatron_blend(entries, split)


def test_prepare_tokenizes_a_text_dataset_into_shards_with_the_tokenizers_ids(tmp_path):
    recipe = _recipe(tmp_path)
    spec, run_dir, counts = _prepare(recipe, tmp_path / "runs")
    run_sh = (run_dir / ".nemo" / "correct" / "run.sh").read_text()
    assert "preprocess_data_for_megatron" not in run_sh and "jsonl" not in run_sh
    tokens = run_dir / spec["data"]["tokens"]
    assert spec["nemo2"]["data"]["paths"]["train"] == [1.0, "$RUN_DIR/.nemo/correct/tokens"]
    corpus = load_corpus(tokens)
    tok = AutoTokenizer.from_pretrained(run_dir / ".sources" / "teacher")
    docs = [d for d in iter_documents(recipe.datasets["text"], recipe.base) if d.strip()]
    got = [r[i].tolist() for r in corpus.heldout + corpus.train for i in range(len(r))]
    want = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs]
    assert got == want[: len(got)]  # the documents in stream order, held-out ones first
    # read up to the job's tokens (1024 + 64 held out) at 5 characters a token, no further
    read = sum(len(d) for d in docs[: len(got)])
    assert 5 * (1024 + 64) <= read < 5 * (1024 + 64) + len(docs[len(got) - 1]) and len(got) < len(docs)
    heldout = sum(r.total_tokens for r in corpus.heldout)
    assert 64 <= heldout < 64 + max(len(w) for w in want)  # the first documents covering eval_tokens
    assert counts == {"train": sum(len(r) for r in corpus.train), "valid": len(corpus.heldout[0])}
    # the job reads those shards: train shards for training, the held-out shard for validation
    assert _expanded(spec, run_dir, "validation") == [1.0, str(tokens / "shards" / "heldout-00000")]
    train = _expanded(spec, run_dir, "train")
    assert train[1::2] == [str(tokens / s["prefix"]) for s in corpus.meta["train"]]
    assert sum(train[::2]) == pytest.approx(1.0)
    before = _shard_files(tokens)
    assert _prepare(recipe, tmp_path / "runs")[2] == counts
    assert _shard_files(tokens) == before  # prepared once: a second launch tokenizes nothing


def test_a_blend_of_tokenize_stages_is_read_as_it_is_with_its_weights(tmp_path):
    recipe = _recipe(tmp_path, data="{blend: [[0.7, web], [0.3, code]]}")
    runs = tmp_path / "runs"
    _tokenize_stages(recipe, runs, "web", "code")
    before = _shard_files(runs)
    spec, run_dir, counts = _prepare(recipe, runs)
    assert _shard_files(runs) == before  # no shard written, none rewritten
    assert not (run_dir / ".nemo" / "correct" / "tokens").exists()
    assert spec["data"]["corpora"] == [
        {"name": "web", "weight": 0.7, "path": "web"},
        {"name": "code", "weight": 0.3, "path": "code"},
    ]
    assert spec["nemo2"]["data"]["paths"]["train"] == [0.7, "$RUN_DIR/web", 0.3, "$RUN_DIR/code"]
    web, code = load_corpus(run_dir / "web"), load_corpus(run_dir / "code")
    assert counts == {
        "train": sum(len(r) for r in web.train + code.train),
        "valid": sum(len(r) for r in web.heldout + code.heldout),
    }
    train = _expanded(spec, run_dir, "train")
    assert len(web.train) > 1 and len(code.train) > 1  # several shards each, weighted by their tokens
    assert train[1::2] == [
        str(run_dir / c / s["prefix"]) for c in ("web", "code") for s in load_corpus(run_dir / c).meta["train"]
    ]
    by_corpus = {c: sum(w for w, p in zip(train[::2], train[1::2]) if f"/{c}/" in p) for c in ("web", "code")}
    assert by_corpus == pytest.approx({"web": 0.7, "code": 0.3})
    first = web.meta["train"][0]["tokens"] / sum(s["tokens"] for s in web.meta["train"])
    assert train[0] == pytest.approx(0.7 * first)
    valid = _expanded(spec, run_dir, "validation")
    assert valid[1::2] == [str(run_dir / "web/shards/heldout-00000"), str(run_dir / "code/shards/heldout-00000")]


def test_shards_of_another_tokenizer_are_refused_naming_both(tmp_path):
    recipe = _recipe(tmp_path, data="code", tokenizer="other")
    runs = tmp_path / "runs"
    _tokenize_stages(recipe, runs, "code")
    with pytest.raises(FactoryError) as err:
        _prepare(recipe, runs)
    message = str(err.value)
    made = json.loads((runs / "data" / "code" / "corpus.json").read_text())["tokenizer"]["sha256"]
    assert "\n" not in message and message.startswith("stages.correct.data: ")
    assert f"made with tokenizer {made}" in message and "the model's is " in message
    assert made not in message.split("the model's is ")[1]


def test_a_corpus_without_heldout_shards_is_refused_for_a_job_that_validates(tmp_path):
    recipe = _recipe(tmp_path, data="bare")
    runs = tmp_path / "runs"
    _tokenize_stages(recipe, runs, "bare")
    with pytest.raises(FactoryError, match=r"^stages\.correct\.data: corpus 'bare' .* has no held-out shards"):
        _prepare(recipe, runs)
    # calibration data (prune) validates on nothing: its validation split falls back to the train shards
    bare = runs / "data" / "bare"
    train = [1.0, str(bare / "shards" / "train-00000")]
    assert megatron_blend([1.0, str(bare)], "validation") == megatron_blend([1.0, str(bare)], "train") == train


def test_a_blend_member_that_is_not_a_tokenized_corpus_is_refused_in_one_line(tmp_path):
    recipe = _recipe(tmp_path, data="{blend: [[1, web], [1, text]]}")
    with pytest.raises(FactoryError) as err:
        executor.NemoExecutor(recipe).render("correct", (tmp_path / "runs" / "data").resolve(), SourceHashes(recipe))
    assert str(err.value) == (
        "stages.correct.data.blend[1]: 'text' is not a tokenized corpus "
        "(a blend reads `tokenize` stages or datasets: entries pointing at one)"
    )
