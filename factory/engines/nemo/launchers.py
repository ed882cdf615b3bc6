"""How a rendered job starts: in its image on this machine (docker), on this
machine's own NeMo install (torchrun), or on a Slurm cluster (sbatch with
pyxis/enroot container flags). Every launcher mounts the run directory at
the same path inside the container, so the paths in a job mean the same
thing on both sides."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from factory.engines.nemo import status
from factory.engines.nemo.settings import slurm_seconds
from foundation.errors import FactoryError

ENV_PASSED = ("HF_TOKEN", "HF_HOME", "WANDB_API_KEY")


def docker_command(spec: dict, job_dir: Path, run_dir: Path) -> list[str]:
    cmd = [
        "docker",
        "run",
        "--rm",
        "--gpus",
        "all",
        "--ipc=host",
        "--ulimit",
        "memlock=-1",
        "--ulimit",
        "stack=67108864",
        "-v",
        f"{run_dir}:{run_dir}",
        "-w",
        str(run_dir),
    ]
    for var in ENV_PASSED:
        cmd += ["-e", var]
    return cmd + [spec["image"], "bash", str(job_dir / "run.sh"), "all"]


def torchrun_command(spec: dict, job_dir: Path, run_dir: Path) -> list[str]:
    return ["bash", str(job_dir / "run.sh"), "all"]


def sbatch_script(spec: dict, job_dir: Path, run_dir: Path, slurm, time: str) -> str:
    """One sbatch job: prepare and finish on one task, train on every GPU of every node.
    It survives its time limit: ``slurm.signal_grace`` seconds before it, Slurm sends USR1
    to the batch script, which asks training to save and stop, then requeues the job
    (``scontrol requeue``: same id, so jobs chained after it with afterok keep waiting);
    the next allocation skips prepare and resumes from the last checkpoint, at most
    ``slurm.max_requeues`` times."""
    res = spec["resources"]
    grace = slurm.signal_grace
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=factory-{spec['recipe']}-{spec['stage']}",
        f"#SBATCH --nodes={res['nodes']}",
        f"#SBATCH --ntasks-per-node={res['gpus_per_node']}",
        f"#SBATCH --gpus-per-node={res['gpus_per_node']}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={job_dir}/slurm-%j.out",
        "#SBATCH --open-mode=append",  # a requeued job keeps its id: append, so every allocation's log stays
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{grace}",
    ]
    if slurm.account:
        lines.append(f"#SBATCH --account={slurm.account}")
    if slurm.partition:
        lines.append(f"#SBATCH --partition={slurm.partition}")
    lines += [f"#SBATCH {extra}" for extra in slurm.extra_sbatch]
    mounts = ",".join([f"{run_dir}:{run_dir}"] + list(slurm.mounts))
    container = (
        f"--container-image={shlex.quote(spec['image'])} --container-mounts={shlex.quote(mounts)} "
        f"--container-workdir={shlex.quote(str(run_dir))}"
    )
    head = {
        "STAGE": spec["stage"],
        "JOB_DIR": str(job_dir),
        "RUN_SH": str(job_dir / "run.sh"),
        "GRACE": str(grace),
        "MAX_REQUEUES": str(slurm.max_requeues),
        "LIMIT_S": str(slurm_seconds(time)),
    }
    lines += ["set -euo pipefail"] + [f"{k}={shlex.quote(v)}" for k, v in head.items()]
    lines += [f"CONTAINER=({container})", WALLTIME_FUNCTIONS, WALLTIME_MAIN]
    return "\n".join(lines)


NOTE_FUNCTION = r"""note() {  # one row of jobs.jsonl: event [detail]
  printf '{"time": %s, "job_id": "%s", "restart": %s, "event": "%s", "detail": "%s"}\n' \
    "$(date +%s)" "${SLURM_JOB_ID:-}" "$restarts" "$1" "${2:-}" >> "$JOB_DIR/jobs.jsonl"
}
"""

# The batch script's steps. Each srun runs in the background so that USR1 is handled at
# once (bash runs a trap only after a foreground command ends); every event goes to
# $JOB_DIR/jobs.jsonl, the run dir's record of this job that `factory status` reads.
WALLTIME_FUNCTIONS = (
    r"""
started=$(date +%s)
deadline=${SLURM_JOB_END_TIME:-$((started + LIMIT_S))}
restarts=${SLURM_RESTART_COUNT:-0}
walltime=0 step_pid= watchdog=

"""
    + NOTE_FUNCTION
    + r"""
