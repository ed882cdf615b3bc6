"""Training from tokenized corpora end to end on a tiny model: a ``tokenize`` stage's
shards feed ``correct`` through the memory-mapped sampler, a SIGKILLed run resumes
bitwise, blends record what each corpus gave, and bad blends or shards are refused
in one line."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from factory.cli import main
from factory.corpus.feed import CorpusEntry, corpus_data
from factory.recipe import load_recipe
from factory.sources import models as model_sources
from foundation.errors import ConfigError, FactoryError
from tests.conftest import RECIPES

RECIPE = """
name: corpus
engine: native
seed: 0
models:
  teacher: {tiny: {num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 64}}
datasets:
  text: {path: %s, doc_chars: 400, licence: CC0-1.0}
stages:
  web: {kind: tokenize, data: text, tokenizer: teacher, shard_tokens: 300, heldout_tokens: 200, workers: 1}
  code: {kind: tokenize, data: text, tokenizer: teacher, shard_tokens: 500, heldout_tokens: 300, workers: 1}
  correct:
    {kind: correct, model: teacher, data: %s, seq_len: 32, batch_size: 4, max_tokens: %d, eval_tokens: 128,
     lr: 3.0e-3, warmup_ratio: 0.1, checkpoint_every: 5}
"""


def _recipe(tmp_path, data="web", max_tokens=1024, name="r.yaml"):
    path = tmp_path / name
    path.write_text(RECIPE % (RECIPES / "data" / "smoke.txt", data, max_tokens))
    return path


def _cmd(recipe, runs):
    return [sys.executable, "-m", "factory.cli", "run", str(recipe), "--runs-dir", str(runs), "--no-progress"]


@pytest.mark.usefixtures("cpu_only")
def test_correct_trains_from_shards_and_a_sigkilled_run_resumes_bitwise(tmp_path):
    recipe = _recipe(tmp_path, max_tokens=128 * 60)  # 60 steps
    reference = tmp_path / "reference"
    subprocess.run(_cmd(recipe, reference), check=True, capture_output=True)
    m = json.loads((reference / "corpus" / "correct" / "manifest.json").read_text())
    web = m["data"]["corpora"]["web"]
    assert web["realised_tokens"] == 128 * 60 and web["weight"] == 1.0 and m["data"]["heldout_blocks"] >= 1

    runs = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(recipe, runs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, ckpt = time.time() + 180, None
    while time.time() < deadline and proc.poll() is None:
        found = list((runs / "corpus" / ".work").glob("correct-*/checkpoint.pt")) if (runs / "corpus").exists() else []
        if found:
            ckpt = found[0]
            break
        time.sleep(0.01)
    assert ckpt is not None and proc.poll() is None, "the run ended before a checkpoint appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(_cmd(recipe, runs), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    step = re.search(r"resumed from step (\d+)/60", again.stderr)
    assert step and int(step.group(1)) >= 5, again.stderr
    a = load_file(reference / "corpus" / "correct" / "model.safetensors")
    b = load_file(runs / "corpus" / "correct" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_blend_trains_and_records_the_realised_tokens_per_corpus(tmp_path):
    recipe = _recipe(tmp_path, data="{blend: [[0.7, web], [0.3, code]]}", max_tokens=128 * 20)
    runs = tmp_path / "runs"
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress"]) == 0
    m = json.loads((runs / "corpus" / "correct" / "manifest.json").read_text())
    corpora = m["data"]["corpora"]
    assert {k: v["weight"] for k, v in corpora.items()} == {"web": 0.7, "code": 0.3}
    samples = {k: v["realised_samples"] for k, v in corpora.items()}
    assert samples == {"web": 56, "code": 24}  # 80 samples by the greedy rule: 0.7 * 80, 0.3 * 80
    assert sum(v["realised_tokens"] for v in corpora.values()) == m["tokens"] == 128 * 20
    assert m["config"]["data"]["blend"] == [[0.7, "web"], [0.3, "code"]]
    other = load_recipe(_recipe(tmp_path, data="{blend: [[0.6, web], [0.4, code]]}", name="o.yaml"))
    assert other.config_hash("correct") != load_recipe(recipe).config_hash("correct")  # weights are hashed
    assert other.upstream("correct") == ["web", "code"]


@pytest.mark.parametrize(
    "data, message",
    [
        ("{blend: [[0, web], [0, code]]}", r"stages\.correct\.data\.blend\[0\]: weight 0 must be a positive finite"),
        ("{blend: [[1, web], [-1, code]]}", r"stages\.correct\.data\.blend\[1\]: weight -1 must be a positive finite"),
        ("{blend: []}", r"stages\.correct\.data\.blend: a blend needs at least one"),
        ("{blend: [[1, web], [1, nowhere]]}", r"'nowhere' is neither a datasets: entry nor a stage"),
    ],
)
def test_bad_blends_are_refused_at_validate_in_one_line(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_recipe(_recipe(tmp_path, data=data))
    assert "\n" not in str(e.value)


def test_a_blend_of_a_plain_dataset_is_refused_in_one_line(tmp_path, capsys):
    recipe = _recipe(tmp_path, data="{blend: [[1, web], [1, text]]}")
    assert main(["run", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert re.search(r"stages\.correct\.data\.blend\[1\]: 'text' is not a tokenized corpus", err), err


def test_shards_of_another_tokenizer_or_without_held_out_blocks_are_refused(tmp_path):
    recipe = _recipe(tmp_path)
    runs = tmp_path / "runs"
    for stage in ("web", "code"):
        assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress", "--until", stage]) == 0
    r = load_recipe(recipe)
    model = model_sources.materialize(r.models["teacher"], r.base)
    web = tmp_path / "other-tokenizer"
    shutil.copytree(runs / "corpus" / "web", web)
    meta = json.loads((web / "corpus.json").read_text())
    meta["tokenizer"]["sha256"] = "0" * 64
    (web / "corpus.json").write_text(json.dumps(meta))
    with pytest.raises(FactoryError, match="shards were made with tokenizer 0{64}, the model's is [0-9a-f]{64}"):
        corpus_data([CorpusEntry("web", 1.0, web)], model, 32, 4, 0, "stages.correct.data")
    code = runs / "corpus" / "code"
    with pytest.raises(FactoryError, match="held-out shards hold .* fewer than one block of 1000"):
        corpus_data([CorpusEntry("code", 1.0, code)], model, 1000, 1, 0, "stages.correct.data")


def test_distill_trains_from_shards(tmp_path):
    recipe = _recipe(tmp_path)
    recipe.write_text(
        recipe.read_text()
        + "  distill: {kind: distill, student: teacher, teacher: teacher, data: web, seq_len: 32, batch_size: 4,"
        + " max_tokens: 512, eval_tokens: 64, lr: 1.0e-3}\n"
    )
    runs = tmp_path / "runs"
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress", "--until", "distill"]) == 0
    m = json.loads((runs / "corpus" / "distill" / "manifest.json").read_text())
    assert m["data"]["corpora"]["web"]["realised_tokens"] == 512
    assert m["data"]["heldout_blocks"] == 2 and m["data"]["licence"] == "CC0-1.0"
