"""SIGKILL in the middle of a training stage, rerun: it resumes from the last
checkpoint and ends bitwise equal to an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import RECIPES

OVERRIDES = ["stages.correct.max_tokens=76800", "stages.correct.checkpoint_every=15"]  # 300 steps


def _cmd(runs):
    return [
        sys.executable,
        "-m",
        "factory.cli",
        "run",
        str(RECIPES / "smoke.yaml"),
        *OVERRIDES,
        "--until",
        "distill",
        "--runs-dir",
        str(runs),
        "--no-progress",
    ]


@pytest.mark.usefixtures("cpu_only")
def test_sigkill_mid_stage_then_resume_is_bitwise_equal(tmp_path):
    env = {**os.environ}
    reference = tmp_path / "reference"
    subprocess.run(_cmd(reference), check=True, env=env, capture_output=True)

    runs = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(runs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list((runs / "smoke" / ".work").glob("correct-*/checkpoint.pt")) if (runs / "smoke").exists() else []
        if found:
            ckpt = found[0]
            break
        time.sleep(0.01)
    assert ckpt is not None and proc.poll() is None, "the run ended before a checkpoint appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (runs / "smoke" / "correct" / "manifest.json").exists()

    again = subprocess.run(_cmd(runs), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    m = re.search(r"resumed from step (\d+)/300", again.stderr)
    assert m and int(m.group(1)) >= 15, again.stderr

    a = load_file(reference / "smoke" / "correct" / "model.safetensors")
    b = load_file(runs / "smoke" / "correct" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (runs / "smoke" / "correct" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 301))
    ref = json.loads((reference / "smoke" / "correct" / "manifest.json").read_text())
    got = json.loads((runs / "smoke" / "correct" / "manifest.json").read_text())
    assert got["hash"] == ref["hash"]
    assert got["metrics"]["eval_loss_after"] == ref["metrics"]["eval_loss_after"]
