"""`factory eval DIR` on a directory that holds no model fails at once, in one whole line, exit 2:
before any task loads and before the output dir (or its completions lock) exists."""

import pytest

import evals.cli
from evals.cli import check_model_dir
from factory.cli import main
from foundation.errors import FactoryError


@pytest.fixture
def no_tasks(monkeypatch):
    """Loading the suite (and so its tasks) is the first thing a valid eval does: here it must not happen."""

    def refuse(*_a, **_k):
        raise AssertionError("the suite was loaded before the model dir was checked")

    monkeypatch.setattr(evals.cli, "load_suite", refuse)


@pytest.mark.parametrize(
    "files,missing",
    [
        ((), "no config.json, no weights (*.safetensors, *.bin), no tokenizer (tokenizer.json, tokenizer_config.json)"),
        (("config.json",), "no weights (*.safetensors, *.bin), no tokenizer (tokenizer.json, tokenizer_config.json)"),
        (("config.json", "tokenizer.json"), "no weights (*.safetensors, *.bin)"),
        (("config.json", "model.safetensors"), "no tokenizer (tokenizer.json, tokenizer_config.json)"),
    ],
)
def test_eval_of_a_dir_without_a_model_fails_fast(tmp_path, capsys, no_tasks, files, missing):
    model = tmp_path / "model"
    model.mkdir()
    for name in files:
        (model / name).write_text("{}")
    out = tmp_path / "out"
    assert main(["eval", str(model), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {model}: not a model directory: {missing}\n"
    assert not out.exists()  # no completions.jsonl.lock, no results left behind


def test_a_complete_model_dir_passes_the_check(tmp_path):
    for name in ("config.json", "model-00001-of-00002.safetensors", "tokenizer_config.json"):
        (tmp_path / name).write_text("{}")
    check_model_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(FactoryError, match="no tokenizer"):
        check_model_dir(tmp_path)


def test_cached_only_and_served_models_skip_the_check(tmp_path, capsys, monkeypatch):
    """--cached-only scores a cache without the model; --engine openai names a served model."""
    calls = []

    def reached(*args, **_kw):
        calls.append(args)
        raise FactoryError("suite reached")

    monkeypatch.setattr(evals.cli, "load_suite", reached)
    for extra in (["--cached-only"], ["--engine", "openai"], ["--base-url", "http://localhost:1/v1"]):
        assert main(["eval", str(tmp_path), *extra, "--no-progress"]) == 2
        assert capsys.readouterr().err == "error: suite reached\n"
    assert len(calls) == 3
