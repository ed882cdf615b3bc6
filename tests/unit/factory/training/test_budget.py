"""A training budget must be one a run can take: at most MAX_STEPS optimizer steps, with every
learning rate of the schedule representable in float32."""

import pytest

from factory.training.loop import LR_FLOOR, MAX_STEPS, TrainConfig, check_budget, check_schedule, train
from factory.training.optim import lr_at
from foundation.errors import ConfigError, FactoryError


def test_budget_at_the_limit_passes_and_beyond_it_fails():
    check_budget(MAX_STEPS * 64, 64, "s", "max_tokens")
    with pytest.raises(ConfigError) as e:
        check_budget(MAX_STEPS * 64 + 1, 64, "s", "max_tokens")
    assert str(e.value) == (
        "s.max_tokens: 64000000001 tokens at 64 tokens per step make 1e+09 optimizer steps, "
        "more than the 1e+09 a run can take"
    )


def test_a_schedule_that_underflows_is_refused():
    check_schedule(2e-5, MAX_STEPS, 0.05, 0.1, "s")
    with pytest.raises(
        ConfigError,
        match=r"^s\.lr: the schedule's smallest learning rate, 1e-39 \(lr 1e-33 over "
        r"1000000000 steps\), underflows float32",
    ):
        check_schedule(1e-33, MAX_STEPS, 0.001, 0.0, "s")


def test_the_check_agrees_with_the_schedule():
    """check_schedule bounds the smallest rate lr_at gives from below (the first warmup step, or
    the cosine floor the last steps approach), so a schedule it passes never underflows."""
    for total, lr, warmup_ratio, min_ratio in ((200, 1e-3, 0.1, 0.01), (50, 1e-3, 0.5, 0.9), (7, 1e-3, 0.0, 0.1)):
        rates = [lr_at(s, total, lr, int(warmup_ratio * total), min_ratio) for s in range(total)]
        warmup = int(warmup_ratio * total)
        bound = min(lr / warmup if warmup else lr, lr * min_ratio)
        assert bound <= min(rates)
    assert LR_FLOOR == pytest.approx(1.1754944e-38)


def test_trainconfig_check_runs_both():
    with pytest.raises(ConfigError, match="stages.x.max_tokens: .* optimizer steps, more than"):
        TrainConfig(max_tokens=10**18, seq_len=16, batch_size=1).check("stages.x")
    with pytest.raises(ConfigError, match="stages.x.lr: the schedule's smallest learning rate"):
        TrainConfig(lr=1e-40).check("stages.x")
    with pytest.raises(ConfigError, match="stages.x.adam_eps: must be >= 0"):
        TrainConfig(adam_eps=-1.0).check("stages.x")


def test_train_refuses_an_epoch_budget_beyond_the_limit(tmp_path):
    """Epoch budgets (sft, dpo) are only counted at run time: the loop stops before any work."""
    with pytest.raises(FactoryError, match=r"^dpo: 1000000001 optimizer steps, more than the 1e\+09"):
        train(None, TrainConfig(), None, None, None, tmp_path, None, desc="dpo", total_steps=MAX_STEPS + 1)
