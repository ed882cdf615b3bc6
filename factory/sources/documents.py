"""A dataset's documents, whatever its format: text files, jsonl/parquet
columns, packaged and hub corpora (``factory.sources.datasets``) and chat or
preference records rendered as conversations (``factory.alignment.records``).

This module sits above both, so that the record parsers can read files
through the dataset readers without the readers knowing about records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from factory.alignment.records import iter_conversations, iter_preferences
from factory.sources.datasets import RECORD_FORMATS, DatasetSpec, files_of, hub_documents, packaged_documents, read_file
from factory.sources.models import resolve_path


def _record_documents(spec: DatasetSpec, base: Path) -> Iterator[list[dict]]:
    if spec.format == "preference":
        return (p.prompt + p.chosen for p in iter_preferences(spec, base))
    return (c.messages for c in iter_conversations(spec, base))


def iter_documents(spec: DatasetSpec, base: Path) -> Iterator[str | list[dict]]:
    """The dataset's documents in their stored order (callers shuffle): strings, or
    conversations (lists of messages) for record formats (a preference pair
    gives its prompt and chosen answer)."""
    if spec.format in RECORD_FORMATS:
        docs = _record_documents(spec, base)
    elif spec.packaged is not None:
        docs = packaged_documents(spec)
    elif spec.hub is not None:
        docs = hub_documents(spec)
    else:
        root = resolve_path(spec.path, base)
        docs = (d for p in files_of(root) for d in read_file(p, spec.format, spec))
    for i, doc in enumerate(docs):
        if spec.max_documents is not None and i >= spec.max_documents:
            return
        yield doc
