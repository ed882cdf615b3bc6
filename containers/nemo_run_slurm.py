"""Submit a rendered nemo-engine job with NeMo-Run's Slurm executor instead of sbatch.

    factory run RECIPE --dry-run                     # renders runs/<recipe>/.nemo/<stage>/
    python containers/nemo_run_slurm.py runs/<recipe>/.nemo/<stage> --account A --partition P \\
        [--ssh user@login-host]                      # from a laptop: through an SSH tunnel

Three tasks in sequence, like the generated job.sbatch: prepare and finish on one task,
train on every GPU of every node (run.sh train with DIST=python under srun). Needs nemo_run
(pip install nemo_run, or the NeMo environment of scripts/nemo-env.sh).

These three jobs are not requeued at their time limit: a stage that needs more than one
allocation is submitted with the generated job.sbatch (`factory run --launcher slurm`),
which saves, requeues itself and resumes (docs/engines.md, "Long jobs and walltime"). A
train task cut off here resumes from its last periodic checkpoint when submitted again."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job_dir", type=Path)
    ap.add_argument("--account", required=True)
    ap.add_argument("--partition", required=True)
    ap.add_argument("--time", default="04:00:00")
    ap.add_argument("--ssh", help="user@host of the cluster's login node (default: submit from here)")
    args = ap.parse_args()

    import nemo_run as run

    job_dir = args.job_dir.resolve()
    run_dir = job_dir.parent.parent
    spec = yaml.safe_load((job_dir / "config.yaml").read_text())
    res = spec["resources"]
    if args.ssh:
        user, host = args.ssh.split("@", 1)
        tunnel = run.SSHTunnel(host=host, user=user, job_dir=str(run_dir / ".nemo-run"))
    else:
        tunnel = run.LocalTunnel(job_dir=str(run_dir / ".nemo-run"))

    def executor(nodes: int, tasks: int, env: dict | None = None):
        return run.SlurmExecutor(
            account=args.account,
            partition=args.partition,
            time=args.time,
            nodes=nodes,
            ntasks_per_node=tasks,
            gpus_per_node=res["gpus_per_node"],
            container_image=spec["image"],
            container_mounts=[f"{run_dir}:{run_dir}"],
            env_vars=env or {},
            tunnel=tunnel,
        )

    script = str(job_dir / "run.sh")
    with run.Experiment(f"factory-{spec['recipe']}-{spec['stage']}") as exp:
        exp.add(run.Script(path=script, args=["prepare"]), executor=executor(1, 1), name="prepare")
        exp.add(
            run.Script(path=script, args=["train"]),
            executor=executor(res["nodes"], res["gpus_per_node"], {"DIST": "python"}),
            name="train",
        )
        exp.add(run.Script(path=script, args=["finish"]), executor=executor(1, 1), name="finish")
        exp.run(sequential=True)


if __name__ == "__main__":
    main()