run_step() {  # one srun step in the background; returns its exit status
  "$@" &
  step_pid=$!
  local rc
  while :; do
    rc=0
    wait "$step_pid" || rc=$?
    # above 128 with the step still alive: a trapped signal interrupted wait
    if [ "$rc" -gt 128 ] && kill -0 "$step_pid" 2>/dev/null; then continue; fi
    break
  done
  step_pid=
  return "$rc"
}

requeue() {  # why: training stopped before its end; requeue, or stop after MAX_REQUEUES
  if [ -n "$watchdog" ] && [ "$BASHPID" = "$$" ]; then kill "$watchdog" 2>/dev/null || true; fi
  if [ "$restarts" -ge "$MAX_REQUEUES" ]; then
    note gave-up "$1"
    echo "[factory] $STAGE: $1, and job ${SLURM_JOB_ID:-} was requeued $restarts times already" \
      "(nemo.slurm.max_requeues=$MAX_REQUEUES): stopping here. The last checkpoint is kept; raise" \
      "nemo.slurm.max_requeues or the stage's time limit and run the recipe again to resume from it." >&2
    exit 3
  fi
  note requeue "$1"
  echo "[factory] $STAGE: $1; requeueing job ${SLURM_JOB_ID:-} ($((restarts + 1)) of at most" \
    "$MAX_REQUEUES requeues): it resumes from its last checkpoint" >&2
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    note failed "scontrol requeue refused"
    echo "[factory] $STAGE: this cluster refused to requeue job ${SLURM_JOB_ID:-}: its last checkpoint" \
      "is kept; run the recipe again to resume from it" >&2
    exit 4
  fi
  exit 0
}

on_walltime() {  # USR1 from Slurm, GRACE seconds before the time limit
  walltime=1
  note walltime
  touch "$JOB_DIR/stop-requested"  # training saves and stops at the end of its next step
  if [ "$restarts" -lt "$MAX_REQUEUES" ] && [ -z "$watchdog" ]; then
    # a step that does not stop in time is requeued anyway (from its last periodic checkpoint)
    (sleep $((GRACE * 9 / 10)); requeue "the time limit is near and the step did not stop") &
    watchdog=$!
  fi
}

finish_up() {
  rm -f "$JOB_DIR/stop-requested"
  if [ -n "$watchdog" ]; then kill "$watchdog" 2>/dev/null || true; fi
}

max_time() {  # what is left of this allocation for NeMo-Aligner's own timer, as DD:HH:MM:SS
  local s=$((deadline - $(date +%s) - 2 * GRACE))
  [ "$s" -ge 60 ] || s=60
  printf '%02d:%02d:%02d:%02d' $((s / 86400)) $((s % 86400 / 3600)) $((s % 3600 / 60)) $((s % 60))
}
"""
)

WALLTIME_MAIN = r"""trap on_walltime USR1
trap finish_up EXIT
rm -f "$JOB_DIR/stop-requested"
note start
if [ ! -e "$JOB_DIR/.prepared-${SLURM_JOB_ID:-0}" ]; then  # a requeued job prepared already
  run_step srun --nodes=1 --ntasks=1 "${CONTAINER[@]}" bash "$RUN_SH" prepare
  touch "$JOB_DIR/.prepared-${SLURM_JOB_ID:-0}"
fi
[ "$walltime" -eq 0 ] || requeue "the time limit came during prepare"
rc=0
FACTORY_MAX_TIME=$(max_time)
export FACTORY_MAX_TIME  # srun passes the environment on
run_step srun "${CONTAINER[@]}" env DIST=python bash "$RUN_SH" train || rc=$?
if [ "$rc" -eq 0 ] && bash "$RUN_SH" trained; then
  note trained
elif [ "$rc" -eq 0 ] || [ "$walltime" -eq 1 ]; then
  requeue "training stopped before its last step (exit status $rc)"
else
  note failed "train exit status $rc"
  exit "$rc"
fi
rc=0
run_step srun --nodes=1 --ntasks=1 "${CONTAINER[@]}" bash "$RUN_SH" finish || rc=$?
if [ "$rc" -ne 0 ]; then
  note failed "finish exit status $rc"
  exit "$rc"
