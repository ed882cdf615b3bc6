"""How a rendered job starts: in its image on this machine (docker), on this
machine's own NeMo install (torchrun), or on a Slurm cluster (sbatch with
pyxis/enroot container flags). Every launcher mounts the run directory at
the same path inside the container, so the paths in a job mean the same
thing on both sides."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

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
    """One sbatch job: prepare and finish on one task, train on every GPU of every node."""
    res = spec["resources"]
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=factory-{spec['recipe']}-{spec['stage']}",
        f"#SBATCH --nodes={res['nodes']}",
        f"#SBATCH --ntasks-per-node={res['gpus_per_node']}",
        f"#SBATCH --gpus-per-node={res['gpus_per_node']}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={job_dir}/slurm-%j.out",
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
    run_sh = shlex.quote(str(job_dir / "run.sh"))
    lines += [
        "set -euo pipefail",
        f"srun --nodes=1 --ntasks=1 {container} bash {run_sh} prepare",
        f"srun {container} env DIST=python bash {run_sh} train",
        f"srun --nodes=1 --ntasks=1 {container} bash {run_sh} finish",
        "",
    ]
    return "\n".join(lines)


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
        note = "# submit after the jobs this one reads from (add --dependency=afterok:ID when chaining by hand)"
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
        return out.strip().split(";")[0]
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
