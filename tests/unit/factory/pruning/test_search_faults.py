"""A short distillation's kept result under faults: a damaged one is reported in one line,
removed and the candidate distilled again; a good one is read back (its sha256 recorded)."""

import json

import pytest
import torch

from factory.pruning.budget import Candidate
from factory.pruning.search import ShortDistill, rank_dir, short_distill
from factory.training.data import PackedData
from foundation import storage
from tests.unit.factory.tiny_models import tiny_llama, token_blocks

NARROW = Candidate(2, 48, 64, 4, 2)


def _job(tmp_path) -> ShortDistill:
    return ShortDistill(
        packed=PackedData(token_blocks(n=8, seq=16), token_blocks(n=4, seq=16, seed=1), 1, 8 * 16),
        heldout=token_blocks(n=4, seq=16, seed=1),
        work_dir=tmp_path,
        seq_len=16,
        max_tokens=64,
        lr=1e-3,
        batch_size=2,
        eval_batch_size=4,
        device=torch.device("cpu"),
        progress=False,
    )


@pytest.fixture(scope="module")
def teacher():
    return tiny_llama()


def _student():
    return tiny_llama(seed=1, hidden_size=48, intermediate_size=64)


def test_a_measured_result_is_recorded_and_read_back(tmp_path, teacher):
    got = short_distill(_job(tmp_path), teacher, _student, NARROW.label(), 3.0)
    done = rank_dir(tmp_path, NARROW.label()) / "result.json"
    assert storage.problem(done) is None

    def never():
        raise AssertionError("distilled a candidate already measured")

    assert short_distill(_job(tmp_path), teacher, never, NARROW.label(), 3.0) == got


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_text(p.read_text()[:10]), "bytes, "),  # recorded, then truncated
        (lambda p: (storage.sidecar(p).unlink(), p.write_text('{"heldout_loss')), "it does not load"),
    ],
)
def test_a_damaged_result_is_reported_and_the_candidate_distilled_again(tmp_path, teacher, capsys, damage, why):
    got = short_distill(_job(tmp_path), teacher, _student, NARROW.label(), 3.0)
    done = rank_dir(tmp_path, NARROW.label()) / "result.json"
    damage(done)
    capsys.readouterr()
    again = short_distill(_job(tmp_path), teacher, _student, NARROW.label(), 3.0)
    lines = capsys.readouterr().err.splitlines()
    warned = [x for x in lines if x.startswith("warning:")]
    assert len(warned) == 1 and why in warned[0]
    assert warned[0].startswith(f"warning: {done}: short-distillation result discarded, ")
    assert warned[0].endswith(f"; distilling {NARROW.label()} again")
    assert again == got and json.loads(done.read_text()) == got and storage.problem(done) is None
