"""`factory validate` refuses numbers no run can use, and a directory given as the recipe:
one line naming the file and YAML path, exit 2, before any work starts."""

import pytest

from factory.cli import main

RECIPE = """
name: r
models:
  teacher: {{tiny: {{num_hidden_layers: 1}}}}
datasets:
  corpus: {{path: corpus.txt}}
stages:
  correct:
    kind: correct
    model: teacher
    data: corpus
    seq_len: 16
    eval_tokens: 32
    max_tokens: {max_tokens}
    lr: {lr}
"""


def _validate(tmp_path, capsys, max_tokens="64", lr="2.0e-5", overrides=()):
    (tmp_path / "corpus.txt").write_text("some text\n")
    (tmp_path / "r.yaml").write_text(RECIPE.format(max_tokens=max_tokens, lr=lr))
    code = main(["validate", str(tmp_path / "r.yaml"), *overrides])
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "max_tokens,lr,message",
    [
        # the integer 10^30 once validated and trained "forever" at a learning rate of ~1e-27
        (
            "1000000000000000000000000000000",
            "2.0e-5",
            "r.yaml: stages.correct.max_tokens: 1000000000000000000000000000000 is out of range: "
            "it does not fit a 64-bit integer",
        ),
        (
            "1000000000000000000",
            "2.0e-5",
            "r.yaml: stages.correct.max_tokens: 1000000000000000000 tokens at 64 tokens per step make 1.56e+16 "
            "optimizer steps, more than the 1e+09 a run can take",
        ),
        ("64", ".inf", "r.yaml: stages.correct.lr: expected a finite number, got float inf"),
        ("64", ".nan", "r.yaml: stages.correct.lr: expected a finite number, got float nan"),
        (
            "640",
            "1.0e-40",
            "r.yaml: stages.correct.lr: the schedule's smallest learning rate, 1e-41 (lr 1e-40 over 10 "
            "steps), underflows float32 (below 1.18e-38)",
        ),
    ],
)
def test_insane_numbers_fail_validate(tmp_path, capsys, max_tokens, lr, message):
    code, out = _validate(tmp_path, capsys, max_tokens, lr)
    assert code == 2 and out.out == ""
    assert out.err.strip() == f"error: {tmp_path / 'r.yaml'}: {message.removeprefix('r.yaml: ')}"


def test_lr_inf_as_an_override_fails_validate(tmp_path, capsys):
    code, out = _validate(tmp_path, capsys, overrides=["stages.correct.lr=inf"])
    assert code == 2
    assert out.err.strip() == f"error: {tmp_path / 'r.yaml'}: stages.correct.lr: expected a finite number, got 'inf'"


def test_a_large_but_representable_budget_validates(tmp_path, capsys):
    code, out = _validate(tmp_path, capsys, max_tokens="60B", lr="3.0e-4")
    assert code == 0, out.err
    assert "ok (1 stages: correct)" in out.out


def test_a_directory_as_the_recipe_says_it_is_a_directory(tmp_path, capsys):
    (tmp_path / "smoke.yaml").write_text("name: x\n")
    assert main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path}: is a directory, not a recipe file (YAML files in it: smoke.yaml)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plan", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {empty}: is a directory, not a recipe file"


def test_the_rank_distill_budget_of_prune_is_checked_too(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("some text\n")
    (tmp_path / "r.yaml").write_text(
        "name: r\nmodels:\n  teacher: {tiny: {num_hidden_layers: 2}}\ndatasets:\n  corpus: {path: corpus.txt}\n"
        "stages:\n  prune:\n    kind: prune\n    model: teacher\n    target_params: 1M\n    rank_by: distill\n"
        "    calibration: {data: corpus, seq_len: 16}\n    rank_distill: {max_tokens: 1T, batch_size: 4}\n"
    )
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path / 'r.yaml'}: stages.prune.rank_distill.max_tokens: 1000000000000 tokens at "
        "64 tokens per step make 1.56e+10 optimizer steps, more than the 1e+09 a run can take"
    )
