"""The native executor: a stage runs in this process with its kind's own code
(``factory.stages``), and under torchrun in every rank of the process group.

Rank 0 prepares the work dir and fetches the sources; every rank runs the
stage; the pipeline then writes the manifest and publishes rank 0's output."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from factory.engines.base import Outcome, StageRun, describe_sources
from factory.recipe import Recipe
from factory.sources import models as model_sources
from factory.sources.produced import dataset_from_artifact
from factory.stages.base import StageContext, stage_kinds
from factory.training import dist
from foundation import host
from foundation.device import matmul_precision


class NativeExecutor:
    """Runs any stage kind in-process, with PyTorch and transformers."""

    engine = "native"
    verb = "running"
    kinds = None  # every stage kind

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def can_queue(self, stage: str) -> bool:
        return False  # it runs here and now, so its inputs must exist

    def run(self, job: StageRun) -> Outcome:
        recipe, stage = self.recipe, job.stage
        cfg = recipe.stages[stage]
        main = dist.is_main()
        if main:
            out = fresh_dirs(job.run_dir, stage, job.work_dir)
            models, datasets = resolve_inputs(recipe, stage, job.run_dir)  # one process fetches and converts sources
        dist.barrier()
        if not main:  # other ranks compute alongside rank 0 but publish nothing
            out = Path(tempfile.mkdtemp(prefix=f"factory-{stage}-rank{dist.world()[0]}-"))
            models, datasets = resolve_inputs(recipe, stage, job.run_dir)  # from the cache rank 0 filled
        fields = recipe.stage_inputs(stage)
        ctx = StageContext(
            name=stage,
            config=cfg,
            seed=recipe.seed,
            base=recipe.base,
            models=models,
            datasets=datasets,
            out_dir=out,
            work_dir=job.work_dir,
            progress=job.progress,
            cache_dir=job.run_dir / ".cache" / stage,
            input_hashes={f: job.inputs[n] for f, (_, n) in fields.items()},
        )
        job.event("start", "")
        machine = host.describe() if main else None  # probed once per process, outside the stage's wall time
        t0 = time.perf_counter()
        # every stage kind that has the knob gets it applied here, around the whole stage
        with matmul_precision(getattr(cfg, "matmul_precision", "highest")):
            result = stage_kinds()[cfg.kind].run(ctx)
        wall = time.perf_counter() - t0
        # Every rank finishes the stage body (which may still read the shared work
        # dir, e.g. its metrics log) before rank 0 publishes and removes that dir.
        dist.barrier()
        body = {
            "sources": describe_sources(recipe, stage),
            "tokens": result.tokens,
            "wall_s": round(wall, 3),
            "host": machine,
            "metrics": result.metrics,
            **result.extra,
        }
        return Outcome(out_dir=out, body=body, wall_s=wall)


def fresh_dirs(run_dir: Path, stage: str, work: Path) -> Path:
    """Keep ``work`` (a rerun with the same inputs resumes from it), drop the stage's
    work dirs for other inputs, and return an empty output dir inside ``work``.

    Only this stage's dirs go: ``STAGE-<16 hex>`` exactly, so cleaning ``dpo``
    never touches ``dpo-b``'s checkpoint."""
    own = re.compile(re.escape(stage) + r"-[0-9a-f]{16}")
    for stale in (run_dir / ".work").glob(f"{stage}-*"):
        if stale != work and own.fullmatch(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    return out


def resolve_inputs(recipe: Recipe, stage: str, run_dir: Path) -> tuple[dict, dict]:
    """Field -> local model dir (sources fetched and converted on first use) and field -> dataset spec."""
    models, datasets = {}, {}
    for fname, (rkind, name) in recipe.stage_inputs(stage).items():
        if rkind == "model" and name in recipe.stages:
            models[fname] = run_dir / name
        elif rkind == "model":
            models[fname] = model_sources.materialize(recipe.models[name], recipe.base)
        elif name in recipe.stages:  # a dataset made by an earlier stage (e.g. verifier-built pairs)
            datasets[fname] = dataset_from_artifact(run_dir / name, f"stages.{stage}.{fname}")
        else:
            datasets[fname] = recipe.datasets[name]
    return models, datasets
