"""The contract between the pipeline and the executors that run its stages.

``factory.pipeline.Pipeline`` decides which stages run (caching, locking,
events, manifests); an executor decides how one stage runs: in this process
(``factory.engines.native``) or as a job on another stack
(``factory.engines.nemo.executor``). The pipeline hands an executor a
``StageRun`` and gets an ``Outcome`` back. This module also holds the manifest
fields that every artifact records about the stage that made it, whichever
executor made it, so the pipeline and a job finishing on a cluster write the
same ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from factory.recipe import Recipe
from factory.sources import datasets as ds_sources
from factory.sources import models as model_sources
from foundation.configs import to_dict


@dataclass
class StageRun:
    """One stage the pipeline decided to run, as it hands it to an executor."""

    stage: str
    run_dir: Path  # the recipe's run directory (artifacts are run_dir / <stage>)
    inputs: dict[str, str] | None  # ref name -> content hash; None while an upstream job is still queued
    work_dir: Path | None  # scratch space for these inputs; it survives a crash, so a rerun resumes
    fingerprint: Callable[[str, str], str]  # (ref kind, source name) -> its content hash, once per run
    event: Callable[[str, str], None]  # (event, detail) -> a row of the run's events.jsonl
    say: Callable[[str], None]  # one line of progress for the person running the recipe
    after: list[str] = field(default_factory=list)  # ids of queued jobs this stage must wait for
    progress: bool = True  # progress bars


@dataclass
class Outcome:
    """What running a stage left behind.

    ``out_dir``: a finished artifact without its manifest, which the pipeline
    writes (its own fields plus ``body``) before publishing the directory.
    ``job_id``: a queued job (Slurm), whose artifact appears when it finishes.
    Neither: the executor's job published the artifact itself."""

    out_dir: Path | None = None
    body: dict = field(default_factory=dict)  # manifest fields only the run knows (tokens, metrics, ...)
    wall_s: float = 0.0
    job_id: str | None = None


class Executor(Protocol):
    """Where and how a stage runs. One instance serves every stage of one recipe
    that the recipe assigns to its engine (see ``factory.executors``)."""

    engine: str  # the recipe's name for it (``engine:`` / ``engines:``)
    verb: str  # how the pipeline announces a stage it starts here ("running", "nemo job")
    kinds: tuple[str, ...] | None  # stage kinds it runs (None: all); the native executor runs the others

    def __init__(self, recipe: Recipe) -> None: ...

    def can_queue(self, stage: str) -> bool:
        """Whether ``stage`` may start while upstream jobs are still queued (chained after them)."""

    def run(self, job: StageRun) -> Outcome:
        """Run (or start) the stage."""


def handles(executor: type, recipe: Recipe, stage: str) -> bool:
    """Whether ``executor`` (a class) runs ``stage``: the recipe gives the stage to its
    engine, and it runs stages of that kind."""
    kinds = executor.kinds
    return recipe.engine_of(stage) == executor.engine and (kinds is None or recipe.stages[stage].kind in kinds)


class SourceHashes:
    """Content hashes of a recipe's sources (models and datasets), each computed
    once: they are the inputs of the stages that read sources."""

    def __init__(self, recipe: Recipe):
        self.recipe, self.done = recipe, {}

    def __call__(self, kind: str, name: str) -> str:
        if (kind, name) not in self.done:
            r = self.recipe
            self.done[(kind, name)] = (
                model_sources.fingerprint(r.models[name], r.base)
                if kind == "model"
                else ds_sources.fingerprint(r.datasets[name], r.base)
            )
        return self.done[(kind, name)]


def manifest_head(recipe: Recipe, stage: str) -> dict:
    """The first fields of a stage's manifest: what made it and with which config."""
    cfg = recipe.stages[stage]
    return {
        "kind": cfg.kind,
        "stage": stage,
        "recipe": recipe.name,
        "recipe_file": str(recipe.file),
        "engine": recipe.engine_of(stage),
        "seed": recipe.seed,
        "config": to_dict(cfg),
        "config_hash": recipe.config_hash(stage),
    }


def input_fields(recipe: Recipe, stage: str) -> dict[str, str]:
    """Config field -> the model, dataset or stage it names."""
    return {f: n for f, (_, n) in recipe.stage_inputs(stage).items()}


def describe_sources(recipe: Recipe, stage: str) -> dict[str, str]:
    """Each input of a stage in words: an earlier stage, a model source, or a dataset and its licence."""
    out = {}
    for _, (kind, name) in recipe.stage_inputs(stage).items():
        if name in recipe.stages:
            out[name] = f"stage {name}"
        elif kind == "model":
            out[name] = recipe.models[name].describe()
        else:
            out[name] = f"dataset ({recipe.datasets[name].licence_of()})"
    return out
