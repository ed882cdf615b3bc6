"""The common ending of a training stage: the loop's result and its held-out
evals become the stage's metrics, in the order the manifest lists them."""

from __future__ import annotations

from collections.abc import Mapping

from factory.training.loop import LoopResult


def heldout_before_after(result: LoopResult, names: Mapping[str, str], by_metric: bool = True) -> dict:
    """``{name}_before`` / ``{name}_after`` for each ``name: key`` of ``names``, the held-out
    metric ``key`` (as the eval function returned it) at step 0 and after the last step.
    ``by_metric`` orders them name by name (a_before, a_after, b_before, ...), else all
    befores then all afters."""
    whens = (("before", result.first_eval), ("after", result.last_eval))
    if by_metric:
        return {f"{name}_{when}": evals[key] for name, key in names.items() for when, evals in whens}
    return {f"{name}_{when}": evals[key] for when, evals in whens for name, key in names.items()}


def stage_metrics(
    result: LoopResult,
    heldout: Mapping[str, str],
    *,
    by_metric: bool = True,
    rate: tuple[str, float] | None = None,
    counts: Mapping[str, int] | None = None,
) -> dict:
    """A training stage's metrics: the held-out before/after pairs (see
    ``heldout_before_after``), the last training loss, the step count, ``counts``
    (e.g. pairs seen), the throughput ``rate = (name, units per optimizer step)``
    (e.g. ``("train_tokens_per_s", cfg.tokens_per_step)``) and the peak memory."""
    metrics = heldout_before_after(result, heldout, by_metric)
    metrics.update(final_train_loss=result.final_train_loss, steps=result.steps, **(counts or {}))
    if rate is not None:
        metrics[rate[0]] = result.rate(rate[1])
    metrics["peak_memory_gib"] = result.peak_memory_gib
    return metrics
