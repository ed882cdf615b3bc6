"""The common ending of a training stage: metric names and their order in the manifest."""

import pytest

from factory.training.loop import LoopResult
from factory.training.results import heldout_before_after, stage_metrics


def result(**kw) -> LoopResult:
    base = dict(
        steps=10,
        tokens=1000,
        resumed_from=4,
        train_s=2.0,
        wall_s=3.0,
        final_train_loss=1.5,
        peak_memory_gib=0.25,
        first_eval={"kl": 0.9, "lm_loss": 3.0, "tokens": 64},
        last_eval={"kl": 0.2, "lm_loss": 2.5, "tokens": 64},
    )
    return LoopResult(**{**base, **kw})


def test_before_after_pairs_name_by_name_or_when_by_when():
    names = {"heldout_kl": "kl", "heldout_lm_loss": "lm_loss"}
    by_metric = heldout_before_after(result(), names)
    assert list(by_metric.items()) == [
        ("heldout_kl_before", 0.9),
        ("heldout_kl_after", 0.2),
        ("heldout_lm_loss_before", 3.0),
        ("heldout_lm_loss_after", 2.5),
    ]
    by_when = heldout_before_after(result(), names, by_metric=False)
    assert list(by_when) == ["heldout_kl_before", "heldout_lm_loss_before", "heldout_kl_after", "heldout_lm_loss_after"]


def test_stage_metrics_in_manifest_order_with_throughput_of_this_runs_steps():
    m = stage_metrics(result(), {"eval_loss": "lm_loss"}, rate=("train_tokens_per_s", 100))
    assert list(m) == [
        "eval_loss_before",
        "eval_loss_after",
        "final_train_loss",
        "steps",
        "train_tokens_per_s",
        "peak_memory_gib",
    ]
    assert m["train_tokens_per_s"] == pytest.approx((10 - 4) * 100 / 2.0)  # steps before the resume do not count
    assert (m["final_train_loss"], m["steps"], m["peak_memory_gib"]) == (1.5, 10, 0.25)


def test_counts_come_before_the_rate_and_no_rate_means_no_throughput():
    m = stage_metrics(result(), {"x": "kl"}, counts={"pairs_seen": 40}, rate=("train_pairs_per_s", 4))
    assert list(m)[4:6] == ["pairs_seen", "train_pairs_per_s"]
    assert list(stage_metrics(result(), {"x": "kl"})) == [
        "x_before",
        "x_after",
        "final_train_loss",
        "steps",
        "peak_memory_gib",
    ]


def test_rate_survives_a_run_without_training_time():
    assert result(train_s=0.0, resumed_from=10).rate(100) == 0.0