fi
note completed
"""


def tokenize_sbatch(plan: dict, job_dir: Path, run_dir: Path, slurm, cpus: int) -> str:
    """The sbatch job that tokenizes a stage's text dataset (``nemo.tokenize_on: cluster``):
    one task with ``cpus`` CPUs and no GPU, on ``slurm.cpu_partition`` (else the partition
    of every job) for at most ``slurm.tokenize_time``, running ``prepare``'s entry point in
    the image. Besides the run dir it mounts the recipe's dir (read-only), where local data
    files lie, and ``slurm.mounts``. Its start and end go to its ``jobs.jsonl``. A job killed
    at its limit leaves its finished shards: running the recipe again resumes from them."""
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=factory-{plan['recipe']}-{plan['stage']}-tokenize",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --time={slurm.tokenize_time}",
        f"#SBATCH --output={job_dir}/slurm-%j.out",
    ]
    if slurm.account:
        lines.append(f"#SBATCH --account={slurm.account}")
    if slurm.cpu_partition or slurm.partition:
        lines.append(f"#SBATCH --partition={slurm.cpu_partition or slurm.partition}")
    mounts = ",".join([f"{run_dir}:{run_dir}", f"{plan['base']}:{plan['base']}:ro", *slurm.mounts])
    step = [
        "srun",
        "--ntasks=1",
        f"--container-image={plan['image']}",
        f"--container-mounts={mounts}",
        f"--container-workdir={run_dir}",
        "python",
        "-m",
        "factory.engines.nemo.prepare",
        "tokenize",
        str(job_dir / "config.yaml"),
    ]
    lines += [
        "set -uo pipefail",
        f"JOB_DIR={shlex.quote(str(job_dir))}",
        "restarts=${SLURM_RESTART_COUNT:-0}",
        NOTE_FUNCTION,
        "note start",
        f"{shlex.join(step)}",
        "rc=$?",
        'if [ "$rc" -ne 0 ]; then note failed "tokenize exit status $rc"; exit "$rc"; fi',
        "note completed",
    ]
    return "\n".join(lines) + "\n"


def start_tokenize(job_dir: Path) -> str:
    """Submit a tokenize job (it depends on nothing: its data is on disk); returns its id."""
    job_id = _call(sbatch_command(job_dir), capture=True).strip().split(";")[0]
    status.record(job_dir, "submitted", job_id)
    return job_id


def sbatch_command(job_dir: Path, after: list[str] = ()) -> list[str]:
    cmd = ["sbatch", "--parsable"]
    if after:
        cmd.append(f"--dependency=afterok:{':'.join(after)}")
    return cmd + [str(job_dir / "job.sbatch")]


def launch_files(settings, spec: dict, job_dir: Path, run_dir: Path, stage: str) -> dict[str, str]:
    """launch.sh (and job.sbatch for Slurm) for the chosen launcher."""
    launcher = settings.launcher
    files = {}
    if launcher == "slurm":
        files["job.sbatch"] = sbatch_script(spec, job_dir, run_dir, settings.slurm, settings.resources(stage).time)
        cmd = sbatch_command(job_dir)
        note = (
            "# submit after the jobs this one reads from (add --dependency=afterok:ID when chaining by hand);\n"
            "# the job requeues itself at its time limit, so afterok waits for the stage, not one allocation"
        )
    elif launcher == "docker":
        cmd = docker_command(spec, job_dir, run_dir)
        note = f"# one node, in the image {spec['image']}"
    else:
        cmd = torchrun_command(spec, job_dir, run_dir)
        note = "# one node, on this machine's NeMo install (NEMO_DIR / ALIGNER_DIR point at its sources)"
    files["launch.sh"] = f"#!/usr/bin/env bash\n{note}\nexec {shlex.join(cmd)}\n"
    return files


def start(settings, job_dir: Path, run_dir: Path, spec: dict, after: list[str] = ()) -> str | None:
    """Start a job: local launchers wait for it (returns None); Slurm returns the job id."""
    if settings.launcher == "slurm":
        out = _call(sbatch_command(job_dir, after), capture=True)
        job_id = out.strip().split(";")[0]
        status.record(job_dir, "submitted", job_id, f"after {','.join(after)}" if after else "")
        return job_id
    cmd = (
        docker_command(spec, job_dir, run_dir)
        if settings.launcher == "docker"
        else torchrun_command(spec, job_dir, run_dir)
    )
    _call(cmd)
    return None


def _call(cmd: list[str], capture: bool = False) -> str:
    try:
        done = subprocess.run(cmd, check=False, text=True, capture_output=capture)
    except FileNotFoundError:
        raise FactoryError(
            f"cannot launch: {cmd[0]!r} is not installed on this machine "
            "(choose another launcher with --launcher or nemo.launcher=...)"
        ) from None
    if done.returncode != 0:
        detail = (done.stderr or "").strip().splitlines()[-1:] if capture else []
        raise FactoryError(
            f"{shlex.join(cmd[:3])} ... failed with exit status {done.returncode}"
            + (f": {detail[0]}" if detail else "; see the job's output above")
        )
    return done.stdout or ""
