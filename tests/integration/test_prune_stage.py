"""The prune stage end to end on the smoke recipe."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.artifacts import read_manifest
from tests.conftest import RECIPES, ROOT

SMOKE = RECIPES / "smoke.yaml"


def _events(runs):
    return [json.loads(x) for x in (runs / "smoke" / "events.jsonl").read_text().splitlines()]


def test_pruned_artifact_loads_generates_and_reports(runs):
    Pipeline(load_recipe(SMOKE), runs, progress=False).run(until="prune")
    art = runs / "smoke" / "prune"
    m = read_manifest(art)
    assert m["target_shape"]["hidden_size"] == 48 and m["target_shape"]["ffn_hidden_size"] == 64
    assert m["metrics"]["params_after"] < m["metrics"]["params_before"]
    assert m["source_shape"]["params"] == m["metrics"]["params_before"]
    assert {"heldout_loss_before", "heldout_loss_after"} <= set(m["metrics"])
    assert (art / "importance.png").stat().st_size > 10_000
    assert (art / "importance.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(art)
    tok = AutoTokenizer.from_pretrained(art)
    assert sum(p.numel() for p in model.parameters()) == m["metrics"]["params_after"]
    assert model.config.hidden_size == 48 and model.config.head_dim == 16
    enc = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4 or out[0, -1].item() == tok.eos_token_id
    golden = json.loads((ROOT / "tests" / "golden" / "smoke_prune.json").read_text())
    for key, value in golden.items():
        assert abs(m["metrics"][key] - value) <= 1e-3 * abs(value), key


def test_changing_only_the_target_reuses_importance(runs):
    Pipeline(load_recipe(SMOKE), runs, progress=False).run(until="distill")
    n = len(_events(runs))
    recipe = load_recipe(
        SMOKE,
        [
            "stages.prune.target_ffn_hidden_size=32",
            "stages.prune.target_num_query_groups=1",
            "stages.prune.target_num_attention_heads=2",
        ],
    )
    Pipeline(recipe, runs, progress=False).run(until="distill")
    # prune and what depends on it; correct stays cached
    assert [e["stage"] for e in _events(runs)[n:] if e["event"] == "start"] == ["prune", "distill"]
    m = read_manifest(runs / "smoke" / "prune")
    assert m["importance_reused"] is True
    assert m["target_shape"]["num_query_groups"] == 1 and m["target_shape"]["ffn_hidden_size"] == 32


def test_budget_search_and_depth_pruning(runs):
    recipe = load_recipe(
        SMOKE,
        [
            "stages.prune.target_hidden_size=null",
            "stages.prune.target_ffn_hidden_size=null",
            "stages.prune.target_num_attention_heads=null",
            "stages.prune.target_num_query_groups=null",
            "stages.prune.target_params=60k",
            "stages.prune.candidate_multiple=16",
            "models.teacher.tiny.num_hidden_layers=4",
        ],
    )
    Pipeline(recipe, runs, progress=False).run(until="prune")
    m = read_manifest(runs / "smoke" / "prune")
    cands = m["candidates"]
    assert len(cands) >= 2 and all(c["params"] <= 60_000 for c in cands)
    assert [c["heldout_loss"] for c in cands] == sorted(c["heldout_loss"] for c in cands)
    assert m["metrics"]["heldout_loss_after"] == cands[0]["heldout_loss"]
    depth_only = [c for c in cands if c["num_layers"] < 4]
    assert depth_only and len(depth_only[0]["drop_layers"]) == 4 - depth_only[0]["num_layers"]
    model = AutoModelForCausalLM.from_pretrained(runs / "smoke" / "prune")
    assert sum(p.numel() for p in model.parameters()) == m["metrics"]["params_after"]
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


def test_rank_by_short_distillation(runs):
    """rank_by: distill distils the best `top` candidates briefly from the source and
    keeps the one with the lowest loss after it; a rerun reuses what was measured."""
    budget = [
        "stages.prune.target_hidden_size=null",
        "stages.prune.target_ffn_hidden_size=null",
        "stages.prune.target_num_attention_heads=null",
        "stages.prune.target_num_query_groups=null",
        "stages.prune.target_params=60k",
        "stages.prune.candidate_multiple=16",
        "models.teacher.tiny.num_hidden_layers=4",
    ]
    ranked = budget + [
        "stages.prune.rank_by=distill",
        "stages.prune.rank_distill.top=3",
        "stages.prune.rank_distill.max_tokens=512",
        "stages.prune.rank_distill.lr=5e-3",
    ]
    Pipeline(load_recipe(SMOKE, ranked), runs, progress=False).run(until="prune")
    m = read_manifest(runs / "smoke" / "prune")
    cands = m["candidates"]
    assert m["rank_by"] == "distill" and len(cands) > 3
    finalists = [c for c in cands if "heldout_loss_distilled" in c]
    assert len(finalists) == 3 and cands[:3] == finalists  # distilled ones first, best first
    by_loss = sorted(cands, key=lambda c: c["heldout_loss"])
    assert {c["candidate"] for c in finalists} == {c["candidate"] for c in by_loss[:3]}
    losses = [c["heldout_loss_distilled"] for c in finalists]
    assert losses == sorted(losses) and m["metrics"]["heldout_loss_distilled"] == losses[0]
    for c in finalists:  # the short distillation moved every finalist towards its teacher
        assert c["heldout_loss_distilled"] < c["heldout_loss"] and c["heldout_kl_distilled"] > 0
        assert c["rank_distill_tokens"] >= 512
    winner = finalists[0]
    assert m["target_shape"]["hidden_size"] == winner["hidden_size"]
    # released weights are the winner's pruned ones, not its short distillation
    assert m["metrics"]["heldout_loss_after"] == winner["heldout_loss"]
    model = AutoModelForCausalLM.from_pretrained(runs / "smoke" / "prune")
    assert sum(p.numel() for p in model.parameters()) == m["metrics"]["params_after"] == winner["params"]
    assert m["weights"] == "pruned"


def test_rank_distill_keep_releases_the_short_distilled_winner(runs):
    """With rank_distill.keep the ranking is the same and the released weights are the
    winner's short distillation: their held-out loss is the one measured after it."""
    ranked = [
        "stages.prune.target_hidden_size=null",
        "stages.prune.target_ffn_hidden_size=null",
        "stages.prune.target_num_attention_heads=null",
        "stages.prune.target_num_query_groups=null",
        "stages.prune.target_params=60k",
        "stages.prune.candidate_multiple=16",
        "stages.prune.rank_by=distill",
        "stages.prune.rank_distill.top=2",
        "stages.prune.rank_distill.max_tokens=512",
        "stages.prune.rank_distill.lr=5e-3",
        "models.teacher.tiny.num_hidden_layers=4",
    ]
    got = {}
    for keep in ("false", "true"):
        Pipeline(load_recipe(SMOKE, ranked + [f"stages.prune.rank_distill.keep={keep}"]), runs, progress=False).run(
            until="prune"
        )
        weights = AutoModelForCausalLM.from_pretrained(runs / "smoke" / "prune").state_dict()
        got[keep] = (read_manifest(runs / "smoke" / "prune"), weights)
    (pruned, w0), (kept, w1) = got["false"], got["true"]
    assert pruned["weights"] == "pruned" and kept["weights"] == "short-distilled"
    assert kept["candidates"] == pruned["candidates"] and kept["target_shape"] == pruned["target_shape"]
    winner = kept["candidates"][0]
    assert "heldout_loss_released" not in pruned["metrics"]
    assert kept["metrics"]["heldout_loss_released"] == pytest.approx(winner["heldout_loss_distilled"], rel=1e-4)
    assert kept["metrics"]["heldout_loss_released"] < kept["metrics"]["heldout_loss_after"] == winner["heldout_loss"]
    assert w0.keys() == w1.keys() and all(w0[k].shape == w1[k].shape for k in w0)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert not list((runs / "smoke" / ".work").glob("prune-*"))  # the candidates' weights went with the work dir


