"""Candidate search on a tiny random model: pruning, ranking by held-out loss, and the
short distillation that re-ranks the finalists (kept per candidate across a kill)."""

import json

import pytest
import torch

from factory.pruning.arch import Shape
from factory.pruning.budget import Candidate
from factory.pruning.importance import collect
from factory.pruning.search import CandidateSearch, ShortDistill, choose_drop, rank_dir, short_distill
from factory.training.data import PackedData
from factory.training.heldout import heldout_loss
from tests.unit.factory.tiny_models import tiny_llama, token_blocks

SRC = Candidate(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2)
NARROW = Candidate(2, 48, 64, 4, 2)
SHALLOW = Candidate(1, 64, 128, 4, 2)


@pytest.fixture(scope="module")
def search():
    model = tiny_llama()
    heldout = token_blocks(n=4, seq=16, seed=1)
    imp = collect(model, token_blocks(n=8, seq=16), batch_size=4, progress=False)
    return CandidateSearch(model, imp, "l2", torch.device("cpu"), lambda m: heldout_loss(m, heldout, 4)["loss"])


def job(tmp_path, **kw) -> ShortDistill:
    base = dict(
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
    return ShortDistill(**{**base, **kw})


def test_rank_dir_makes_a_file_name_of_a_label(tmp_path):
    assert rank_dir(tmp_path, "L30 h576 ffn1536 heads6/2") == tmp_path / "rank" / "L30-h576-ffn1536-heads6-2"


def test_choose_drop_by_criterion(search):
    assert choose_drop("last", search.model, search.imp, 0, search.loss_of) == ([], [])
    assert choose_drop("last", search.model, search.imp, 1, search.loss_of) == ([1], [])
    drop, ranking = choose_drop("lm_loss", search.model, search.imp, 1, search.loss_of)
    assert len(drop) == 1 and len(ranking) == 2  # both one-layer blocks measured


def test_prune_builds_the_candidate_and_leaves_the_source_alone(search):
    before = {k: v.clone() for k, v in search.model.state_dict().items()}
    pruned = search.prune(NARROW, [])
    assert Shape.from_config(pruned.config.to_dict()).hidden_size == 48
    assert pruned.config.intermediate_size == 64
    assert all(torch.equal(before[k], v) for k, v in search.model.state_dict().items())


def test_rank_by_loss_measures_every_candidate_and_keeps_the_best(search):
    ranked, best, model = search.rank_by_loss([SRC, NARROW], lambda c: ([], []))
    assert [r.row["candidate"] for r in ranked] == [SRC.label(), NARROW.label()]
    assert ranked[0].row["heldout_loss"] == pytest.approx(search.loss_of(search.model), rel=1e-6)  # nothing pruned
    assert best is min(ranked, key=lambda r: r.row["heldout_loss"])
    assert search.loss_of(model) == pytest.approx(best.row["heldout_loss"], rel=1e-6)
    assert ranked[1].row["hidden_size"] == 48 and ranked[1].row["drop_layers"] == []


def test_rank_by_distill_adds_the_distilled_measurements_and_ranks_by_them(search, tmp_path):
    ranked, _, _ = search.rank_by_loss([NARROW, SHALLOW], lambda c: ([1], []) if c.num_layers == 1 else ([], []))
    winner = search.rank_by_distill(ranked, job(tmp_path), top=None)
    for r in ranked:
        assert {"heldout_loss_distilled", "heldout_kl_distilled"} <= set(r.row)
        assert r.row["rank_distill_tokens"] == 2 * 16 * 2  # 64 tokens in steps of 2 x 16
        assert (rank_dir(tmp_path, r.row["candidate"]) / "result.json").is_file()
    assert winner is min(ranked, key=lambda r: r.row["heldout_loss_distilled"])


def test_top_limits_the_distillation_to_the_best_after_pruning(search, tmp_path):
    ranked, _, _ = search.rank_by_loss([NARROW, SHALLOW], lambda c: ([1], []) if c.num_layers == 1 else ([], []))
    search.rank_by_distill(ranked, job(tmp_path), top=1)
    first = min(ranked, key=lambda r: r.row["heldout_loss"])
    assert [("heldout_loss_distilled" in r.row) for r in ranked] == [r is first for r in ranked]


def test_a_measured_candidate_is_read_back_not_distilled_again(search, tmp_path):
    out = rank_dir(tmp_path, NARROW.label())
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({"heldout_loss_distilled": 1.0}))

    def never():
        raise AssertionError("built a student for a candidate already measured")

    assert short_distill(job(tmp_path), search.model, never, NARROW.label(), 2.0) == {"heldout_loss_distilled": 1.0}


def test_keep_saves_the_distilled_weights(search, tmp_path):
    from factory.sources.tiny import byte_tokenizer

    got = short_distill(
        job(tmp_path, keep=True, tokenizer=byte_tokenizer()),
        search.model,
        lambda: search.prune(NARROW, []),
        NARROW.label(),
        3.0,
    )
    saved = rank_dir(tmp_path, NARROW.label()) / "model"
    assert (saved / "model.safetensors").is_file()
    assert json.loads((saved.parent / "result.json").read_text()) == got


def test_the_short_distillation_schedule():
    cfg = ShortDistill(
        packed=None,
        heldout=None,
        work_dir=None,
        seq_len=16,
        max_tokens=100,
        lr=1e-3,
        batch_size=2,
        eval_batch_size=4,
        device=torch.device("cpu"),
    ).train_config()
    assert (cfg.warmup_ratio, cfg.eval_every, cfg.checkpoint_every, cfg.grad_accum) == (0.1, 0, 0, 1)
    assert (cfg.total_steps, cfg.tokens_per_step) == (4, 32)
