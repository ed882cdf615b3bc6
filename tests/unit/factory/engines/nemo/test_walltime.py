"""Walltime-proof Slurm chains: the generated job.sbatch, run against a fake Slurm
(tests/unit/factory/engines/nemo/fake_slurm.py), saves and requeues itself when its
time limit nears, resumes from the checkpoint it left, and the stage chained after it
starts only when it has completed; a job that keeps hitting its limit stops after
nemo.slurm.max_requeues with one clear message; `factory status` shows job ids,
allocations, states and progress at every point.

The job body is a stand-in for NeMo (it counts steps; its "checkpoint" is the step
count) that speaks the real protocol of scripts/walltime.py: it stops when
stop-requested appears and writes progress.json; everything around it (run.sh,
job.sbatch, finalize) is what the factory generates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from factory.cli import main
from factory.engines.nemo import executor, launchers, status
from factory.engines.nemo.scripts import walltime
from factory.engines.nemo.settings import slurm_seconds
from factory.recipe import load_recipe
from foundation.errors import ConfigError
from tests.conftest import ROOT, write
from tests.unit.factory.engines.nemo import fake_slurm

RECIPE = """
name: chain
engine: nemo
engines: {again: native}
nemo: {gpus_per_node: 1, launcher: slurm, slurm: {signal_grace: 3, max_requeues: MAXQ, time: "00:01:00"}}
models: {teacher: {tiny: {num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4,
                          num_key_value_heads: 2, intermediate_size: 128}}}
datasets: {corpus: {path: corpus.txt, licence: CC0-1.0, doc_chars: 200}}
stages:
  correct: {kind: correct, model: teacher, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 128,
            eval_tokens: 64}
  distill: {kind: distill, student: correct, teacher: teacher, data: corpus, seq_len: 32, batch_size: 2,
            max_tokens: 128, eval_tokens: 64}
  again: {kind: correct, model: correct, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 64,
          eval_tokens: 64, device: cpu}
"""

# The job body: NeMo's import / run / export reduced to a step counter. `run` resumes from
# the step its last run saved, stops when the batch script asks (FAKE_IGNORE_STOP: on the
# first allocation it does not, like a step too long for the grace period) and saves.
BODY = """
import os, sys, time
from pathlib import Path
import yaml
import walltime

cmd, config = sys.argv[1], sys.argv[2]
spec = yaml.safe_load(open(config))
run_dir, job = Path(os.environ["RUN_DIR"]), Path(os.environ["JOB_DIR"])
total = int(os.environ["FAKE_TOTAL_STEPS"])
ckpt = run_dir / spec["nemo2"]["checkpoints"] / "step.txt"
log = open(job / "body.log", "a")
if cmd == "run":
    step = int(ckpt.read_text()) if ckpt.exists() else 0
    print(f"resume {step}", file=log, flush=True)
    ignore = os.environ.get("FAKE_IGNORE_STOP") == "1" and "SLURM_RESTART_COUNT" not in os.environ
    while step < total:
        time.sleep(0.05)
        step += 1
        walltime.write_progress(job, step, total)
        if walltime.stop_requested(job) and not ignore:
            break
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_text(str(step))
    walltime.write_progress(job, step, total, done=step >= total)
    print(f"saved {step}", file=log, flush=True)
elif cmd == "export":
    out = run_dir / spec["work"] / "hf"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text('{"steps": %s}' % ckpt.read_text())
