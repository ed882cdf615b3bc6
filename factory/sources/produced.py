"""Datasets made by stages (e.g. verifier-built preference pairs): the artifact
names its data file, format and licence in its manifest under ``dataset``. A
``tokenize`` stage's corpus becomes a spec of format ``megatron-indexed`` whose
path is the artifact dir (read it with ``factory.corpus.load_corpus``)."""

from __future__ import annotations

from pathlib import Path

from factory.corpus.artifact import CORPUS_FORMAT
from factory.sources.datasets import DatasetSpec
from foundation.artifacts import read_manifest
from foundation.errors import FactoryError


def dataset_manifest_entry(file: str, format: str, licence: str, records: int) -> dict:
    """What a data-producing stage puts in its manifest's ``extra``."""
    return {"dataset": {"file": file, "format": format, "licence": licence, "records": records}}


def dataset_from_artifact(artifact: Path, where: str) -> DatasetSpec:
    artifact = artifact.resolve()  # a relative runs dir must not be read against the recipe's directory
    manifest = read_manifest(artifact)
    entry = (manifest or {}).get("dataset")
    if not entry:
        raise FactoryError(f"{where}: stage artifact {artifact} holds no dataset (it is not a data-producing stage)")
    if entry["format"] == CORPUS_FORMAT:  # a tokenized corpus is read as a whole: factory.corpus.load_corpus(path)
        return DatasetSpec(path=str(artifact), format=CORPUS_FORMAT, licence=entry["licence"])
    return DatasetSpec(path=str(artifact / entry["file"]), format=entry["format"], licence=entry["licence"])
