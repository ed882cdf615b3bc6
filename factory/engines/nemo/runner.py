"""Run a recipe whose stages (some or all) use the nemo engine.

Stages go in pipeline order with the native pipeline's caching: a stage whose
artifact matches its config and inputs is skipped, whichever engine made it.
Native stages run in-process (factory.pipeline); nemo stages are rendered into
job dirs, their inputs prepared on this machine, and launched. Local
launchers wait for each job; Slurm jobs are chained with afterok dependencies
and the submission stops before the first stage that needs an unfinished
job's output on this machine (a native stage, or data made by a stage):
rerunning the same command after the jobs finish carries on from there."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from foundation import artifacts
from foundation.configs import to_dict
from factory.engines.nemo import launchers, prepare, render, specs
from factory.engines.nemo.capabilities import NATIVE_ANYWHERE, stage_shapes
from foundation.errors import ArtifactError, FactoryError
from factory.pipeline import Pipeline
from factory.recipe import Recipe
from factory.sources import datasets as ds_sources
from factory.sources import models as model_sources


def is_nemo(recipe: Recipe, stage: str) -> bool:
    return recipe.engine_of(stage) == "nemo" and recipe.stages[stage].kind not in NATIVE_ANYWHERE


def uses_nemo(recipe: Recipe) -> bool:
    return any(is_nemo(recipe, s) for s in recipe.stages)


class Fingerprints:
    """Content hashes of sources, computed once per run (what the native pipeline records)."""

    def __init__(self, recipe: Recipe):
        self.recipe, self.done = recipe, {}

    def __call__(self, kind: str, name: str) -> str:
        if (kind, name) not in self.done:
            r = self.recipe
            self.done[(kind, name)] = (model_sources.fingerprint(r.models[name], r.base) if kind == "model"
                                       else ds_sources.fingerprint(r.datasets[name], r.base))
        return self.done[(kind, name)]


def manifest_template(recipe: Recipe, stage: str, spec: dict, fingerprint) -> dict:
    cfg = recipe.stages[stage]
    refs, sources = {}, {}
    for field, (kind, name) in recipe.stage_inputs(stage).items():
        if name in recipe.stages:
            refs[name], sources[name] = {"artifact": name}, f"stage {name}"
        else:
            refs[name] = {"hash": fingerprint(kind, name)}
            sources[name] = (recipe.models[name].describe() if kind == "model"
                             else f"dataset ({recipe.datasets[name].licence_of()})")
    return {"kind": cfg.kind, "stage": stage, "recipe": recipe.name, "recipe_file": str(recipe.file),
            "engine": "nemo", "seed": recipe.seed, "config": to_dict(cfg), "config_hash": recipe.config_hash(stage),
            "input_fields": {f: n for f, (_, n) in recipe.stage_inputs(stage).items()}, "sources": sources,
            "input_refs": refs, "tokens": spec.get("tokens"), "export": f"{spec['work']}/hf", "output": stage,
            "job": {"backend": spec["backend"], "image": spec["image"], "resources": spec["resources"]}}


def render_stage(recipe: Recipe, stage: str, run_dir: Path, shapes: dict, fingerprint) -> tuple[dict, Path]:
    settings = recipe.engine_settings["nemo"]
    spec = specs.job_spec(recipe, stage, shapes)
    job_dir = run_dir / spec["work"]
    launch = launchers.launch_files(settings, spec, job_dir, run_dir, stage)
    render.write_job(spec, job_dir, manifest_template(recipe, stage, spec, fingerprint), launch)
    return spec, job_dir


def native_command(reproduce: list[str], stage: str) -> str:
    return shlex.join(["factory", "run", *reproduce, "--only", stage])


def dry_run(recipe: Recipe, runs_dir: Path, reproduce: list[str]) -> list[Path]:
    """Write every nemo stage's job dir and the whole plan; run nothing."""
    run_dir = (Path(runs_dir) / recipe.name).resolve()
    shapes = stage_shapes(recipe.stages, recipe.models, recipe.base)
    fingerprint = Fingerprints(recipe)
    plan, written = [], []
    for stage in recipe.stages:
        if is_nemo(recipe, stage):
            spec, job_dir = render_stage(recipe, stage, run_dir, shapes, fingerprint)
            plan.append({"stage": stage, "engine": "nemo", "backend": spec["backend"], "job_dir": str(job_dir),
                         "launch": (job_dir / "launch.sh").read_text().splitlines()[-1][len("exec "):]})
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
    lines = ["#!/usr/bin/env bash", f"# Recipe {recipe.name}, stage by stage ({launcher} launcher). Sources and",
             "# data are prepared by `factory run ... --engine nemo` (without --dry-run), which also",
             "# skips cached stages; this script is the plan spelled out.", "set -euo pipefail"]
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
            ids[p["stage"]] = var
        else:
            lines.append(f"bash {shlex.quote(p['job_dir'] + '/launch.sh')}")
    return "\n".join(lines) + "\n"


