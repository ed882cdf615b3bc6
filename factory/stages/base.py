"""The stage protocol: a typed config, inputs resolved to local paths, one output dir."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.sources.datasets import DatasetSpec
from factory.stages import BUILTIN
from foundation.registry import Registry


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


def no_model(cfg: Any, model_config: dict, where: str) -> None:
    """The shape function of a stage whose output is not a model (results, a corpus)."""
    return None


@dataclass(frozen=True)
class Headline:
    """A before -> after pair of a stage's metrics that sums up what the stage did:
    ``{metric}_before`` and ``{metric}_after``. The release card and the run report
    name it ``label``; ``factory ls`` lists it as ``brief`` (None: not listed there);
    ``curve`` is the key of its held-out values in the stage's metrics.jsonl, which
    the report plots (None: no curve)."""

    metric: str
    label: str
    brief: str | None = None
    curve: str | None = None
    millions: bool = False  # a count (e.g. parameters) shown in millions
    interval: bool = False  # ``{metric}_lo_*`` / ``{metric}_hi_*`` hold its 95% interval

    def format(self, value: float) -> str:
        return f"{value / 1e6:.1f}M" if self.millions else f"{value:.3f}"

    def shown(self, metrics: dict) -> tuple[str, str] | None:
        """(before, after) as the card and report write them, each with its interval
        (``0.500 [0.300, 0.700]``) where the stage records one; None when either is missing."""
        pair = self.values(metrics)
        if pair is None:
            return None
        out = []
        for when, value in zip(("before", "after"), pair):
            lo, hi = metrics.get(f"{self.metric}_lo_{when}"), metrics.get(f"{self.metric}_hi_{when}")
            span = f" [{self.format(lo)}, {self.format(hi)}]" if self.interval and None not in (lo, hi) else ""
            out.append(self.format(value) + span)
        return out[0], out[1]

    def values(self, metrics: dict) -> tuple[float, float] | None:
        """(before, after) from a manifest's metrics; None when either is missing."""
        a, b = f"{self.metric}_before", f"{self.metric}_after"
        return (metrics[a], metrics[b]) if a in metrics and b in metrics else None


@dataclass(frozen=True)
class StageKind:
    name: str
    config_cls: type
    run: Callable[[StageContext], StageResult]
    doc: str
    shape: ShapeFn = same_shape
    headline: tuple[Headline, ...] = ()  # the metrics that sum up a stage of this kind, in display order


_KINDS = Registry("stage kind", "factory.stages", {name: name for name in BUILTIN})
_REGISTRY: dict[str, StageKind] = _KINDS.classes  # the kinds registered so far, by name


def register(name: str, config_cls: type, doc: str, shape: ShapeFn = same_shape, headline: tuple[Headline, ...] = ()):
    """Decorator: register ``run`` as the implementation of stage kind ``name``;
    ``headline`` declares the metrics that sum up its result (see ``Headline``)."""

    def wrap(fn):
        _REGISTRY[name] = StageKind(name, config_cls, fn, doc, shape, tuple(headline))
        return fn

    return wrap


def stage_kinds() -> dict[str, StageKind]:
    """Every registered stage kind by name, the built-in ones imported (and so registered) first."""
    return _KINDS.all()


def headline(kind: str) -> tuple[Headline, ...]:
    """The headline metrics stage kind ``kind`` declares (none for a kind not registered)."""
    found = stage_kinds().get(kind)
    return found.headline if found is not None else ()


def headline_curves() -> tuple[str, ...]:
    """Every metrics.jsonl key some stage kind declares as a headline curve, once each,
    built-in kinds first in pipeline order."""
    kinds = stage_kinds()
    order = [k for k in BUILTIN if k in kinds] + [k for k in kinds if k not in BUILTIN]
    return tuple(dict.fromkeys(h.curve for k in order for h in kinds[k].headline if h.curve))
