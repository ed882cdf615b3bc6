"""MetricsLog: held-out rows written and read back by step."""

import json

import pytest

from factory.training.metrics import MetricsLog
from foundation.errors import FactoryError


def test_evals_are_logged_with_a_prefix_and_read_back_by_step(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write_evals(0, 0, {"kl": 0.5, "tokens": 8})
    log.write({"step": 1, "tokens": 4, "loss": 2.0})
    log.write_evals(2, 8, {"kl": 0.25, "tokens": 8})
    rows = [json.loads(x) for x in log.path.read_text().splitlines()]
    assert rows[0] == {"step": 0, "tokens": 0, "eval_kl": 0.5, "eval_tokens": 8}
    assert log.evals_at(0) == {"kl": 0.5, "tokens": 8}
    assert log.evals_at(2) == {"kl": 0.25, "tokens": 8}
    with pytest.raises(FactoryError, match="no held-out metrics logged at step 1"):
        log.evals_at(1)  # step 1 has a training row only


def test_truncate_keeps_rows_up_to_the_resumed_step(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in range(4):
        log.write({"step": step, "loss": float(step)})
    log.truncate_after(1)
    assert [json.loads(x)["step"] for x in log.path.read_text().splitlines()] == [0, 1]
