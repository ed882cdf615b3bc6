"""Confidence intervals and paired comparisons by the bootstrap.

A metric is a ratio of sums, ``sum(value * weight) / sum(weight)``; with unit
weights that is the plain mean. A bootstrap resample draws samples (not
instructions, not tokens) with replacement and carries each sample's
numerator and denominator together, so ratio metrics keep their pairing.

Every function is deterministic for a given seed and input order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000  # bound on the index matrix one chunk of resamples holds


def _arrays(values: Sequence[float], weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape or v.ndim != 1:
        raise ValueError(f"values and weights must be 1-d and the same length ({v.shape} vs {w.shape})")
    return v, w


def ratio(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """``sum(v * w) / sum(w)``; NaN when there is no weight at all."""
    v, w = _arrays(values, weights)
    den = w.sum()
    return float((v * w).sum() / den) if den > 0 else float("nan")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion: ``k`` successes in ``n`` trials, ``z`` the
    normal quantile (1.96: 95%). Unlike the normal approximation it stays inside [0, 1]
    and is not empty at k = 0 or k = n, which matters for a few dozen held-out items.
    With no trials nothing is known: (0, 1)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _resample_indices(n: int, resamples: int, seed: int):
    """Index matrices of shape (chunk, n), ``resamples`` rows in all."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < resamples:
        k = min(rows, resamples - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def _ratios(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    d = den[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, num[idx].sum(axis=1) / np.where(d > 0, d, 1.0), np.nan)


def bootstrap_distribution(values, weights=None, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The metric on each of ``resamples`` bootstrap resamples."""
    v, w = _arrays(values, weights)
    if len(v) == 0:
        return np.full(resamples, np.nan)
    num = v * w
    return np.concatenate([_ratios(num, w, idx) for idx in _resample_indices(len(v), resamples, seed)])


def percentile_interval(dist: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    dist = dist[~np.isnan(dist)]
    if len(dist) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(dist, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values, weights=None, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the (weighted) mean."""
    return percentile_interval(bootstrap_distribution(values, weights, resamples, seed), level)


@dataclass
class Paired:
    """Candidate minus baseline on the shared samples."""

    n: int  # shared samples
    baseline: float
    candidate: float
    delta: float  # candidate - baseline
    ci: tuple[float, float]  # percentile interval of delta
    p_worse: float  # p-value of "candidate is worse than baseline": share of resamples with delta >= 0


def paired_bootstrap(
    baseline: dict, candidate: dict, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Paired:
    """Compare two runs on the same sample ids.

    ``baseline`` and ``candidate`` map sample id -> (value, weight). Only ids in
    both count. Each resample draws shared ids with replacement and recomputes
    both metrics on the same draw, so per-sample difficulty cancels out. The
    p-value is ``(1 + #{delta* >= 0}) / (1 + resamples)``: small when almost no
    resample shows the candidate at least as good as the baseline."""
    ids = [i for i in baseline if i in candidate]
    if not ids:
        nan = float("nan")
        return Paired(0, nan, nan, nan, (nan, nan), nan)
    bv, bw = _arrays([baseline[i][0] for i in ids], [baseline[i][1] for i in ids])
    cv, cw = _arrays([candidate[i][0] for i in ids], [candidate[i][1] for i in ids])
    b, c = ratio(bv, bw), ratio(cv, cw)
    deltas = np.concatenate(
        [_ratios(cv * cw, cw, idx) - _ratios(bv * bw, bw, idx) for idx in _resample_indices(len(ids), resamples, seed)]
    )
    valid = deltas[~np.isnan(deltas)]
    p = (1 + int((valid >= 0).sum())) / (1 + len(valid))
    return Paired(len(ids), b, c, c - b, percentile_interval(deltas, level), p)
