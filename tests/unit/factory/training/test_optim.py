import math

import pytest

from factory.training.optim import lr_at


def test_lr_schedule_warmup_cosine_floor():
    total, peak, warm = 100, 1e-3, 10
    assert lr_at(0, total, peak, warm, 0.1) == pytest.approx(1e-4)
    assert lr_at(9, total, peak, warm, 0.1) == pytest.approx(1e-3)
    assert lr_at(10, total, peak, warm, 0.1) == pytest.approx(1e-3)
    mid = lr_at(55, total, peak, warm, 0.1)
    assert mid == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, total, peak, warm, 0.1) == pytest.approx(1e-4)
    assert all(lr_at(s, total, peak, warm, 0.1) >= lr_at(s + 1, total, peak, warm, 0.1) for s in range(10, 99))
