"""Verifier-built preference pairs: sampled by a model, judged by verifiers,
consumed by a dpo stage as its data."""

import json
import random

import pytest

from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from factory.stages.pairs import PairsConfig, choose_pair
from foundation.artifacts import read_manifest

RECIPE = """
name: pairs
seed: 0
models:
  base: {tiny: {num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 128}}
stages:
  pairs: {kind: pairs, model: base, source: constraints, prompts: 16, samples_per_prompt: 4, temperature: 1.5,
          max_new_tokens: 16}
"""


def test_choose_pair_prefers_shortest_pass_and_needs_both():
    cfg = PairsConfig(model="m")
    rng = random.Random(0)
    assert choose_pair(["long passing answer", "ok", "bad"], [1.0, 1.0, 0.0], cfg, rng) == ("ok", "bad")
    assert choose_pair(["a", "b"], [1.0, 1.0], cfg, rng) is None  # nothing failed
    assert choose_pair(["a", "b"], [0.0, 0.7], cfg, rng) is None  # nothing passed
    assert choose_pair(["a", "  "], [1.0, 0.0], cfg, rng) is None  # an empty answer is no rejection


def test_constraint_pairs_are_verified(tmp_path):
    from factory.alignment.verifiers import constraint_items

    (tmp_path / "r.yaml").write_text(RECIPE)
    runs = tmp_path / "runs"
    Pipeline(load_recipe(tmp_path / "r.yaml"), runs, progress=False).run()
    art = runs / "pairs" / "pairs"
    man = read_manifest(art)
    recs = [json.loads(x) for x in (art / "pairs.jsonl").read_text().splitlines()]
    assert man["dataset"]["format"] == "preference" and man["dataset"]["records"] == len(recs)
    assert man["metrics"]["prompts"] == 16 and 0 < man["metrics"]["sample_pass_rate"] < 1
    items = {it.id: it for it in constraint_items(16, 0)}
    for r in recs:  # every chosen passes its verifier, every rejected fails it
        assert items[r["id"]].check(r["chosen"]) == 1.0
        assert items[r["id"]].check(r["rejected"]) < 0.5
        assert r["messages"] == items[r["id"]].messages
    # a dpo stage naming this stage as its data reads exactly this file
    from factory.sources.produced import dataset_from_artifact

    spec = dataset_from_artifact(art, "stages.dpo.data")
    assert spec.format == "preference" and spec.path == str(art / "pairs.jsonl")


SLOW_RECIPE = """
name: pairs-smollm2
seed: 0
models:
  teacher: {packaged: smollm2-135m-instruct}
stages:
  pairs: {kind: pairs, model: teacher, source: constraints, prompts: 16, samples_per_prompt: 4, max_new_tokens: 64}
  dpo: {kind: dpo, model: teacher, data: pairs, seq_len: 256, batch_size: 2, epochs: 1, eval_pairs: 2, lr: 1.0e-6}
"""


@pytest.mark.slow
def test_teacher_pairs_feed_dpo(tmp_path):
    (tmp_path / "r.yaml").write_text(SLOW_RECIPE)
    runs = tmp_path / "runs"
    Pipeline(load_recipe(tmp_path / "r.yaml"), runs, progress=False).run()
    pairs = read_manifest(runs / "pairs-smollm2" / "pairs")
    assert pairs["metrics"]["pairs"] >= 3
    dpo = read_manifest(runs / "pairs-smollm2" / "dpo")
    assert dpo["data"]["pairs"] + dpo["data"]["heldout_pairs"] == pairs["metrics"]["pairs"]
    assert dpo["sources"]["pairs"] == "stage pairs"


@pytest.mark.slow
def test_reasoning_gym_items_score_their_own_answers():
    import reasoning_gym

    from factory.alignment.verifiers import reasoning_gym_items

    items = list(reasoning_gym_items(["basic_arithmetic"], 5, 3))
    ds = reasoning_gym.create_dataset("basic_arithmetic", size=5, seed=3)
    for it, entry in zip(items, ds):
        assert it.check(f"Some thinking.\nAnswer: {entry['answer']}") == 1.0
        assert it.check("Answer: 123456789") < 0.5


def test_no_pair_at_all_is_one_line_not_an_empty_dataset(tmp_path):
    """With one-token answers no prompt gets both a passing and a (non-empty) failing answer;
    the stage says so instead of publishing an empty file that the dpo stage after it would reject."""
    from foundation.errors import FactoryError

    (tmp_path / "r.yaml").write_text(RECIPE.replace("max_new_tokens: 16", "max_new_tokens: 1"))
    runs = tmp_path / "runs"
    with pytest.raises(
        FactoryError,
        match=r"stages.pairs: no prompt got both a passing and a failing answer \(\d+ of 64 samples passed\)",
    ):
        Pipeline(load_recipe(tmp_path / "r.yaml"), runs, progress=False).run()
    assert read_manifest(runs / "pairs" / "pairs") is None
