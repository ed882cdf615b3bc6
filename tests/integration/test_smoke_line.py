"""The whole line on a tiny model (recipes/smoke.yaml): every stage's artifact,
a release that loads and chats, a report that renders, a fully cached rerun;
and (slow) a SIGKILL at a random point, after which a rerun completes with the
same release."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from factory.cli import main
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.artifacts import read_manifest
from tests.conftest import RECIPES

SMOKE = RECIPES / "smoke.yaml"
STAGES = ["correct", "prune", "distill", "sft", "dpo", "evaluate", "gate", "release"]


def test_smoke_line_end_to_end(runs, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Pipeline(load_recipe(SMOKE), runs, progress=False).run()
    run = runs / "smoke"
    for stage in STAGES:
        assert read_manifest(run / stage) is not None, stage
    release = run / "release"
    model = AutoModelForCausalLM.from_pretrained(release)
    tok = AutoTokenizer.from_pretrained(release)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True, return_tensors="pt"
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert model.config.hidden_size == 48 and model.config.intermediate_size == 64  # the pruned shape
    card = (release / "README.md").read_text()
    for section in ("## Lineage", "## Evaluation", "## Regression gate", "## Reproduce", "## Data and licences"):
        assert section in card, section
    for stage in STAGES[:5]:
        assert f"| {stage} | {stage} |" in card, stage
    assert "| ifeval | prompt_level_strict_acc | 4 |" in card
    assert "CC0-1.0 (written for this project)" in card
    man = read_manifest(release)
    assert man["lineage"] == STAGES[:5] and man["metrics"]["params"] == model.num_parameters()

    assert main(["report", str(run)]) == 0
    page = (run / "report" / "report.html").read_text()
    assert "<svg" in page and page.count("<img") >= 5  # 4 training curves + importance + eval chart
    assert all(f">{s}<" in page for s in STAGES)
    # what it ran on, so its seconds can be read against another machine's
    machine = read_manifest(run / "distill")["host"]
    assert machine["fp32_matmul_gflops"] > 0 and machine["torch_threads"] >= 1
    assert f"Ran on: {machine['cpu']}" in page

    decisions = Pipeline(load_recipe(SMOKE), runs).plan()
    assert [d.action for d in decisions] == ["cached"] * len(STAGES)


def _cmd(runs):
    return [sys.executable, "-m", "factory.cli", "run", str(SMOKE), "--runs-dir", str(runs), "--no-progress"]


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_gives_the_same_release(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    t0 = time.time()
    subprocess.run(_cmd(tmp_path / "ref"), check=True, env=env, capture_output=True)
    full = time.time() - t0
    runs = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(runs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    time.sleep(random.Random(os.getpid()).uniform(0.2, 0.8) * full)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(_cmd(runs), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert (runs / "smoke" / "release" / name).read_bytes() == (
            tmp_path / "ref" / "smoke" / "release" / name
        ).read_bytes(), name
