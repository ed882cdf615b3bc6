"""factory.executors: which executor runs each stage of a recipe."""

from __future__ import annotations

from factory.engines import ENGINES
from factory.engines.native import NativeExecutor
from factory.engines.nemo.executor import NemoExecutor
from factory.executors import EXECUTORS, engines_used, executor_name
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from tests.conftest import RECIPES, write

ONE_NEMO_STAGE = """
name: one-nemo
engines: {distill: nemo}
nemo: {gpus_per_node: 1}
models: {teacher: {tiny: {num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4,
                          num_key_value_heads: 2, intermediate_size: 128}}}
datasets: {corpus: {path: corpus.txt, licence: CC0-1.0}}
stages:
  correct: {kind: correct, model: teacher, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 128}
  distill: {kind: distill, student: correct, teacher: teacher, data: corpus, seq_len: 32, batch_size: 2,
            max_tokens: 128}
  again: {kind: correct, model: distill, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 128}
"""


def test_every_engine_has_an_executor():
    assert set(EXECUTORS) == set(ENGINES)
    assert all(EXECUTORS[name].engine == name for name in ENGINES)


def test_a_stage_pinned_to_nemo_gets_the_nemo_executor_and_the_others_native(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"paragraph {i} " * 20 for i in range(10)))
    recipe = load_recipe(write(tmp_path / "r.yaml", ONE_NEMO_STAGE))
    assert {s: executor_name(recipe, s) for s in recipe.stages} == {
        "correct": "native",
        "distill": "nemo",
        "again": "native",
    }
    assert engines_used(recipe) == {"native", "nemo"}
    pipe = Pipeline(recipe, tmp_path / "runs", progress=False)
    assert isinstance(pipe.executor("distill"), NemoExecutor)
    assert isinstance(pipe.executor("correct"), NativeExecutor)
    assert pipe.executor("again") is pipe.executor("correct")  # one executor per engine for the run


def test_kinds_without_a_nemo_job_run_natively_under_the_nemo_engine():
    recipe = load_recipe(
        RECIPES / "smollm2-minitron.yaml", ["engine=nemo", "engines.prune=native", "nemo.gpus_per_node=4"]
    )
    chosen = {s: executor_name(recipe, s) for s in recipe.stages}
    assert chosen == {
        "correct": "nemo",
        "prune": "native",
        "answers": "native",  # generate, tokenize and pairs have no NeMo job
        "answers_tok": "native",
        "prose_tok": "native",
        "distill": "nemo",
        "sft": "nemo",
        "pairs": "native",
        "dpo": "nemo",
        "evaluate": "native",
        "gate": "native",
        "release": "native",
    }
    assert recipe.engine_of("evaluate") == "nemo"  # the recipe's engine, which its manifest records


def test_a_native_recipe_uses_only_the_native_executor():
    assert engines_used(load_recipe(RECIPES / "smoke.yaml")) == {"native"}