def test_rank_by_distill_resumes_after_a_kill(runs, monkeypatch):
    """Killed during the second candidate's short distillation, a rerun measures only
    the candidates still missing and ends with the uninterrupted ranking."""
    import factory.training.loop as loop

    ranked = [
        "stages.prune.target_hidden_size=null",
        "stages.prune.target_ffn_hidden_size=null",
        "stages.prune.target_num_attention_heads=null",
        "stages.prune.target_num_query_groups=null",
        "stages.prune.target_params=60k",
        "stages.prune.candidate_multiple=16",
        "stages.prune.rank_by=distill",
        "stages.prune.rank_distill.top=3",
        "stages.prune.rank_distill.max_tokens=256",
    ]
    Pipeline(load_recipe(SMOKE, ranked), runs, progress=False).run(until="prune")
    want = read_manifest(runs / "smoke" / "prune")["candidates"]

    real, calls, kill = loop.train, [], [True]

    class Killed(Exception):
        pass

    def killed_on_second(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 2 and kill[0]:
            kill[0] = False
            raise Killed  # stands in for a kill mid-distillation
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train", killed_on_second)
    with pytest.raises(Killed):
        Pipeline(load_recipe(SMOKE, ranked), runs, progress=False).run(until="prune", force=["prune"])
    rank = next((runs / "smoke" / ".work").glob("prune-*")) / "rank"
    assert [d.name for d in rank.iterdir() if (d / "result.json").is_file()] == [
        re.sub(r"[^A-Za-z0-9]+", "-", min(want, key=lambda c: c["heldout_loss"])["candidate"])
    ]  # measured first
    calls.clear()
    Pipeline(load_recipe(SMOKE, ranked), runs, progress=False).run(until="prune", force=["prune"])
    assert len(calls) == 2  # the first candidate's measurement was kept
    assert read_manifest(runs / "smoke" / "prune")["candidates"] == want
