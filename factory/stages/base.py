"""The stage protocol: a typed config, inputs resolved to local paths, one output dir."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from factory.sources.datasets import DatasetSpec


@dataclass
class StageContext:
    """What a stage's ``run`` gets.

    ``models`` maps each model-reference field to a local HF checkpoint dir;
    ``datasets`` maps each dataset-reference field to its spec (read it with
    ``factory.sources.documents.iter_documents(spec, base)``). The stage writes
    its HF checkpoint into ``out_dir``; ``work_dir`` survives a crash and holds
    mid-stage checkpoints, so a rerun with the same config and inputs resumes."""

    name: str
    config: Any
    seed: int
    base: Path
    models: dict[str, Path]
    datasets: dict[str, DatasetSpec]
    out_dir: Path
    work_dir: Path
    progress: bool = True
    cache_dir: Path | None = None  # per-stage cache that outlives artifacts (e.g. importance scores)
    input_hashes: dict[str, str] = field(default_factory=dict)  # field -> content hash of that input

    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific manifest entries


# (config, input model's config.json as a dict, YAML path) -> output config dict,
# or None when it cannot be known before running. Raises ConfigError for
# impossible settings, so `factory validate` catches them before any work.
ShapeFn = Callable[[Any, dict, str], "dict | None"]


def same_shape(cfg: Any, model_config: dict, where: str) -> dict:
    return model_config


@dataclass(frozen=True)
class StageKind:
    name: str
    config_cls: type
    run: Callable[[StageContext], StageResult]
    doc: str
    shape: ShapeFn = same_shape


_REGISTRY: dict[str, StageKind] = {}


def register(name: str, config_cls: type, doc: str, shape: ShapeFn = same_shape):
    """Decorator: register ``run`` as the implementation of stage kind ``name``."""
    def wrap(fn):
        _REGISTRY[name] = StageKind(name, config_cls, fn, doc, shape)
        return fn
    return wrap


def stage_kinds() -> dict[str, StageKind]:
    import importlib

    from factory.stages import BUILTIN

    for name in BUILTIN:  # importing a kind's module registers it
        importlib.import_module(f"factory.stages.{name}")
    return dict(_REGISTRY)
