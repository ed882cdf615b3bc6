"""The prune stage end to end on the smoke recipe."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from factory.artifacts import read_manifest
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
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
    recipe = load_recipe(SMOKE, ["stages.prune.target_ffn_hidden_size=32", "stages.prune.target_num_query_groups=1",
                                 "stages.prune.target_num_attention_heads=2"])
    Pipeline(recipe, runs, progress=False).run(until="distill")
    # prune and what depends on it; correct stays cached
    assert [e["stage"] for e in _events(runs)[n:] if e["event"] == "start"] == ["prune", "distill"]
    m = read_manifest(runs / "smoke" / "prune")
    assert m["importance_reused"] is True
    assert m["target_shape"]["num_query_groups"] == 1 and m["target_shape"]["ffn_hidden_size"] == 32


def test_budget_search_and_depth_pruning(runs):
    recipe = load_recipe(SMOKE, ["stages.prune.target_hidden_size=null", "stages.prune.target_ffn_hidden_size=null",
                                 "stages.prune.target_num_attention_heads=null", "stages.prune.target_num_query_groups=null",
                                 "stages.prune.target_params=60k", "stages.prune.candidate_multiple=16",
                                 "models.teacher.tiny.num_hidden_layers=4"])
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
