"""Model shapes followed through a recipe's stages without loading weights: each
stage's output config as far as it is known offline. Recipe validation and the
engines' capability checks both read these, so an impossible pruning target
fails before any work."""

from __future__ import annotations

from pathlib import Path

from factory.sources.models import peek_config
from factory.stages.base import stage_kinds
from foundation.configs import refs


def first_model(cfg) -> str | None:
    """The model a stage transforms: its first model reference (None for stages without one)."""
    found = [t for k, t in refs(cfg).values() if k == "model"]
    return found[0] if found else None


def stage_shapes(stages: dict, models: dict, base: Path) -> dict[str, dict | None]:
    """Follow model shapes through the stages (in execution order), so impossible
    targets fail validation: each stage's output config.json as far as it is known
    offline (None where it is not). Engines check their own limits against these."""
    kinds, shapes = stage_kinds(), {}
    for name, cfg in stages.items():
        target = first_model(cfg)
        src = None
        if target is not None:
            src = shapes.get(target) if target in stages else peek_config(models[target], base)
        shapes[name] = kinds[cfg.kind].shape(cfg, src, f"stages.{name}") if src is not None else None
    return shapes
