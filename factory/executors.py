"""Which executor runs each stage of a recipe: engine name -> executor class.

A recipe names an engine (``engine:``, ``engines:`` per stage); a stage runs on
that engine's executor when the executor runs its kind, and natively otherwise
(the nemo engine has no job for tokenize, evaluate, gate, pairs or release). Adding an
engine means writing an executor (``factory.engines.base.Executor``), adding it
here and its name to ``factory.engines.ENGINES``."""

from __future__ import annotations

from factory.engines.base import Executor, handles
from factory.engines.native import NativeExecutor
from factory.engines.nemo.executor import NemoExecutor
from factory.recipe import Recipe

EXECUTORS: dict[str, type[Executor]] = {"native": NativeExecutor, "nemo": NemoExecutor}


def executor_name(recipe: Recipe, stage: str) -> str:
    """The engine whose executor runs ``stage``."""
    engine = recipe.engine_of(stage)
    return engine if handles(EXECUTORS[engine], recipe, stage) else "native"


def engines_used(recipe: Recipe) -> set[str]:
    """The engines whose executors run at least one stage of ``recipe``."""
    return {executor_name(recipe, stage) for stage in recipe.stages}
