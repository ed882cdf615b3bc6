"""Bugs that stopped generated nemo jobs before the GPU boundary, each pinned by a test."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from factory.engines.nemo import capabilities
from factory.engines.nemo.scripts import job_tools
from factory.engines.nemo.specs import export_argv
from foundation.errors import ConfigError
from tests.conftest import RECIPES
from tests.unit.factory.engines.nemo.test_jobs import dry_run, spec_of

# The options each NeMo converter's own ArgumentParser accepts (scripts/checkpoint_converters,
# NeMo v2.1.0 through main; tests/nemo_env checks the generated calls against the parsers themselves).
MISTRAL_7B_NEMO_TO_HF = {"--input_name_or_path", "--output_path", "--hf_model_name", "--precision"}
LLAMA_NEMO_TO_HF = {"--input_name_or_path", "--output_path", "--hf_input_path", "--hf_output_path"}
LLAMA_NEMO_TO_HF |= {"--hf_output_tokenizer", "--input_tokenizer", "--precision", "--cpu-only"}


def options(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_mistral_export_uses_only_the_options_its_converter_accepts(stage, tmp_path):
    run = dry_run(RECIPES / "paper/mn-minitron-8b.yaml", [], tmp_path)
    finish = spec_of(run, stage)["steps"]["finish"]
    (export,) = [s for s in finish if s[1].endswith("convert_mistral_7b_nemo_to_hf.py")]
    assert options(export) <= MISTRAL_7B_NEMO_TO_HF
    args = dict(zip(export[2::2], export[3::2]))
    # a full HF directory where finalize looks, config and tokenizer from the stage's input (no hub id)
    assert args["--output_path"] == f"$RUN_DIR/.nemo/{stage}/hf"
    assert args["--hf_model_name"] == f"$RUN_DIR/{spec_of(run, stage)['inputs']['model']}"


def test_llama_export_keeps_the_full_hf_directory_options():
    argv = export_argv("llama", "$RUN_DIR/.nemo/sft", "$RUN_DIR/prune")
    assert options(argv) <= LLAMA_NEMO_TO_HF
    assert argv[argv.index("--hf_output_path") + 1] == "$RUN_DIR/.nemo/sft/hf"


def test_null_max_position_embeddings_is_repaired_from_the_input(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    (src / "config.json").write_text(json.dumps({"max_position_embeddings": 1024000, "sliding_window": None}))
    (dst / "config.json").write_text(json.dumps({"max_position_embeddings": None, "sliding_window": None}))
    (src / "tokenizer.json").write_text("{}")
    assert job_tools.carry_over(src, dst) == ["tokenizer.json", "config.json:max_position_embeddings"]
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg == {"max_position_embeddings": 1024000, "sliding_window": None}  # a null window stays null
    assert job_tools.carry_over(src, dst) == []  # idempotent


def test_a_set_max_position_embeddings_is_kept(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    (src / "config.json").write_text(json.dumps({"max_position_embeddings": 131072}))
    (dst / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    assert job_tools.repair_config(src, dst) == []
    assert json.loads((dst / "config.json").read_text())["max_position_embeddings"] == 4096


def test_query_group_pruning_follows_the_pinned_modelopt(tmp_path):
    assert capabilities.MODELOPT_VERSION == "0.37.0" and capabilities.prunes_query_groups()
    # half the heads in half the groups (4 heads per group, as the source); with 16 heads of 128
    # the head_dim no longer equals hidden / heads, so alignment stays native
    groups = ["stages.prune.target_num_attention_heads=16", "stages.prune.target_num_query_groups=4"]
    run = dry_run(
        RECIPES / "paper/mn-minitron-8b.yaml", [*groups, "engines.sft=native", "engines.dpo=native"], tmp_path
    )
    pc = spec_of(run, "prune")["nemo2"]["pruning_config"]
    assert pc["target_num_attention_heads"] == 16 and pc["target_num_query_groups"] == 4


def test_a_modelopt_without_group_pruning_is_refused_by_its_version():
    cfg = SimpleNamespace(target_num_query_groups=4, target_num_attention_heads=16)
    src = {"num_attention_heads": 32, "num_key_value_heads": 8}
    with pytest.raises(ConfigError) as err:
        capabilities.check_query_groups(cfg, src, "stages.prune", modelopt_version="0.41.0")
    assert "ModelOpt 0.41.0's mcore_minitron does not prune query groups" in str(err.value)
    assert "keep the source's 8" in str(err.value)
    capabilities.check_query_groups(cfg, src, "stages.prune", modelopt_version="0.40.1")


def test_version_tuple():
    assert capabilities.version_tuple("0.37.0") == (0, 37, 0)
    assert capabilities.version_tuple("0.41.0rc1") == (0, 41, 1)
    assert not capabilities.prunes_query_groups("0.41.0rc1") and capabilities.prunes_query_groups("0.40.9")


def test_a_tokenize_stage_runs_natively_under_the_nemo_engine(tmp_path):
    from factory.executors import executor_name
    from factory.recipe import load_recipe
    from tests.unit.factory.engines.nemo import test_data

    text = test_data.RECIPE.replace("engines: {web: native, code: native, bare: native}\n", "")
    text = text.replace("  other: {path: other}\n", "")
    (tmp_path / "corpus.txt").write_text("one paragraph\n\nanother one")
    path = tmp_path / "r.yaml"
    path.write_text(text.replace("DATA", "text").replace("TOKENIZER", "teacher"))
    recipe = load_recipe(path)  # raised "the nemo engine has no job for stage kind 'tokenize'" before
    assert [executor_name(recipe, s) for s in recipe.stages] == ["native", "native", "native", "nemo"]
