"""Impossible pruning targets fail `factory validate` with one line naming the key."""

import json

import pytest

from factory.cli import main

RECIPE = """
name: p
models:
  teacher: {tiny: {num_hidden_layers: 4, hidden_size: 72, num_attention_heads: 9, num_key_value_heads: 3, intermediate_size: 96}}
  smol: {packaged: smollm2-135m-instruct}
  other: {path: gpt2dir}
datasets:
  corpus: {path: corpus.txt}
stages:
  prune: {kind: prune, model: teacher, calibration: {data: corpus}, target_hidden_size: 36}
"""

CASES = {
    "larger_than_source": (
        ["stages.prune.target_ffn_hidden_size=200"],
        "stages.prune.target_ffn_hidden_size: 200 is larger than the source's 96",
    ),
    "heads_not_multiple_of_groups": (
        ["stages.prune.target_num_attention_heads=4", "stages.prune.target_num_query_groups=3"],
        "stages.prune.target_num_attention_heads: 4 is not a multiple of the 3 kept query groups",
    ),
    "heads_not_whole_groups": (
        ["stages.prune.target_num_attention_heads=4"],
        "4 heads cannot be whole query groups of 3",
    ),
    "too_many_heads_per_group": (
        ["stages.prune.target_num_attention_heads=8", "stages.prune.target_num_query_groups=2"],
        "needs 4 heads per group; the source has 3",
    ),
    "hidden_heads_cannot_fill": (
        ["stages.prune.target_hidden_size=40"],
        "stages.prune.target_hidden_size: 40 is not a multiple of 9 heads",
    ),
    "drop_layers_out_of_range": (
        ["stages.prune.drop_layers=[1,7]"],
        "stages.prune.drop_layers: layer 7 is out of range 0..3",
    ),
    "depth_contradiction": (
        ["stages.prune.drop_layers=[1]", "stages.prune.target_num_layers=2"],
        "stages.prune.drop_layers: drops 1 of 4 layers, which contradicts target_num_layers 2",
    ),
    "unsupported_architecture": (["stages.prune.model=other"], "stages.prune.model: cannot prune model_type 'gpt2'"),
    "budget_and_targets": (
        ["stages.prune.target_params=50k"],
        "stages.prune.target_params: cannot be combined with target_hidden_size",
    ),
    "budget_too_big": (
        ["stages.prune.target_hidden_size=null", "stages.prune.model=smol", "stages.prune.target_params=200M"],
        "stages.prune.target_params: 200,000,000 is not below the source's 134,515,008",
    ),
    "no_target": (["stages.prune.target_hidden_size=null"], "stages.prune: no pruning target"),
    "rank_by_distill_one_candidate": (
        ["stages.prune.rank_by=distill"],
        "stages.prune.rank_by: distill ranks the candidates of target_params",
    ),
    "rank_by_unknown": (["stages.prune.rank_by=kl"], "stages.prune.rank_by"),
    "keep_without_distill": (
        [
            "stages.prune.target_hidden_size=null",
            "stages.prune.target_ffn_hidden_size=null",
            "stages.prune.target_num_attention_heads=null",
            "stages.prune.target_num_query_groups=null",
            "stages.prune.target_params=60k",
            "stages.prune.rank_distill.keep=true",
        ],
        "stages.prune.rank_distill.keep: keeps the short distillation of rank_by: distill",
    ),
    "rank_distill_top_zero": (
        [
            "stages.prune.target_hidden_size=null",
            "stages.prune.target_params=50k",
            "stages.prune.rank_by=distill",
            "stages.prune.rank_distill.top=0",
        ],
        "stages.prune.rank_distill.top: must be >= 1 or null",
    ),
    "rank_distill_no_tokens": (
        ["stages.prune.rank_distill.max_tokens=0"],
        "stages.prune.rank_distill.max_tokens: must be positive",
    ),
    "missing_calibration_data": (
        ["stages.prune.calibration.data=wiki"],
        "stages.prune.calibration.data: 'wiki' is neither a datasets: entry nor a stage",
    ),
    "bad_calibration_key": (["stages.prune.calibration.sample=3"], "stages.prune.calibration.sample: unknown key"),
    "keep_no_layer": (
        ["stages.prune.target_hidden_size=null", "stages.prune.drop_layers=[0,1,2,3]"],
        "stages.prune.target_num_layers: must keep at least one layer",
    ),
    "smollm2_fifth_head": (
        ["stages.prune.model=smol", "stages.prune.target_hidden_size=384", "stages.prune.target_num_attention_heads=5"],
        "5 heads cannot be whole query groups of 3",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_impossible_target(case, tmp_path, capsys):
    overrides, expected = CASES[case]
    (tmp_path / "corpus.txt").write_text("text")
    (tmp_path / "gpt2dir").mkdir()
    (tmp_path / "gpt2dir" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (tmp_path / "p.yaml").write_text(RECIPE)
    rc = main(["validate", str(tmp_path / "p.yaml"), *overrides])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert expected in err, err


def test_valid_targets_pass(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("text")
    (tmp_path / "gpt2dir").mkdir()
    (tmp_path / "gpt2dir" / "config.json").write_text("{}")
    (tmp_path / "p.yaml").write_text(RECIPE)
    assert (
        main(
            [
                "validate",
                str(tmp_path / "p.yaml"),
                "stages.prune.target_num_attention_heads=6",
                "stages.prune.target_num_query_groups=2",
                "stages.prune.drop_layers=[1,2]",
            ]
        )
        == 0
    )
