"""Engines: what executes a recipe's stages.

``native`` runs each stage in-process with PyTorch and transformers
(``factory.stages``). ``nemo`` turns training stages into jobs on NVIDIA's
stack (NeMo 2 + ModelOpt, NeMo-Aligner) that run in NGC containers, locally
or on Slurm (``factory.engines.nemo``). Stages that only read and write
artifacts (tokenize, generate, evaluate, gate, pairs, release) run natively under every engine,
so a recipe mixes engines freely: every artifact is an HF checkpoint (or a
results / data directory) with a manifest, whichever engine made it.

A recipe picks its engine with ``engine:``; ``engines:`` pins single stages
to another one, and ``nemo:`` holds the nemo engine's settings (images,
GPUs, parallelism, launcher).

``factory.pipeline`` orchestrates every run; each engine contributes an
executor (the interface is ``factory.engines.base.Executor``: ``native``,
``nemo.executor``), and ``factory.executors`` picks one per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factory.engines.nemo.capabilities import check_recipe
from factory.engines.nemo.settings import NeMoSettings
from foundation.configs import build
from foundation.errors import ConfigError

ENGINES = ("native", "nemo")


def parse_stage_engines(raw: Any, stage_names: list[str], default: str) -> dict[str, str]:
    """``engines:`` (stage -> engine) from the recipe, every stage filled in."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("engines", f"expected a mapping of stage -> engine, got {type(raw).__name__}")
    out = {name: default for name in stage_names}
    for name, engine in raw.items():
        if name not in out:
            raise ConfigError(f"engines.{name}", f"no such stage (stages: {', '.join(stage_names)})")
        if engine not in ENGINES:
            raise ConfigError(f"engines.{name}", f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
        out[name] = engine
    return out


def parse_settings(raw: dict, stage_names: list[str]) -> dict[str, Any]:
    """Per-engine settings blocks of the recipe (today only ``nemo:``), validated."""
    settings = build(NeMoSettings, raw.get("nemo") or {}, "nemo")
    for name in settings.stages:
        if name not in stage_names:
            raise ConfigError(f"nemo.stages.{name}", f"no such stage (stages: {', '.join(stage_names)})")
    return {"nemo": settings}


def check(
    stage_engines: dict[str, str], settings: dict[str, Any], stages: dict, models: dict, shapes: dict, base: Path
) -> None:
    """Engine-specific validation: a stage asking an engine for something it
    cannot do fails here, before any work, with a one-line reason."""
    if any(e == "nemo" for e in stage_engines.values()):
        check_recipe(stage_engines, settings["nemo"], stages, models, shapes, base)
