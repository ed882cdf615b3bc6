"""The retention bench's recipe clone: one prune..candidate chain per fraction, one
evaluate stage over the teacher and every candidate, one gate per point."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from factory.recipe import load_recipe
from foundation.errors import FactoryError

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("retention", ROOT / "bench/retention.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

DEFAULT = yaml.safe_load((ROOT / "recipes/smollm2-minitron.yaml").read_text())


def loads(recipe: dict) -> None:
    """Validate a cloned recipe beside the shipped ones (its relative paths resolve there)."""
    path = ROOT / "recipes" / f".test-{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    try:
        load_recipe(path)
    finally:
        path.unlink()


def test_clone_has_one_chain_per_fraction_and_loads():
    recipe, meta = bench.curve_recipe(DEFAULT, [0.5, 0.8], 134_515_008, "recipe")
    stages = recipe["stages"]
    assert meta["candidate"] == "dpo"
    assert meta["chain"][0] == "prune" and meta["chain"][-1] == "dpo"
    for label, frac in (("p50", 0.5), ("p80", 0.8)):
        assert stages[f"prune_{label}"]["target_params"] == round(frac * 134_515_008)
        assert stages[f"distill_{label}"]["student"] == f"prune_{label}"
        assert stages[f"distill_{label}"]["teacher"] == "correct"  # shared, not cloned
        assert stages[f"dpo_{label}"]["model"] == f"sft_{label}"
        gate = stages[f"gate_{label}"]
        assert (gate["candidate"], gate["baseline"], gate["results"]) == (label, "teacher", "retention_eval")
        assert gate["default_max_drop"] == DEFAULT["stages"]["gate"]["default_max_drop"]
    assert stages["retention_eval"]["models"] == {"teacher": "teacher", "p50": "dpo_p50", "p80": "dpo_p80"}
    assert stages["retention_eval"]["suite"] == DEFAULT["stages"]["evaluate"]["suite"]
    for gone in ("prune", "distill", "dpo", "evaluate", "gate", "release"):
        assert gone not in stages
    assert "correct" in stages
    loads(recipe)  # the clone is a valid recipe (references, kinds, keys)


def test_explicit_target_shape_is_dropped_for_the_search():
    base = yaml.safe_load(yaml.safe_dump(DEFAULT))
    base["stages"]["prune"] = {"kind": "prune", "model": "correct", "target_ffn_hidden_size": 512}
    recipe, _ = bench.curve_recipe(base, [0.65], 1000, "r")
    assert recipe["stages"]["prune_p65"] == {"kind": "prune", "model": "correct", "target_params": 650}


def test_a_recipe_without_a_gate_is_refused_in_one_line():
    base = yaml.safe_load(yaml.safe_dump(DEFAULT))
    del base["stages"]["gate"], base["stages"]["release"]
    with pytest.raises(FactoryError, match="need exactly one gate stage, found 0"):
        bench.curve_recipe(base, [0.5], 1000, "r")


def test_sets_override_dotted_keys():
    base = bench.apply_sets(yaml.safe_load(yaml.safe_dump(DEFAULT)), ["stages.distill.max_tokens=1000"])
    assert base["stages"]["distill"]["max_tokens"] == 1000


def test_table_shows_interval_delta_and_verdict():
    data = {
        "points": [
            {
                "label": "teacher",
                "params": 100e6,
                "fraction": 1.0,
                "scores": {"t/m": {"value": 0.5, "lo": 0.4, "hi": 0.6}},
            },
            {
                "label": "p50",
                "params": 50e6,
                "fraction": 0.5,
                "scores": {"t/m": {"value": 0.3, "lo": 0.2, "hi": 0.4}},
                "delta": {"t/m": {"value": -0.2, "verdict": "FAIL"}},
                "gate_passed": False,
            },
        ]
    }
    text = bench.table(data, ["t/m"])
    assert "0.300 [0.200,0.400] -0.200 FAIL" in text and text.splitlines()[-1].endswith("FAIL")
    assert "100.0M" in text and "0.50" in text


_spec2 = importlib.util.spec_from_file_location("align_distill", ROOT / "bench/align_distill.py")
order = importlib.util.module_from_spec(_spec2)
_spec2.loader.exec_module(order)


def test_order_recipe_adds_a_prose_only_twin_at_equal_tokens():
    recipe, models = order.order_recipe(DEFAULT, 0.8, 134_515_008, None)
    stages = recipe["stages"]
    assert recipe["name"] == "smollm2-minitron-retention"  # shares the retention run's artifacts
    mix, prose = stages["distill_p80"], stages["distill_prose_only_p80"]
    assert prose["data"] == "prose_tok" and mix["data"]["blend"][0][1] == "prose_tok"
    assert {k: v for k, v in prose.items() if k != "data"} == {k: v for k, v in mix.items() if k != "data"}
    assert stages["sft_prose_only_p80"]["model"] == "distill_prose_only_p80"
    assert "dpo_p80" not in stages and "pairs_p80" not in stages and "gate_p80" not in stages
    assert stages["order_eval"]["models"] == models
    assert stages["order_eval"]["suite"]["tasks"][0] == {"task": "ifeval", "sampling": {"max_tokens": 256}}
    loads(recipe)


def test_markdown_shows_interval_delta_and_gate():
    data = {
        "points": [
            {"label": "teacher", "params": 100e6, "fraction": 1.0, "target_fraction": 1.0,
             "scores": {"t/m": {"value": 0.5, "lo": 0.4, "hi": 0.6}}},
            {"label": "p90", "params": 90e6, "fraction": 0.9, "target_fraction": 0.9,
             "scores": {"t/m": {"value": 0.48, "lo": 0.38, "hi": 0.58}},
             "delta": {"t/m": {"value": -0.02, "lo": -0.05, "hi": 0.01, "verdict": "pass"}}, "gate_passed": True},
        ]
    }  # fmt: skip
    rows = bench.markdown(data, ["t/m"]).splitlines()
    assert rows[2] == "| teacher | 100.0M | 1.00 | 0.500 [0.400, 0.600] |  |"
    assert rows[3] == "| p90 (0.90) | 90.0M | 0.90 | 0.480 [0.380, 0.580]; -0.020 [-0.050, +0.010] pass | **PASS** |"
