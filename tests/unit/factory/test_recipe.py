"""Malformed recipes: each gives one line naming the file and YAML path, exit 2."""

import subprocess
import sys
import textwrap

import pytest

from factory.cli import main

GOOD = """
name: r
models:
  teacher: {tiny: {num_hidden_layers: 1}}
datasets:
  corpus: {path: corpus.txt}
stages:
  correct: {kind: correct, model: teacher, data: corpus, seq_len: 16, max_tokens: 64, eval_tokens: 32}
"""

CASES = {
    "yaml_syntax": ("name: r\nstages: {correct: [\n", [], "r.yaml:3: YAML syntax error"),
    "not_mapping": ("- a\n- b\n", [], "a recipe must be a mapping"),
    "missing_name": (GOOD.replace("name: r\n", ""), [], "r.yaml: name: missing required key"),
    "unknown_top_key": (GOOD + "extra: 1\n", [], "r.yaml: extra: unknown key"),
    "unknown_engine": (GOOD + "engine: magic\n", [], "engine: unknown engine 'magic'"),
    "unknown_kind": (
        GOOD.replace("kind: correct", "kind: corect"),
        [],
        "stages.correct.kind: unknown stage kind 'corect'",
    ),
    "missing_kind": (GOOD.replace("kind: correct, ", ""), [], "stages.correct.kind: missing required key"),
    "wrong_type": (GOOD, ["stages.correct.max_tokens=abc"], "stages.correct.max_tokens: expected int, got 'abc'"),
    "unknown_stage_key": (GOOD, ["stages.correct.lrr=0.1"], "stages.correct.lrr: unknown key"),
    "dangling_model": (
        GOOD.replace("model: teacher", "model: student"),
        [],
        "stages.correct.model: 'student' is neither",
    ),
    "dangling_dataset": (
        GOOD.replace("data: corpus", "data: wiki"),
        [],
        "stages.correct.data: 'wiki' is neither a datasets: entry nor a stage",
    ),
    "cycle": (
        GOOD.replace("model: teacher", "model: again") + "  again: {kind: correct, model: correct, data: corpus}\n",
        [],
        "dependency cycle",
    ),
    "self_reference": (GOOD.replace("model: teacher", "model: correct"), [], "cannot take its own output"),
    "missing_file": (GOOD.replace("corpus.txt", "nope.txt"), [], "datasets.corpus.path: no such file or directory"),
    "two_sources": (
        GOOD.replace("{tiny: {num_hidden_layers: 1}}", "{tiny: {}, hub: x/y}"),
        [],
        "models.teacher: give exactly one of path, hub, packaged, tiny",
    ),
    "unknown_packaged": (
        GOOD.replace("{tiny: {num_hidden_layers: 1}}", "{packaged: gpt-5}"),
        [],
        "models.teacher.packaged: unknown packaged model 'gpt-5'",
    ),
    "not_positive": (GOOD, ["stages.correct.seq_len=0"], "stages.correct.seq_len: must be positive"),
    "bad_gqa": (
        GOOD.replace("num_hidden_layers: 1", "num_attention_heads: 4, num_key_value_heads: 3"),
        [],
        "models.teacher.tiny.num_key_value_heads: must divide num_attention_heads",
    ),
    "bad_override_syntax": (GOOD, ["stages.correct.lr"], "bad override 'stages.correct.lr'"),
    "override_wrong_type": (GOOD, ["stages.correct.lr=fast"], "stages.correct.lr: expected float, got 'fast'"),
    "name_clash": (
        GOOD.replace("stages:\n  correct:", "stages:\n  teacher:"),
        [],
        "stages.teacher: stage name clashes",
    ),
    "no_stages": (GOOD.split("stages:")[0] + "stages: {}\n", [], "stages: a recipe needs at least one stage"),
    "bad_run_name": (GOOD.replace("name: r", "name: my run"), [], "name: 'my run' is not a valid run name"),
    "bad_interpolation": (GOOD + "description: ${nowhere}\n", [], "cannot resolve interpolation"),
    "not_a_checkpoint": (GOOD.replace("{tiny: {num_hidden_layers: 1}}", "{path: .}"), [], "models.teacher.path: "),
    "bad_literal": (
        GOOD,
        ["stages.correct.dtype=float8"],
        "stages.correct.dtype: expected one of 'float32', 'bfloat16'",
    ),
    "stage_not_mapping": (GOOD + "  other: 3\n", [], "stages.other: expected a mapping with a `kind`"),
    "min_lr_range": (GOOD, ["stages.correct.min_lr_ratio=2"], "stages.correct.min_lr_ratio: must be in [0, 1]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_recipe(case, tmp_path, capsys):
    text, overrides, expected = CASES[case]
    (tmp_path / "corpus.txt").write_text("some text\n\nmore text\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(text))
    rc = main(["validate", str(recipe), *overrides])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert expected in err, err
    if case not in ("bad_override_syntax",):
        assert "r.yaml" in err


def test_good_recipe_validates(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("x")
    (tmp_path / "r.yaml").write_text(GOOD)
    assert main(["validate", str(tmp_path / "r.yaml")]) == 0
    assert "ok (1 stages: correct)" in capsys.readouterr().out


def test_missing_recipe_file(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: no such recipe file" in capsys.readouterr().err


def test_cli_prints_no_traceback(tmp_path):
    (tmp_path / "r.yaml").write_text("name: r\nstages: {a: {kind: nope}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "validate", str(tmp_path / "r.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    from factory.stages.base import stage_kinds

    known = ", ".join(sorted(stage_kinds()))
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'r.yaml'}: stages.a.kind: unknown stage kind 'nope' (known: {known})"
    ]


def test_overrides_may_follow_options_but_stray_arguments_are_refused(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("x")
    (tmp_path / "r.yaml").write_text(GOOD)
    rc = main(["plan", str(tmp_path / "r.yaml"), "--runs-dir", str(tmp_path / "runs"), "stages.correct.lr=fast"])
    assert rc == 2 and "stages.correct.lr: expected float, got 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["plan", str(tmp_path / "r.yaml"), "--runs-dir", str(tmp_path / "runs"), "stray"])
    assert e.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ls", "a=b"])  # ls takes no overrides
