"""Numbers in configs are sane when built: floats finite, ints within 64 bits; each fault is one
ConfigError naming the YAML path."""

from dataclasses import dataclass

import pytest

from foundation.configs import INT_LIMIT, build, field
from foundation.errors import ConfigError


@dataclass
class Knobs:
    lr: float = field(1e-3)
    steps: int = field(10)
    scale: float | None = field(None)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"lr": float("inf")}, "s.lr: expected a finite number, got float inf"),
        ({"lr": float("-inf")}, "s.lr: expected a finite number, got float -inf"),
        ({"lr": float("nan")}, "s.lr: expected a finite number, got float nan"),
        ({"lr": "inf"}, "s.lr: expected a finite number, got 'inf'"),
        ({"lr": "NaN"}, "s.lr: expected a finite number, got 'NaN'"),
        ({"lr": 10**400}, f"s.lr: expected a finite number, got int {10**400}"),
        ({"scale": float("inf")}, "s.scale: expected a finite number, got float inf"),
        (
            {"steps": 10**30},
            "s.steps: 1000000000000000000000000000000 is out of range: it does not fit a 64-bit integer",
        ),
        ({"steps": -(10**30)}, "s.steps: -1000000000000000000000000000000 is out of range"),
        ({"steps": "100000000000T"}, "s.steps: 100000000000T is out of range: it does not fit a 64-bit integer"),
        ({"steps": "9" * 400}, "s.steps: expected int, got '999"),
    ],
)
def test_insane_numbers_are_one_line_errors(data, message):
    with pytest.raises(ConfigError) as e:
        build(Knobs, data, "s")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sane_numbers_still_build():
    cfg = build(Knobs, {"lr": "2e-5", "steps": INT_LIMIT, "scale": 1e300}, "s")
    assert (cfg.lr, cfg.steps, cfg.scale) == (2e-5, INT_LIMIT, 1e300)
    assert build(Knobs, {"steps": "70M", "lr": 3}, "s").steps == 70_000_000
