"""Bootstrap intervals and the paired bootstrap against closed forms and hand computations."""

import math

import numpy as np
import pytest

from evals import stats


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_ratio_is_weighted_mean():
    assert stats.ratio([1, 0, 1]) == pytest.approx(2 / 3)
    # instruction-level accuracy: 3 of 4 instructions in the first prompt, 0 of 1 in the second
    assert stats.ratio([0.75, 0.0], [4, 1]) == pytest.approx(3 / 5)
    assert math.isnan(stats.ratio([], []))


def test_bernoulli_ci_matches_normal_approximation():
    n, p = 2000, 0.3
    values = [1.0] * int(n * p) + [0.0] * (n - int(n * p))
    lo, hi = stats.bootstrap_ci(values, resamples=2000, seed=1)
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # 0.0201
    assert lo == pytest.approx(p - half, abs=0.003)
    assert hi == pytest.approx(p + half, abs=0.003)


def test_ci_is_deterministic_and_seed_dependent():
    values = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0] * 5
    assert stats.bootstrap_ci(values, seed=7) == stats.bootstrap_ci(values, seed=7)
    a, b = (stats.bootstrap_distribution(values, seed=s) for s in (7, 8))
    assert not np.array_equal(a, b)


def test_constant_and_degenerate_inputs():
    assert stats.bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    assert stats.bootstrap_ci([0.25]) == (0.25, 0.25)
    lo, hi = stats.bootstrap_ci([])
    assert math.isnan(lo) and math.isnan(hi)


def test_ratio_resamples_numerator_and_denominator_together():
    # two prompts: 10 instructions all followed, 1 instruction failed. A resample
    # is all-first (1.0), all-second (0.0) or mixed (10/11); never an unweighted 0.5.
    dist = stats.bootstrap_distribution([1.0, 0.0], [10, 1], resamples=400, seed=0)
    assert set(np.round(dist, 6)) <= {1.0, 0.0, round(10 / 11, 6)}
    # mixed draws happen half the time
    assert np.mean(np.isclose(dist, 10 / 11)) == pytest.approx(0.5, abs=0.08)


def test_chunked_resampling_equals_one_chunk(monkeypatch):
    values = np.random.default_rng(3).random(50)
    whole = stats.bootstrap_distribution(values, resamples=300, seed=5)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 50 * 7)  # 7 resamples per chunk
    chunked = stats.bootstrap_distribution(values, resamples=300, seed=5)
    assert len(chunked) == 300
    assert stats.percentile_interval(chunked) == pytest.approx(stats.percentile_interval(whole), abs=0.03)


def test_paired_equal_runs_have_p_one():
    base = {str(i): (float(i % 3 == 0), 1.0) for i in range(100)}
    pair = stats.paired_bootstrap(base, dict(base))
    assert pair.n == 100 and pair.delta == 0.0 and pair.ci == (0.0, 0.0)
    assert pair.p_worse == 1.0


def test_paired_uniform_drop_has_smallest_p():
    # every shared sample is worse in the candidate: no resample shows delta >= 0
    base = {str(i): (1.0, 1.0) for i in range(30)}
    cand = {str(i): (0.0, 1.0) for i in range(30)}
    pair = stats.paired_bootstrap(base, cand, resamples=999)
    assert pair.delta == -1.0 and pair.p_worse == pytest.approx(1 / 1000)


def test_paired_p_matches_normal_test_on_differences():
    rng = np.random.default_rng(0)
    n = 400
    base_v = rng.random(n)
    cand_v = base_v - 0.02 + rng.normal(0, 0.2, n)  # small drop, noisy per sample
    base = {str(i): (base_v[i], 1.0) for i in range(n)}
    cand = {str(i): (cand_v[i], 1.0) for i in range(n)}
    d = cand_v - base_v
    z = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    pair = stats.paired_bootstrap(base, cand, resamples=4000, seed=2)
    assert pair.delta == pytest.approx(d.mean())
    assert pair.p_worse == pytest.approx(1 - _normal_cdf(-z), abs=0.02)
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert pair.ci[0] == pytest.approx(d.mean() - half, abs=0.004)
    assert pair.ci[1] == pytest.approx(d.mean() + half, abs=0.004)


def test_paired_uses_shared_ids_only():
    base = {"a": (1.0, 1.0), "b": (0.0, 1.0), "c": (1.0, 1.0)}
    cand = {"b": (1.0, 1.0), "c": (1.0, 1.0), "z": (0.0, 1.0)}
    pair = stats.paired_bootstrap(base, cand)
    assert pair.n == 2 and pair.baseline == 0.5 and pair.candidate == 1.0 and pair.delta == 0.5
    assert stats.paired_bootstrap(base, {"q": (1.0, 1.0)}).n == 0
