"""Two processes under torchrun (gloo) follow the single-process loss trajectory,
replicated (DDP) or sharded (FSDP2), and a torchrun job killed mid-stage resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import RECIPES

SMOKE = RECIPES / "smoke.yaml"
pytestmark = pytest.mark.usefixtures("cpu_only")  # gloo on the CPU, wherever the tests run


def _losses(runs, stage):
    rows = [json.loads(x) for x in (runs / "smoke" / stage / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [
        r["eval_" + k] for r in rows for k in ("loss", "kl") if "eval_" + k in r
    ]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
FSDP = ["stages.correct.parallel=fsdp", "stages.distill.parallel=fsdp"]


def _run_cmd(runs, *extra):
    return [
        "-m",
        "factory.cli",
        "run",
        str(SMOKE),
        *extra,
        "--until",
        "distill",
        "--runs-dir",
        str(runs),
        "--no-progress",
    ]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, parallel):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, *_run_cmd(one)], check=True, env=env, capture_output=True)
    proc = subprocess.run(
        [*TORCHRUN, *_run_cmd(two, *(FSDP if parallel == "fsdp" else []))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("correct", "distill"):
        a, ea = _losses(one, stage)
        b, eb = _losses(two, stage)
        assert len(a) == len(b) == 16
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6), stage
        assert eb == pytest.approx(ea, rel=1e-4, abs=1e-5), stage  # KL near 0.007: float drift of 2e-6 seen
    m1 = json.loads((one / "smoke" / "prune" / "manifest.json").read_text())
    m2 = json.loads((two / "smoke" / "prune" / "manifest.json").read_text())
    assert m2["target_shape"] == m1["target_shape"]
    # only rank 0 published: one artifact per stage, no rank scratch left behind
    assert sorted(p.name for p in (two / "smoke").iterdir() if not p.name.startswith(".")) == [
        "correct",
        "distill",
        "events.jsonl",
        "prune",
        "recipe.resolved.json",
    ]
    # the released weights (gathered from shards under fsdp) are the single-process ones, up to float order
    for stage in ("correct", "distill"):
        a = load_file(one / "smoke" / stage / "model.safetensors")
        b = load_file(two / "smoke" / stage / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert b[k].shape == a[k].shape
            assert (b[k] - a[k]).abs().max() < 1e-4, (stage, k)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent links)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        found += kids
        frontier = kids
    return found


@pytest.mark.slow
def test_sigkill_under_torchrun_resumes_to_the_same_weights(tmp_path):
    """Kill the whole torchrun job (both ranks, FSDP) once distill has a mid-stage
    checkpoint; the rerun resumes from it and releases the weights an
    uninterrupted two-process run releases."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, runs = tmp_path / "ref", tmp_path / "runs"
    args = [*FSDP, "stages.distill.max_tokens=32768"]  # 128 steps, a checkpoint every 4: time to kill it
    subprocess.run([*TORCHRUN, *_run_cmd(ref, *args)], check=True, env=env, capture_output=True, timeout=900)
    job = subprocess.Popen(
        [*TORCHRUN, *_run_cmd(runs, *args)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 900
    while not list((runs / "smoke" / ".work").glob("distill-*/checkpoint.pt")):
        assert job.poll() is None and time.time() < deadline, "the job ended before distill wrote a checkpoint"
        time.sleep(0.02)
    time.sleep(0.5)  # somewhere after the first checkpoint
    # torchrun starts its workers in sessions of their own: kill the launcher and every descendant
    for pid in _descendants(job.pid):
        os.kill(pid, signal.SIGKILL)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    time.sleep(0.5)
    assert not (runs / "smoke" / "distill").exists(), "the stage finished before the kill"
    proc = subprocess.run([*TORCHRUN, *_run_cmd(runs, *args)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distill (distill): resumed from step" in proc.stderr
    manifest = json.loads((runs / "smoke" / "distill" / "manifest.json").read_text())
    assert 0 < manifest["resumed_from_step"] < 128
    a = load_file(ref / "smoke" / "distill" / "model.safetensors")
    b = load_file(runs / "smoke" / "distill" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_must_split_over_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "3",
            "-m",
            "factory.cli",
            "run",
            str(SMOKE),
            "--only",
            "correct",
            "--runs-dir",
            str(tmp_path),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "batch_size 4 does not split over 3 processes" in proc.stderr
