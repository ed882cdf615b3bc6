"""`factory eval NAME` takes a packaged model's name as well as a directory; an unknown
name is one line listing the known ones. Labels are readable by default (never a cache
hash), and `--limit` says in one line which tasks the suite caps lower."""

import argparse
import json
from pathlib import Path

import pytest

import evals.cli
from evals.cli import add_commands, check_model_dir, limit_notice, model_label, resolve_model
from evals.suite import load_suite
from factory.cli import PackagedModels, main
from factory.sources.models import PACKAGED_MODELS
from foundation.errors import FactoryError


class DirCatalog:
    """A catalog of models already on disk: name -> directory."""

    def __init__(self, dirs: dict[str, Path]):
        self.dirs, self.asked = dirs, []

    def names(self) -> list[str]:
        return sorted(self.dirs)

    def path(self, name: str) -> Path:
        self.asked.append(name)
        return self.dirs[name]


def test_the_factory_catalog_is_the_packaged_models():
    assert PackagedModels().names() == list(PACKAGED_MODELS) == ["smollm2-135m-instruct"]


def test_an_unknown_name_is_one_line_listing_the_packaged_models(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "smollm2-999m", "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        "error: smollm2-999m: no such model directory or packaged model (packaged models: "
        "smollm2-135m-instruct; a served model's name needs --engine openai or --base-url)\n"
    )
    assert not out.exists()


def test_the_suites_own_cli_names_where_packaged_models_are_known(tmp_path, capsys):
    assert evals.cli.main(["eval", "smollm2-135m-instruct", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "packaged model names are known to `factory eval`" in err


def test_a_packaged_name_resolves_to_its_directory_and_labels_by_name(tmp_path):
    catalog = DirCatalog({"smollm2-135m-instruct": tmp_path})
    assert resolve_model("smollm2-135m-instruct", None, catalog, served=False, cached_only=False) == (
        "smollm2-135m-instruct",
        "smollm2-135m-instruct",
    )
    assert resolve_model("smollm2-135m-instruct", "teacher", catalog, served=False, cached_only=False)[1] == "teacher"
    # a served model of the same name is the server's, not fetched
    assert resolve_model("smollm2-135m-instruct", None, catalog, served=True, cached_only=False) == (
        None,
        "smollm2-135m-instruct",
    )


def test_eval_of_a_packaged_name_runs_on_the_catalogs_directory(tmp_path, monkeypatch):
    """--cached-only stops at the missing completions file: the catalog was asked for the
    model's directory, and the default output dir is named by the model's name."""
    model = tmp_path / "0123456789abcdef"
    model.mkdir()
    catalog = DirCatalog({"tiny-model": model})
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"), catalog)
    ns = parser.parse_args(["eval", "tiny-model", "--cached-only", "--no-progress"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FactoryError) as e:
        ns.fn(ns)
    assert str(e.value) == "evals-out/tiny-model-quick/completions.jsonl: no such completions file to score"
    assert catalog.asked == ["tiny-model"]


def test_default_label_is_readable_not_a_cache_hash(tmp_path):
    plain = tmp_path / "SmolLM2-67M-Minitron-Instruct"
    plain.mkdir()
    assert model_label(plain) == "SmolLM2-67M-Minitron-Instruct"
    cached = tmp_path / "2e9e9f19154921aa"
    cached.mkdir()
    (cached / ".complete").write_text(json.dumps({"source": "packaged smollm2-135m-instruct"}))
    assert model_label(cached) == "smollm2-135m-instruct"
    (cached / ".complete").unlink()
    (cached / "config.json").write_text(json.dumps({"_name_or_path": "/tmp/x/SmolLM2-135M-Instruct.Q4_1"}))
    assert model_label(cached) == "SmolLM2-135M-Instruct.Q4_1"
    (cached / "config.json").write_text("{}")
    assert model_label(cached) == "2e9e9f19154921aa"  # nothing better known


def test_limit_notice_names_the_tasks_the_suite_caps_lower():
    quick = load_suite("quick")
    assert limit_notice(quick, 20) == (
        "[evals] --limit 20: suite quick caps these tasks lower, so they run at its limit: "
        "gsm8k (16), math500 (12), humaneval (12), mbpp (12), bfcl_simple (12), bfcl_multiple (12), "
        "bfcl_irrelevance (12)"
    )
    assert limit_notice(quick, 5) is None and limit_notice(quick, None) is None


def test_eval_prints_the_limit_notice(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    argv = ["eval", str(model), "--cached-only", "--limit", "20", "--tasks", "ifeval,gsm8k", "--out", str(tmp_path)]
    assert main(argv + ["--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "[evals] --limit 20: suite quick caps these tasks lower, so they run at its limit: gsm8k (16)",
        f"error: {tmp_path / 'completions.jsonl'}: no such completions file to score",
    ]


@pytest.mark.slow
def test_the_packaged_teacher_resolves_to_a_checkpoint_labelled_by_its_name():
    path = PackagedModels().path("smollm2-135m-instruct")
    check_model_dir(path)
    assert model_label(path) == "smollm2-135m-instruct"
