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
    ``factory.sources.datasets.iter_documents(spec, base)``). The stage writes
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

    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific manifest entries


@dataclass(frozen=True)
class StageKind:
    name: str
    config_cls: type
    run: Callable[[StageContext], StageResult]
    doc: str


_REGISTRY: dict[str, StageKind] = {}


def register(name: str, config_cls: type, doc: str):
    """Decorator: register ``run`` as the implementation of stage kind ``name``."""
    def wrap(fn):
        _REGISTRY[name] = StageKind(name, config_cls, fn, doc)
        return fn
    return wrap


def stage_kinds() -> dict[str, StageKind]:
    import factory.stages  # noqa: F401  (registers the built-in kinds)

    return dict(_REGISTRY)
