"""The nemo executor: a stage becomes a job on NVIDIA's stack.

The pipeline decides which stages run, with the same caching whichever
engine made an artifact; for each nemo stage it asks this executor to render
the job dir, prepare the job's inputs on this machine and launch it. Local launchers (docker, torchrun) wait for the job, which publishes
its artifact itself (``finalize``). Slurm jobs are queued and chained with
afterok dependencies: the pipeline stops before the first stage that needs an
unfinished job's output on this machine (a native stage, or data made by a
stage), and rerunning the same command after the jobs finish carries on.

``dry_run`` writes every nemo stage's job dir and the whole plan, and runs nothing."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from factory.engines.base import Outcome, SourceHashes, StageRun, describe_sources, handles, input_fields, manifest_head
from factory.engines.nemo import launchers, prepare, render, specs, status
from factory.engines.nemo.capabilities import JOBS
from factory.recipe import Recipe
from factory.shapes import stage_shapes
from foundation import artifacts
from foundation.errors import FactoryError


class NemoExecutor:
    """Renders, prepares and launches the NeMo job of a correct, prune, distill,
    sft or dpo stage (the other kinds run natively under every engine)."""

    engine = "nemo"
    verb = "nemo job"
    kinds = JOBS

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.settings = recipe.engine_settings["nemo"]
        self._shapes: dict | None = None

    @property
    def shapes(self) -> dict:
        """Every stage's output config.json as far as known offline (what the specs size jobs by)."""
        if self._shapes is None:
            self._shapes = stage_shapes(self.recipe.stages, self.recipe.models, self.recipe.base)
        return self._shapes

    def can_queue(self, stage: str) -> bool:
        """Data made by an earlier stage is exported on this machine, so it must exist first."""
        recipe = self.recipe
        return not any(k == "dataset" and n in recipe.stages for k, n in recipe.stage_inputs(stage).values())

    def render(self, stage: str, run_dir: Path, fingerprint) -> tuple[dict, Path]:
        """Write the stage's job dir under ``run_dir`` (absolute); returns its spec and the dir."""
        spec = specs.job_spec(self.recipe, stage, self.shapes)
        job_dir = run_dir / spec["work"]
        launch = launchers.launch_files(self.settings, spec, job_dir, run_dir, stage)
        render.write_job(spec, job_dir, manifest_template(self.recipe, stage, spec, fingerprint), launch)
        return spec, job_dir

    def run(self, job: StageRun) -> Outcome:
        stage, run_dir = job.stage, job.run_dir.resolve()
        spec, job_dir = self.render(stage, run_dir, job.fingerprint)
        prepare.materialize_sources(self.recipe, stage, run_dir, job.fingerprint)
        counts = prepare.export_data(self.recipe, spec, run_dir)
        if counts:
            job.say(f"[factory] {stage}: data exported ({counts['train']} train / {counts['valid']} held-out records)")
        after = list(job.after) + self.submit_tokenize(spec, run_dir, job)
        job.event("launch", f"{self.settings.launcher} {job_dir}")
        job_id = launchers.start(self.settings, job_dir, run_dir, spec, after)
        if job_id is not None:
            job.say(f"[factory] {stage}: submitted Slurm job {job_id} ({job_dir}/job.sbatch)")
            return Outcome(job_id=job_id)
        if artifacts.read_manifest(run_dir / stage) is None:
            raise FactoryError(
                f"{stage}: the job ended without an artifact at {run_dir / stage}; "
                f"see its output, or rerun one step by hand: bash {job_dir}/run.sh finish"
            )
        job.say(f"[factory] {stage}: done -> {run_dir / stage}")
        return Outcome()

    def submit_tokenize(self, spec: dict, run_dir: Path, job: StageRun) -> list[str]:
        """With ``nemo.tokenize_on: cluster``, submit the Slurm job that tokenizes the stage's
        text dataset; returns its id (what the stage's job waits for), or none."""
        if self.settings.tokenize_on != "cluster":
            return []
        made = prepare.cluster_tokenize_job(self.recipe, spec, run_dir)
        if made is None:
            return []
        plan, tok_dir = made
        cpus = self.settings.workers
        (tok_dir / "job.sbatch").write_text(
            launchers.tokenize_sbatch(plan, tok_dir, run_dir, self.settings.slurm, cpus)
        )
        job_id = launchers.start_tokenize(tok_dir)
        job.say(f"[factory] {spec['stage']}: submitted tokenize job {job_id} ({tok_dir}/job.sbatch)")
        return [job_id]


