"""The regression gate: compare a candidate's results with a baseline's.

Every metric of every baseline task is gated (metrics are higher-is-better).
A metric fails when the candidate is lower by more than its allowed drop AND
the drop is significant: the paired bootstrap over the sample ids both runs
share gives p < alpha for "the candidate is worse". A large drop on a handful
of samples is noise, and a significant drop within the allowance is accepted."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from evals import results as res
from evals import stats
from foundation.errors import FactoryError

ALPHA = 0.05


@dataclass
class GateRow:
    task: str
    metric: str
    n: int  # shared samples
    baseline: float
    candidate: float
    delta: float
    allowed: float
    p: float
    verdict: str  # "pass" | "noise" (drop beyond allowance, not significant) | "FAIL" | "MISSING"

    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", "MISSING")

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"


def parse_max_drop(items: list[str]) -> dict[str, float]:
    """``task/metric=0.02`` or ``task=0.02`` (every metric of the task)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            drop = float(value)
        except ValueError:
            drop = float("nan")
        if not sep or not key or math.isnan(drop) or drop < 0:
            raise FactoryError(f"--max-drop {item!r}: expected task/metric=DROP with DROP >= 0, e.g. gsm8k/accuracy=0.02")
        out[key] = drop
    return out


def _allowed(task: str, metric: str, max_drop: dict[str, float], default: float) -> float:
    return max_drop.get(f"{task}/{metric}", max_drop.get(task, default))


def check_max_drop(baseline: dict, max_drop: dict[str, float], prefix: str = "--max-drop ") -> None:
    """Every key names a task or task/metric of the baseline (a typo would gate nothing)."""
    known = {task for task in baseline["tasks"]}
    known |= {f"{task}/{m}" for task, t in baseline["tasks"].items() for m in t["metrics"]}
    for key in max_drop:
        if key not in known:
            raise FactoryError(f"{prefix}{key}: no such task or task/metric in {baseline.get('_file', 'the baseline')} "
                               f"(known: {', '.join(sorted(known))})")


def compare(candidate: dict, baseline: dict, max_drop: dict[str, float] | None = None,
            default_max_drop: float = 0.0, alpha: float = ALPHA, resamples: int = stats.RESAMPLES,
            seed: int = stats.SEED) -> list[GateRow]:
    """One row per baseline task/metric."""
    max_drop = max_drop or {}
    check_max_drop(baseline, max_drop)
    rows = []
    for task, t in baseline["tasks"].items():
        base_recs = res.task_samples(baseline, task)
        cand_recs = res.task_samples(candidate, task)
        for metric in t["metrics"]:
            allowed = _allowed(task, metric, max_drop, default_max_drop)
            b = res.metric_values(base_recs, metric)
            c = res.metric_values(cand_recs, metric)
            if not b:  # no baseline sample carries it: nothing to compare against
                continue
            if task not in candidate["tasks"] or not c:
                nan = float("nan")
                rows.append(GateRow(task, metric, 0, t["metrics"][metric]["value"], nan, nan, allowed, nan, "MISSING"))
                continue
            pair = stats.paired_bootstrap(b, c, resamples, seed)
            if pair.n == 0:
                raise FactoryError(f"task {task}: the two results share no sample ids; "
                                   "were they run on the same data?")
            rows.append(GateRow(task, metric, pair.n, pair.baseline, pair.candidate, pair.delta, allowed,
                                pair.p_worse, _verdict(pair.delta, allowed, pair.p_worse, alpha)))
    return rows


def _verdict(delta: float, allowed: float, p: float, alpha: float) -> str:
    # a tiny tolerance so a drop exactly at the allowance is not failed by rounding
    if -delta <= allowed + 1e-12:
        return "pass"
    return "FAIL" if p < alpha else "noise"


def table(rows: list[GateRow]) -> str:
    header = ["task/metric", "n", "baseline", "candidate", "delta", "allowed", "p", "verdict"]

    def f(x: float, fmt: str = ".3f") -> str:
        return "-" if x is None or math.isnan(x) else format(x, fmt)

    body = [[r.key, str(r.n), f(r.baseline), f(r.candidate), f(r.delta, "+.3f"), f(r.allowed),
             f(r.p), r.verdict] for r in rows]
    widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header] + body)


def summary(rows: list[GateRow]) -> str:
    failed = [r for r in rows if r.failed]
    if not failed:
        return f"gate passed: {len(rows)} metrics, none dropped significantly beyond its allowance"
    parts = [f"{r.key} {'missing' if r.verdict == 'MISSING' else f'{r.delta:+.3f} (allowed -{r.allowed:g}, p={r.p:.3f})'}"
             for r in failed]
    return f"gate failed: {len(failed)} of {len(rows)} metrics regressed: " + "; ".join(parts)


def as_json(rows: list[GateRow], alpha: float) -> dict:
    return {"passed": not any(r.failed for r in rows), "alpha": alpha,
            "rows": [{**asdict(r), "failed": r.failed} for r in rows]}
