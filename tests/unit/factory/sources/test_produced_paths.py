"""Datasets made by stages are read from where the artifact is, whatever the working
directory or the recipe's directory; a data path that does not exist is an error."""

import json
import os
from pathlib import Path

import pytest

from factory.sources.datasets import DatasetSpec, files_of
from factory.sources.documents import iter_documents
from factory.sources.produced import dataset_from_artifact, dataset_manifest_entry
from foundation.errors import FactoryError


def test_artifact_under_a_relative_runs_dir_is_read_against_the_cwd(tmp_path, monkeypatch):
    art = tmp_path / "runs" / "r" / "answers"
    art.mkdir(parents=True)
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (art / "answers.jsonl").write_text(json.dumps(record) + "\n")
    manifest = {"kind": "generate", "config_hash": "c", "inputs": {}, "files": {}, "hash": "h"}
    manifest |= dataset_manifest_entry("answers.jsonl", "chat", "test", 1)
    (art / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    spec = dataset_from_artifact(Path("runs/r/answers"), "stages.t.data")
    assert Path(spec.path).is_absolute()
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    docs = list(iter_documents(spec, recipe_dir))  # the base a recipe's own relative paths use
    assert docs == [record["messages"]]
    assert os.getcwd() == str(tmp_path)


def test_a_missing_data_path_is_an_error_not_an_empty_dataset(tmp_path):
    with pytest.raises(FactoryError, match="no such file or directory"):
        files_of(tmp_path / "nope.jsonl")
    with pytest.raises(FactoryError, match="nope.jsonl: no such file"):
        list(iter_documents(DatasetSpec(path="nope.jsonl", format="chat"), tmp_path))
