"""A small Slurm for tests: ``sbatch``, ``squeue``, ``sacct``, ``scontrol`` and ``srun``
as scripts on PATH that share one state file, and ``Cluster``, the scheduler, run by
the test itself.

It keeps the parts of Slurm's behaviour the walltime tests rely on:
- ``sbatch --dependency=afterok:A`` holds a job until A is COMPLETED; once A ends in
  any other state the dependent job stays PENDING for ever with reason
  DependencyNeverSatisfied (slurmctld's ``_test_job_dependency_common``); a job that
  is requeued is PENDING again, not finished, so its dependents keep waiting;
- ``#SBATCH --signal=B:USR1@N`` sends USR1 to the batch shell only (not to its steps);
  here the test says when the time limit is near (``signal_when``), and a job still
  running ``kill_after`` seconds later is killed and ends as TIMEOUT;
- ``scontrol requeue`` kills the running batch job (its whole process group) and puts
  it back to PENDING under the same id with ``SLURM_RESTART_COUNT`` one higher;
  ``sacct -D`` lists every allocation (REQUEUED for the ones that ended that way);
- ``srun`` drops its options (the container flags) and runs the command here.
Every call is appended to ``calls.log`` in the state dir."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[5]
COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "srun")
ACTIVE = ("PENDING", "RUNNING")


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the fake commands (and a ``python`` that is this interpreter) into ``bin_dir``;
    returns the environment that puts them first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        (bin_dir / name).write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
            "from tests.unit.factory.engines.nemo import fake_slurm\n"
            f"sys.exit(fake_slurm.command({name!r}, sys.argv[1:]))\n"
        )
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM": str(state_dir)}


@contextmanager
def state(state_dir: Path | None = None):
    """The shared state, locked for the duration of the block and saved after it."""
    root = Path(state_dir or os.environ["FAKE_SLURM"])
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = root / "state.json"
        data = json.loads(path.read_text()) if path.is_file() else {"next_id": 1001, "jobs": {}}
        yield data
        path.write_text(json.dumps(data, indent=1))


def command(name: str, args: list[str]) -> int:
    with open(Path(os.environ["FAKE_SLURM"]) / "calls.log", "a") as f:
        f.write(json.dumps([name, *args]) + "\n")
    return {"sbatch": _sbatch, "squeue": _squeue, "sacct": _sacct, "scontrol": _scontrol, "srun": _srun}[name](args)


def _sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    deps = [a.split("=", 1)[1] for a in args if a.startswith("--dependency=")]
    header = dict(m.groups() for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", script.read_text(), flags=re.M))
    with state() as st:
        job_id = str(st["next_id"])
        st["next_id"] += 1
        st["jobs"][job_id] = {
            "script": str(script),
            "after": [d for dep in deps for d in dep.removeprefix("afterok:").split(":")],
            "requeue_allowed": "requeue" in header,
            "output": header.get("output", "slurm-%j.out").replace("%j", job_id),
            "state": "PENDING",
            "reason": "None",
            "restarts": 0,
            "history": [],
            "requeue": False,
        }
    print(f"{job_id};fakecluster" if "--parsable" in args else f"Submitted batch job {job_id}")
    return 0


def _ids(args: list[str]) -> list[str]:
    return args[args.index("-j") + 1].split(",")


def _squeue(args: list[str]) -> int:
    assert args[args.index("-o") + 1] == "%i|%T|%r", args  # the one format factory status asks for
    with state() as st:
        for i in _ids(args):
            job = st["jobs"].get(i)
            if job and job["state"] in ACTIVE:
                print(f"{i}|{job['state']}|{job['reason']}")
    return 0


def _sacct(args: list[str]) -> int:
    assert "-D" in args and args[args.index("-o") + 1] == "JobID,State,ExitCode", args
    with state() as st:
        for i in _ids(args):
            job = st["jobs"].get(i)
            if job:
                ended = job["history"] + ([job["state"]] if job["state"] in ACTIVE else [])
                for s in ended:
                    print(f"{i}|{s}|{0 if s in ('COMPLETED', 'REQUEUED', 'PENDING', 'RUNNING') else 1}:0")
    return 0


def _scontrol(args: list[str]) -> int:
    assert args[0] == "requeue", args
    with state() as st:
        job = st["jobs"].get(args[1])
        if job is None or job["state"] != "RUNNING" or not job["requeue_allowed"]:
            print(f"scontrol: error: Requested operation is presently disabled for job {args[1]}", file=sys.stderr)
            return 1
        job["requeue"] = True
    return 0


def _srun(args: list[str]) -> int:
    while args and args[0].startswith("-"):
        args = args[1:]
    os.execvp(args[0], args)


class Cluster:
    """The scheduler: starts jobs whose dependencies are met, signals them when the test
    says their time limit is near, requeues, kills at the limit, records the end.
    ``on_event(event, job_id, job)`` is called after each change (outside the lock)."""

    def __init__(self, state_dir: Path, env: dict, signal_when, kill_after: float = 10.0):
        self.dir, self.env, self.signal_when, self.kill_after = state_dir, env, signal_when, kill_after
        self.procs: dict[str, subprocess.Popen] = {}
        self.signalled: dict[str, float] = {}
        self.timeline: list[tuple[str, str, str]] = []  # (event, job id, state)

    def run(self, on_event=lambda event, job_id, job: None, timeout: float = 180.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with state(self.dir) as st:
                events = self._tick(st["jobs"])
                busy = any(j["state"] == "RUNNING" or self._ready(st["jobs"], j) for j in st["jobs"].values())
            for event, job_id, job in events:
                self.timeline.append((event, job_id, job["state"]))
                on_event(event, job_id, job)
            if not busy and not events:
                return
            time.sleep(0.02)
        raise TimeoutError(f"the fake cluster did not settle: {self.timeline}")

    @staticmethod
    def _ready(jobs: dict, job: dict) -> bool:
        return job["state"] == "PENDING" and all(jobs[d]["state"] == "COMPLETED" for d in job["after"])

    def _tick(self, jobs: dict) -> list:
        events = []
        for job_id, job in jobs.items():
            if job["state"] == "RUNNING":
                event = self._watch(job_id, job)
                if event:
                    events.append((event, job_id, dict(job)))
            elif job["state"] == "PENDING":
                if any(jobs[d]["state"] not in ACTIVE + ("COMPLETED",) for d in job["after"]):
                    job["reason"] = "DependencyNeverSatisfied"
                elif self._ready(jobs, job):
                    self._start(job_id, job)
                    events.append(("start", job_id, dict(job)))
                elif job["after"]:
                    job["reason"] = "Dependency"
        return events

    def _start(self, job_id: str, job: dict) -> None:
        env = {**os.environ, **self.env, "SLURM_JOB_ID": job_id}
        if job["restarts"]:
            env["SLURM_RESTART_COUNT"] = str(job["restarts"])
        out = open(job["output"], "a")
        self.procs[job_id] = subprocess.Popen(
            ["bash", job["script"]], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        job.update(state="RUNNING", reason="None")
        self.signalled.pop(job_id, None)

    def _watch(self, job_id: str, job: dict) -> str | None:
        proc = self.procs[job_id]
        if job["requeue"]:
            self._kill(proc)
            job["history"].append("REQUEUED")
            job.update(state="PENDING", reason="BeginTime", requeue=False, restarts=job["restarts"] + 1)
            return "requeue"
        rc = proc.poll()
        if rc is not None:
            job["state"] = "COMPLETED" if rc == 0 else "FAILED"
            job["history"].append(job["state"])
            return "end"
        if job_id not in self.signalled and self.signal_when(job_id, job):
            os.kill(proc.pid, signal.SIGUSR1)  # B: the batch shell only
            self.signalled[job_id] = time.monotonic()
            return "signal"
        if job_id in self.signalled and time.monotonic() - self.signalled[job_id] > self.kill_after:
            self._kill(proc)
            job["state"] = "TIMEOUT"
            job["history"].append("TIMEOUT")
            return "end"
        return None

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