def run(recipe: Recipe, runs_dir: Path, reproduce: list[str], force: tuple[str, ...] = (),
        only: str | None = None, progress: bool = True) -> int:
    pipe = Pipeline(recipe, runs_dir, progress=progress)
    run_dir = pipe.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.resolved.json").write_text(json.dumps(recipe.raw, indent=2) + "\n")
    pipe._check_names(force, only)
    settings = recipe.engine_settings["nemo"]
    shapes = stage_shapes(recipe.stages, recipe.models, recipe.base)
    fingerprint = Fingerprints(recipe)
    submitted: dict[str, str] = {}
    for stage in recipe.stages:
        if only is not None and stage != only:
            continue
        d = pipe.decide(stage, pending=set(submitted), force=force)
        if d.action == "corrupted":
            raise ArtifactError(f"{d.reason}: rerun with --force {stage} to rebuild it")
        if d.action == "cached":
            _say(f"[factory] {stage}: cached ({d.reason})")
            continue
        waiting = [u for u in recipe.upstream(stage) if u in submitted]
        if waiting and (not is_nemo(recipe, stage) or _reads_stage_data(recipe, stage)):
            _say(f"[factory] {stage}: waits for Slurm jobs {', '.join(submitted[u] for u in waiting)} "
                 f"({', '.join(waiting)}); rerun this command when they have finished")
            break
        if not is_nemo(recipe, stage):
            _say(f"[factory] {stage}: native ({d.reason})")
            pipe.run(force=force, only=stage)
            continue
        _say(f"[factory] {stage}: nemo job ({d.reason})")
        spec, job_dir = render_stage(recipe, stage, run_dir, shapes, fingerprint)
        prepare.materialize_sources(recipe, stage, run_dir, fingerprint)
        counts = prepare.export_data(recipe, spec, run_dir)
        if counts:
            _say(f"[factory] {stage}: data exported ({counts['train']} train / {counts['valid']} held-out records)")
        _event(run_dir, stage, "launch", f"{settings.launcher} {job_dir}")
        job_id = launchers.start(settings, job_dir, run_dir, spec, [submitted[u] for u in waiting])
        if job_id is not None:
            submitted[stage] = job_id
            _say(f"[factory] {stage}: submitted Slurm job {job_id} ({job_dir}/job.sbatch)")
        elif artifacts.read_manifest(run_dir / stage) is None:
            raise FactoryError(f"{stage}: the job ended without an artifact at {run_dir / stage}; "
                               f"see its output, or rerun one step by hand: bash {job_dir}/run.sh finish")
        else:
            _say(f"[factory] {stage}: done -> {run_dir / stage}")
    return 0


def _reads_stage_data(recipe: Recipe, stage: str) -> bool:
    """Data made by an earlier stage is exported on this machine, so it must exist first."""
    return any(k == "dataset" and n in recipe.stages for k, n in recipe.stage_inputs(stage).values())


def _event(run_dir: Path, stage: str, event: str, detail: str) -> None:
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "event": event, "detail": detail}
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _say(message: str) -> None:
    print(message, file=sys.stderr)
