"""``factory status RUN_DIR``: where each stage of a run stands.

For a nemo stage: its Slurm job ids, every allocation of them (a job that
requeues itself at its time limit keeps its id and gets a new allocation),
its state, and its progress. The state comes from ``squeue`` and ``sacct``
when they are on PATH, else from what the run dir records: the submitting
side and the batch script append one row per event to the job dir's
``jobs.jsonl`` (submitted, start, walltime, requeue, trained, completed,
failed, gave-up). Progress is the job's ``progress.json`` (scripts/walltime.py),
or else the newest checkpoint's ``step=N``. A native stage's state comes from
the run dir: its artifact, or its rows in ``events.jsonl``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from factory.engines.nemo.scripts.walltime import read_progress
from foundation.errors import FactoryError

JOBS_LOG = "jobs.jsonl"
# our states: queued, running, requeued (pending again after a requeue), completed, failed,
# blocked (pending behind a job that failed: Slurm never starts it)
_LOG_STATE = {
    "submitted": "queued",
    "start": "running",
    "walltime": "running",
    "trained": "running",
    "requeue": "requeued",
    "completed": "completed",
    "failed": "failed",
    "gave-up": "failed",
}
_STEP = re.compile(r"step=(\d+)")


def record(job_dir: Path, event: str, job_id: str, detail: str = "") -> None:
    """Append one row to the job's ``jobs.jsonl`` (the batch script writes the same rows)."""
    row = {"time": int(time.time()), "job_id": job_id, "restart": None, "event": event, "detail": detail}
    with open(Path(job_dir) / JOBS_LOG, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a jsonl file; none when it is missing, and a torn line (mid-write) is skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def read_log(job_dir: Path) -> list[dict]:
    """The rows of a job's ``jobs.jsonl``."""
    return read_jsonl(Path(job_dir) / JOBS_LOG)


def _query(cmd: list[str]) -> list[list[str]] | None:
    """Rows of a Slurm query's ``|``-separated output; None when the command is not on PATH."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [line.strip().split("|") for line in done.stdout.splitlines() if line.strip()]


def slurm_view(ids: list[str]) -> dict[str, dict]:
    """Per job id what Slurm says: ``queue`` (state, reason) while squeue lists it and
    ``history`` (every allocation's state, oldest first) from sacct; {} without either."""
    if not ids:
        return {}
    view: dict[str, dict] = {i: {"queue": None, "history": []} for i in ids}
    joined = ",".join(ids)
    for row in _query(["sacct", "-X", "-n", "-P", "-D", "-j", joined, "-o", "JobID,State,ExitCode"]) or []:
        if row[0] in view and len(row) >= 2:
            view[row[0]]["history"].append(row[1].split(" ")[0])  # "CANCELLED by 0" -> CANCELLED
    for row in _query(["squeue", "-h", "-j", joined, "-o", "%i|%T|%r"]) or []:
        if row[0] in view and len(row) >= 2:
            view[row[0]]["queue"] = (row[1], row[2] if len(row) > 2 else "")
    return view


def _slurm_state(seen: dict, requeued: bool) -> str | None:
    """Our state from squeue / sacct, or None when neither knows the job."""
    if seen["queue"] is not None:
        state, reason = seen["queue"]
        if state == "PENDING":
            if "DependencyNeverSatisfied" in reason:
                return "blocked"
            return "requeued" if requeued or "REQUEUED" in seen["history"] else "queued"
        return "requeued" if state.startswith("REQUEUE") else "running"
    if seen["history"]:
        last = seen["history"][-1]
        if last in ("PENDING", "RUNNING", "REQUEUED"):
            return {"PENDING": "queued", "RUNNING": "running", "REQUEUED": "requeued"}[last]
        return "completed" if last == "COMPLETED" else "failed"
    return None


def allocations(rows: list[dict]) -> list[dict]:
    """Every allocation the log shows: job id, restart count, and how it ended so far."""
    out: list[dict] = []
    for row in rows:
        if row["event"] == "start":
            out.append({"job_id": row["job_id"], "restart": row["restart"], "start": row["time"], "end": None})
        elif out and row["event"] in ("requeue", "completed", "failed", "gave-up"):
            out[-1]["end"] = row["event"]
    return out


def progress(job_dir: Path, spec: dict) -> dict | None:
    """Steps done (and of how many), from the job's progress record or its newest checkpoint."""
    record_ = read_progress(job_dir)
    if record_ is not None:
        return {"step": record_.get("step"), "total": record_.get("total"), "source": "progress.json"}
    steps = [int(m.group(1)) for p in _checkpoints(job_dir) for m in [_STEP.search(p.name)] if m]
    if not steps:
        return None
    return {"step": max(steps), "total": _total_steps(spec), "source": "checkpoints"}


def _checkpoints(job_dir: Path) -> list[Path]:
    return [*job_dir.glob("train/*/checkpoints/*"), *job_dir.glob("aligner/checkpoints/*")]


def _total_steps(spec: dict) -> int | None:
    trainer = (spec.get("nemo2") or {}).get("trainer")
    if trainer:
        return trainer.get("max_steps")
    for arg in (spec.get("steps") or {}).get("train", []):
        m = re.fullmatch(r"trainer\.\w+\.max_steps=(-?\d+)", str(arg))
        if m and int(m.group(1)) > 0:
            return int(m.group(1))
    return None


def nemo_stage(run_dir: Path, stage: str, job_dir: Path, live: dict[str, dict]) -> dict:
    """A nemo stage's status: its jobs, allocations, state and progress."""
    rows = read_log(job_dir)
    ids = list(dict.fromkeys(r["job_id"] for r in rows if r.get("job_id")))
    spec = yaml.safe_load((job_dir / "config.yaml").read_text()) or {}
    current = ids[-1] if ids else None
    mine = [r for r in rows if r.get("job_id") == current]
    requeued = any(r["event"] == "requeue" for r in mine)
    state = _slurm_state(live[current], requeued) if current in live else None
    source = "slurm" if state is not None else "run dir"
    if state is None:
        state = _LOG_STATE.get(mine[-1]["event"], "queued") if mine else None
    if (run_dir / stage / "manifest.json").is_file() and state in (None, "running", "queued"):
        state, source = ("completed", "artifact") if state is None else (state, source)
    last = next((r for r in reversed(mine) if r["event"] in ("gave-up", "failed")), None)
    return {
        "stage": stage,
        "engine": "nemo",
        "state": state or "not submitted",
        "source": source,
        "jobs": ids,
        "allocations": allocations(rows),
        "slurm": {i: live[i] for i in ids if i in live},
        "progress": progress(job_dir, spec),
        "detail": last["detail"] if last else "",
    }


def native_stage(run_dir: Path, stage: str, events: list[dict]) -> dict:
    """A native stage's status from the run dir: its artifact, else its last event."""
    mine = [e for e in events if e.get("stage") == stage]
    if (run_dir / stage / "manifest.json").is_file():
        state = "completed"
    elif mine and mine[-1].get("event") == "start":
        state = "started"  # running now, or stopped without finishing: the pipeline reruns it
    else:
        state = "not started"
    return {"stage": stage, "engine": "native", "state": state, "source": "run dir", "jobs": [], "progress": None}


def _stages(run_dir: Path, events: list[dict]) -> list[str]:
    """The run's stages in the recipe's order (recipe.resolved.json, written by a run, or the
    plan a dry run wrote), then any others seen."""
    names: list[str] = []
    resolved, plan = run_dir / "recipe.resolved.json", run_dir / ".nemo" / "plan.json"
    if resolved.is_file():
        names += list((json.loads(resolved.read_text()).get("stages") or {}).keys())
    if plan.is_file():
        names += [p["stage"] for p in json.loads(plan.read_text()).get("stages", [])]
    names += [p.name for p in sorted((run_dir / ".nemo").glob("*")) if (p / "config.yaml").is_file()]
    names += [e["stage"] for e in events if e.get("stage")]
    return list(dict.fromkeys(names))


def run_status(run_dir: Path) -> list[dict]:
    """Every stage's status, in the recipe's order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FactoryError(f"{run_dir}: no such run directory")
    events = read_jsonl(run_dir / "events.jsonl")
    stages = _stages(run_dir, events)
    if not stages:
        raise FactoryError(f"{run_dir}: not a run directory (no recipe.resolved.json, events or nemo jobs)")
    job_dirs = {s: run_dir / ".nemo" / s for s in stages if (run_dir / ".nemo" / s / "config.yaml").is_file()}
    ids = [r["job_id"] for d in job_dirs.values() for r in read_log(d) if r.get("job_id")]
    live = slurm_view(list(dict.fromkeys(ids)))
    return [
        nemo_stage(run_dir, s, job_dirs[s], live) if s in job_dirs else native_stage(run_dir, s, events) for s in stages
    ]


def _fmt_progress(p: dict | None) -> str:
    if not p or p.get("step") is None:
        return "-"
    total = p.get("total")
    if total:
        return f"{p['step']}/{total} ({100 * p['step'] / total:.0f}%)"
    return f"step {p['step']}"


def _fmt_jobs(s: dict) -> str:
    if not s["jobs"]:
        return "-"
    n = len([a for a in s.get("allocations", []) if a["job_id"] == s["jobs"][-1]])
    older = f" (earlier: {', '.join(s['jobs'][:-1])})" if len(s["jobs"]) > 1 else ""
    return f"{s['jobs'][-1]}, {n} allocation{'s' if n != 1 else ''}{older}"


def format_status(stages: list[dict]) -> list[str]:
    """The table ``factory status`` prints."""
    header = ("stage", "engine", "state", "jobs", "progress")
    rows = [
        (
            s["stage"],
            s["engine"],
            s["state"] + (f": {s['detail']}" if s.get("detail") else ""),
            _fmt_jobs(s),
            _fmt_progress(s.get("progress")),
        )
        for s in stages
    ]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
