"""The training loop hands back its first and last held-out evals, also across a resume."""

import json

import pytest
import torch

from factory.training.loop import TrainConfig, train
from factory.training.metrics import MetricsLog
from foundation.errors import FactoryError


class Stop(Exception):
    pass


def run(tmp_path, stop_at=None, evals=None, **knobs):
    """6 steps of a linear model towards zero output, checkpointed every 2; ``stop_at``: killed at that step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(64, 4)
    cfg = TrainConfig(seq_len=2, batch_size=2, max_tokens=24, checkpoint_every=2, device="cpu", lr=0.1, **knobs)
    calls = evals if evals is not None else []

    def loss_fn(m, batch):
        return m(batch).pow(2).mean(), 4

    def batch_fn(step, micro):
        if stop_at is not None and step == stop_at:
            raise Stop
        return data[step * 2 : (step + 1) * 2]

    def eval_fn():
        calls.append(1)
        with torch.no_grad():
            return {"loss": float(model(data).pow(2).mean()), "tokens": 64}

    return train(
        model, cfg, batch_fn, loss_fn, eval_fn, tmp_path, MetricsLog(tmp_path / "metrics.jsonl"), progress=False
    )


def test_first_and_last_eval_are_the_logged_step_0_and_final_rows(tmp_path):
    r = run(tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert r.steps == 6 and r.resumed_from == 0
    assert r.first_eval == {"loss": rows[0]["eval_loss"], "tokens": 64} and rows[0]["step"] == 0
    assert r.last_eval == {"loss": rows[-1]["eval_loss"], "tokens": 64} and rows[-1]["step"] == 6
    assert r.last_eval["loss"] < r.first_eval["loss"]


def test_a_resumed_run_reads_its_first_eval_back_from_the_log(tmp_path):
    with pytest.raises(Stop):
        run(tmp_path, stop_at=5)  # checkpoints after steps 2 and 4
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    evals = []
    r = run(tmp_path, evals=evals)
    assert r.resumed_from == 4
    assert len(evals) == 1  # only the final eval ran again
    assert r.first_eval == {"loss": first["eval_loss"], "tokens": 64}


def test_eval_at_tokens_evaluates_at_the_first_step_reaching_each_count(tmp_path):
    for sub in ("plain", "points"):
        (tmp_path / sub).mkdir()
    plain = run(tmp_path / "plain")
    # 4 tokens a step: 1 -> step 1, 8 -> step 2, 9 -> step 3; 100 is past the 24-token run
    r = run(tmp_path / "points", eval_at_tokens=[9, 1, 8, 100])
    rows = [json.loads(x) for x in (tmp_path / "points" / "metrics.jsonl").read_text().splitlines()]
    evals = [(row["step"], row["tokens"]) for row in rows if "eval_loss" in row]
    assert evals == [(0, 0), (1, 4), (2, 8), (3, 12), (6, 24)]
    assert r.last_eval == plain.last_eval  # evaluating in between does not change the training


def test_eval_at_tokens_must_be_positive():
    with pytest.raises(FactoryError, match=r"s\.eval_at_tokens\[1\]: must be positive, got 0"):
        TrainConfig(eval_at_tokens=[5, 0]).check("s")