"""


@pytest.fixture
def cluster_env(tmp_path, monkeypatch):
    env = fake_slurm.install(tmp_path / "bin", tmp_path / "slurm")
    env.update(PYTHONPATH=str(ROOT), NEMO_DIR=str(tmp_path / "nemo"), ALIGNER_DIR=str(tmp_path / "aligner"))
    env["FAKE_TOTAL_STEPS"] = "20"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def submit(tmp_path, max_requeues: int) -> Path:
    """The jobs of correct and distill rendered (`factory run --dry-run`) and submitted the
    way `factory run` submits them (launchers.start, distill chained after correct), to
    the fake sbatch. (The host-side preparation of sources and data is left out: the job
    body below reads neither.)"""
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"paragraph {i:02d} " * 20 for i in range(40)))
    recipe = load_recipe(write(tmp_path / "chain.yaml", RECIPE.replace("MAXQ", str(max_requeues))))
    executor.dry_run(recipe, tmp_path / "runs", [str(recipe.file)])
    run_dir = (tmp_path / "runs" / "chain").resolve()
    after: list[str] = []
    for stage in ("correct", "distill"):
        job = run_dir / ".nemo" / stage
        spec = yaml.safe_load((job / "config.yaml").read_text())
        after = [launchers.start(recipe.engine_settings["nemo"], job, run_dir, spec, after)]
    for stage in ("correct", "distill"):
        job = run_dir / ".nemo" / stage
        (job / "job.py").write_text(BODY)
        spec = yaml.safe_load((job / "config.yaml").read_text())
        for cmd in spec["steps"]["prepare"] + spec["steps"]["finish"]:  # NeMo's own scripts: stubs
            for arg in cmd:
                for var in ("$NEMO_DIR", "$ALIGNER_DIR"):
                    if arg.startswith(var + "/"):
                        stub = Path(tmp_path / var[1:].split("_")[0].lower() / arg[len(var) + 1 :])
                        stub.parent.mkdir(parents=True, exist_ok=True)
                        stub.write_text("")
    return run_dir


def status_json(run_dir: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["status", str(run_dir), "--json"]) == 0
    return {s["stage"]: s for s in json.loads(capsys.readouterr().out)["stages"]}


def body_log(run_dir: Path, stage: str) -> list[str]:
    return (run_dir / ".nemo" / stage / "body.log").read_text().split("\n")[:-1]


def progress_of(run_dir: Path, stage: str) -> int:
    return (walltime.read_progress(run_dir / ".nemo" / stage) or {}).get("step") or 0


def test_a_job_requeues_at_its_time_limit_and_resumes_until_the_stage_is_done(tmp_path, cluster_env, capsys):
    run_dir = submit(tmp_path, max_requeues=2)
    first = status_json(run_dir, capsys)
    assert (first["correct"]["state"], first["correct"]["jobs"], first["correct"]["source"]) == (
        "queued",
        ["1001"],
        "slurm",
    )
    assert (first["distill"]["state"], first["distill"]["jobs"]) == ("queued", ["1002"])
    assert (first["again"]["engine"], first["again"]["state"]) == ("native", "not started")
    sbatch = (run_dir / ".nemo" / "correct" / "job.sbatch").read_text()
    assert "#SBATCH --requeue" in sbatch and "#SBATCH --signal=B:USR1@3" in sbatch

    seen = []

    def on_event(event, job_id, job):
        seen.append((event, job_id, status_json(run_dir, capsys)))

    # the time limit of correct's first allocation comes after its 5th step; no other one hits it
    def signal_when(job_id, job):
        return job_id == "1001" and job["restarts"] == 0 and progress_of(run_dir, "correct") >= 5

    cluster = fake_slurm.Cluster(tmp_path / "slurm", cluster_env, signal_when)
    cluster.run(on_event)
    assert [(e, j) for e, j, _ in seen] == [
        ("start", "1001"),
        ("signal", "1001"),
        ("requeue", "1001"),
        ("start", "1001"),
        ("end", "1001"),
        ("start", "1002"),  # distill starts only once correct has completed, after its requeue
        ("end", "1002"),
    ]
    running, requeued, again, done = (snapshot for _, _, snapshot in seen[1:5])
    assert running["correct"]["state"] == "running" and running["distill"]["state"] == "queued"
    assert requeued["correct"]["state"] == "requeued" and requeued["distill"]["state"] == "queued"
    assert len(requeued["correct"]["allocations"]) == 1 and requeued["correct"]["allocations"][0]["end"] == "requeue"
    saved = int(body_log(run_dir, "correct")[1].split()[1])
    assert 5 <= saved < 20
    assert requeued["correct"]["progress"] == {"step": saved, "total": 20, "source": "progress.json"}
    assert again["correct"]["state"] == "running" and len(again["correct"]["allocations"]) == 2
    assert again["distill"]["state"] == "queued"
    assert done["correct"]["state"] == "completed"
    # the second allocation resumed from the checkpoint the first left, and skipped prepare
    assert body_log(run_dir, "correct") == ["resume 0", f"saved {saved}", f"resume {saved}", "saved 20"]
    rows = status.read_log(run_dir / ".nemo" / "correct")
    assert [r["event"] for r in rows] == [
        "submitted", "start", "walltime", "requeue", "start", "trained", "completed"
    ]  # fmt: skip
    assert [r["restart"] for r in rows if r["event"] == "start"] == [0, 1]
    final = status_json(run_dir, capsys)
    assert final["correct"]["state"] == final["distill"]["state"] == "completed"
    assert final["correct"]["progress"]["step"] == 20 and final["distill"]["allocations"][0]["end"] == "completed"
    assert json.loads((run_dir / "correct" / "manifest.json").read_text())["stage"] == "correct"
    assert not (run_dir / ".nemo" / "correct" / "stop-requested").exists()
    out = (run_dir / ".nemo" / "correct" / "slurm-1001.out").read_text()
    assert "requeueing job 1001 (1 of at most 2 requeues)" in out  # both allocations' output kept
    calls = [json.loads(c) for c in (tmp_path / "slurm" / "calls.log").read_text().splitlines()]
    assert [c for c in calls if c[0] == "scontrol"] == [["scontrol", "requeue", "1001"]]
    assert sum(c[0] == "srun" and c[-1] == "prepare" for c in calls) == 2  # once per job, not per allocation
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert re.match(r"stage\s+engine\s+state\s+jobs\s+progress", table[0])
    assert re.match(r"correct\s+nemo\s+completed\s+1001, 2 allocations\s+20/20 \(100%\)", table[1]), table


def test_max_requeues_stops_a_runaway_job_with_one_message(tmp_path, cluster_env, capsys):
    run_dir = submit(tmp_path, max_requeues=1)
    starts: dict[int, int] = {}

    def signal_when(job_id, job):  # every allocation of correct hits its limit 3 steps in
        step = progress_of(run_dir, "correct")
        starts.setdefault(job["restarts"], step)
        return job_id == "1001" and step >= starts[job["restarts"]] + 3

    fake_slurm.Cluster(tmp_path / "slurm", cluster_env, signal_when).run()
    log = body_log(run_dir, "correct")
    assert [x.split()[0] for x in log] == ["resume", "saved", "resume", "saved"]
    assert log[2] == f"resume {log[1].split()[1]}"  # the second allocation resumed, then hit the limit too
    out = (run_dir / ".nemo" / "correct" / "slurm-1001.out").read_text()
    assert (
        "[factory] correct: training stopped before its last step (exit status 0), and job 1001 was "
        "requeued 1 times already (nemo.slurm.max_requeues=1): stopping here." in " ".join(out.split())
    )
    s = status_json(run_dir, capsys)
    assert s["correct"]["state"] == "failed" and "training stopped before its last step" in s["correct"]["detail"]
    assert [a["end"] for a in s["correct"]["allocations"]] == ["requeue", "gave-up"]
    assert s["distill"]["state"] == "blocked"  # afterok on a failed job: Slurm never starts it
    assert not (run_dir / ".nemo" / "distill" / "body.log").exists()


def test_a_step_that_ignores_the_stop_is_requeued_before_the_kill(tmp_path, cluster_env, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_IGNORE_STOP", "1")
    monkeypatch.setenv("FAKE_TOTAL_STEPS", "80")  # four seconds: the first allocation never ends on its own
    run_dir = submit(tmp_path, max_requeues=2)

    def signal_when(job_id, job):
        return job_id == "1001" and job["restarts"] == 0 and progress_of(run_dir, "correct") >= 3

    cluster = fake_slurm.Cluster(tmp_path / "slurm", cluster_env, signal_when, kill_after=8.0)
    cluster.run()
    events = [(e, j) for e, j, _ in cluster.timeline]
    assert events[:3] == [("start", "1001"), ("signal", "1001"), ("requeue", "1001")]  # no TIMEOUT
    rows = status.read_log(run_dir / ".nemo" / "correct")
    assert [r["detail"] for r in rows if r["event"] == "requeue"] == [
        "the time limit is near and the step did not stop"
    ]
    assert status_json(run_dir, capsys)["correct"]["state"] == "completed"


def test_status_without_slurm_reads_the_run_dir(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "r"
    job = run_dir / ".nemo" / "distill"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(yaml.safe_dump({"nemo2": {"trainer": {"max_steps": 400}}, "steps": {}}))
    (run_dir / "recipe.resolved.json").write_text(json.dumps({"stages": {"prune": {}, "distill": {}}}))
    (run_dir / "prune").mkdir()
    (run_dir / "prune" / "manifest.json").write_text("{}")
    status.record(job, "submitted", "77")
    rows = '{"time": 1, "job_id": "77", "restart": 0, "event": "start", "detail": ""}\n'
    rows += '{"time": 2, "job_id": "77", "restart": 0, "event": "requeue", "detail": "x"}\n{"time": 3, "job_'
    with open(job / status.JOBS_LOG, "a") as f:
        f.write(rows)  # the last row is torn, as while the batch script writes it
    ckpt = job / "train" / "distill" / "checkpoints" / "distill--reduced_train_loss=2.1-step=149-last"
    ckpt.mkdir(parents=True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no squeue, no sacct
    s = status_json(run_dir, capsys)
    assert list(s) == ["prune", "distill"]
    assert (s["prune"]["engine"], s["prune"]["state"]) == ("native", "completed")
    assert (s["distill"]["state"], s["distill"]["source"], s["distill"]["jobs"]) == ("requeued", "run dir", ["77"])
    assert s["distill"]["progress"] == {"step": 149, "total": 400, "source": "checkpoints"}
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_slurm_time_limits_and_grace_are_checked(tmp_path):
    assert [slurm_seconds(t) for t in ("90", "90:30", "04:00:00", "3-00:00:00", "1-2", "1-02:30")] == [
        5400,
        5430,
        14400,
        259200,
        93600,
        95400,
    ]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("MAXQ", "2"))
    with pytest.raises(ConfigError, match=r"nemo\.slurm\.time: 'soon' is not a Slurm time limit"):
        load_recipe(recipe, ["nemo.slurm.time=soon"], check_files=False)
    with pytest.raises(ConfigError, match=r"nemo\.stages\.correct\.time: 2 s leaves no time before"):
        load_recipe(recipe, ["nemo.stages.correct.time=0:02"], check_files=False)
    with pytest.raises(ConfigError, match=r"nemo\.slurm\.max_requeues: must be zero or more"):
        load_recipe(recipe, ["nemo.slurm.max_requeues=-1"], check_files=False)


def test_sbatch_script_carries_the_settings(tmp_path):
    recipe = load_recipe(
        write(tmp_path / "r.yaml", RECIPE.replace("MAXQ", "5")),
        ["nemo.slurm.signal_grace=900", "nemo.slurm.time=3-00:00:00"],
        check_files=False,
    )
    settings = recipe.engine_settings["nemo"]
    spec = {"recipe": "chain", "stage": "correct", "image": "img", "resources": {"nodes": 2, "gpus_per_node": 8}}
    text = launchers.sbatch_script(spec, tmp_path / "job", tmp_path, settings.slurm, "3-00:00:00")
    assert "#SBATCH --signal=B:USR1@900" in text and "#SBATCH --open-mode=append" in text
    assert "\nMAX_REQUEUES=5\n" in text and "\nLIMIT_S=259200\n" in text and "\nGRACE=900\n" in text