def manifest_template(recipe: Recipe, stage: str, spec: dict, fingerprint) -> dict:
    """The manifest the job's ``finalize`` completes: inputs made by earlier stages are
    named (their hashes are read when the job ends), sources are hashed now."""
    refs = {}
    for _, (kind, name) in recipe.stage_inputs(stage).items():
        refs[name] = {"artifact": name} if name in recipe.stages else {"hash": fingerprint(kind, name)}
    return {
        **manifest_head(recipe, stage),
        "input_fields": input_fields(recipe, stage),
        "sources": describe_sources(recipe, stage),
        "input_refs": refs,
        "tokens": spec.get("tokens"),
        "export": f"{spec['work']}/hf",
        "output": stage,
        "job": {"backend": spec["backend"], "image": spec["image"], "resources": spec["resources"]},
    }


def native_command(reproduce: list[str], stage: str) -> str:
    return shlex.join(["factory", "run", *reproduce, "--only", stage])


def dry_run(recipe: Recipe, runs_dir: Path, reproduce: list[str]) -> list[Path]:
    """Write every nemo stage's job dir and the whole plan (``.nemo/plan.json`` and
    ``launch-all.sh``); run nothing. ``reproduce``: the ``factory run`` arguments of
    this recipe, for the native stages' commands in the plan."""
    run_dir = (Path(runs_dir) / recipe.name).resolve()
    nemo, fingerprint = NemoExecutor(recipe), SourceHashes(recipe)
    plan, written = [], []
    for stage in recipe.stages:
        if handles(NemoExecutor, recipe, stage):
            spec, job_dir = nemo.render(stage, run_dir, fingerprint)
            plan.append(
                {
                    "stage": stage,
                    "engine": "nemo",
                    "backend": spec["backend"],
                    "job_dir": str(job_dir),
                    "launch": (job_dir / "launch.sh").read_text().splitlines()[-1][len("exec ") :],
                }
            )
            written.append(job_dir)
        else:
            plan.append({"stage": stage, "engine": "native", "command": native_command(reproduce, stage)})
    nemo_dir = run_dir / ".nemo"
    nemo_dir.mkdir(parents=True, exist_ok=True)
    (nemo_dir / "plan.json").write_text(json.dumps({"recipe": recipe.name, "stages": plan}, indent=2) + "\n")
    all_sh = nemo_dir / "launch-all.sh"
    all_sh.write_text(_launch_all(recipe, plan, recipe.engine_settings["nemo"].launcher))
    all_sh.chmod(0o755)
    return written + [nemo_dir / "plan.json", all_sh]


def _launch_all(recipe: Recipe, plan: list[dict], launcher: str) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"# Recipe {recipe.name}, stage by stage ({launcher} launcher). Sources and",
        "# data are prepared by `factory run ... --engine nemo` (without --dry-run), which also",
        "# skips cached stages; this script is the plan spelled out.",
        "set -euo pipefail",
    ]
    ids: dict[str, str] = {}
    for p in plan:
        lines.append(f"# {p['stage']} ({p['engine']})")
        if p["engine"] == "native":
            if launcher == "slurm" and ids:
                lines.append("# after the jobs above have finished:")
            lines.append(p["command"])
        elif launcher == "slurm":
            deps = [f"${{{ids[u]}}}" for u in recipe.upstream(p["stage"]) if u in ids]
            var = "job_" + p["stage"].replace("-", "_").replace(".", "_")
            dep = f" --dependency=afterok:{':'.join(deps)}" if deps else ""
            lines.append(f"{var}=$(sbatch --parsable{dep} {shlex.quote(p['job_dir'] + '/job.sbatch')})")
            lines.append(f"{var}=${{{var}%%;*}}")  # "id;cluster" -> id
            log = shlex.quote(p["job_dir"] + "/" + status.JOBS_LOG)
            lines.append(  # what `factory status` reads, as `factory run` records it
                f'printf \'{{"time": %s, "job_id": "%s", "restart": null, "event": "submitted", '
                f'"detail": ""}}\\n\' "$(date +%s)" "${var}" >> {log}'
            )
            ids[p["stage"]] = var
        else:
            lines.append(f"bash {shlex.quote(p['job_dir'] + '/launch.sh')}")
    return "\n".join(lines) + "\n"
