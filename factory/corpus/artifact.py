"""The tokenized-corpus artifact: ``corpus.json`` plus Megatron shards under
``shards/``, as a ``tokenize`` stage writes it, and its loader.

``corpus.json`` names the tokenizer (a digest of its files), the shards of the
train and held-out splits with their document and token counts, and the
source's licence; the shard files' hashes are in the artifact's manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from factory.corpus.indexed import IndexedReader
from foundation.errors import FactoryError
from foundation.hashing import sha256_file, sha256_json

CORPUS_FILE = "corpus.json"
CORPUS_FORMAT = "megatron-indexed"  # the ``format`` of a dataset that is a tokenized corpus
# Files that decide how text becomes token ids (the chat template renders chat records).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)
# tokenizer_config.json keys a loader or saver records about itself, not about the tokenizer
BOOKKEEPING_KEYS = frozenset(
    {"is_local", "local_files_only", "name_or_path", "_commit_hash", "cache_dir", "revision", "token", "tokenizer_file"}
)


def tokenizer_digest(tokenizer_dir: Path) -> str:
    """sha256 over the tokenizer's files present in ``tokenizer_dir``. JSON files
    count by their parsed content (key order and layout do not matter), so the
    same tokenizer saved again by another stage keeps its digest; loader bookkeeping
    in ``tokenizer_config.json`` (``BOOKKEEPING_KEYS``) is left out."""
    parts = {}
    for name in TOKENIZER_FILES:
        path = Path(tokenizer_dir) / name
        if not path.is_file():
            continue
        if name.endswith(".json"):
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                content = None  # not JSON after all: hash its bytes
            if isinstance(content, dict):
                if name == "tokenizer_config.json":
                    content = {k: v for k, v in content.items() if k not in BOOKKEEPING_KEYS}
                parts[name] = sha256_json(content)
                continue
        parts[name] = sha256_file(path)
    if "tokenizer.json" not in parts and "vocab.json" not in parts and "tokenizer.model" not in parts:
        raise FactoryError(f"{tokenizer_dir}: no tokenizer files (tokenizer.json, vocab.json or tokenizer.model)")
    return sha256_json(parts)


@dataclass
class Corpus:
    """A loaded tokenized corpus: memory-mapped readers of its train and held-out shards."""

    root: Path
    meta: dict
    train: list[IndexedReader] = field(default_factory=list)
    heldout: list[IndexedReader] = field(default_factory=list)

    @property
    def tokenizer_sha256(self) -> str:
        return self.meta["tokenizer"]["sha256"]


def load_corpus(artifact_dir: Path, expect_tokenizer: str | None = None) -> Corpus:
    """The corpus in ``artifact_dir``. With ``expect_tokenizer`` (a ``tokenizer_digest``),
    shards made with another tokenizer are refused in one line naming both digests."""
    root = Path(artifact_dir)
    path = root / CORPUS_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FactoryError(f"{root}: not a tokenized corpus (no {CORPUS_FILE})") from None
    except ValueError as e:
        raise FactoryError(f"{path}: unreadable ({e})") from None
    if meta.get("format") != CORPUS_FORMAT:
        raise FactoryError(f"{path}: format {meta.get('format')!r}, expected {CORPUS_FORMAT!r}")
    have = meta["tokenizer"]["sha256"]
    if expect_tokenizer is not None and have != expect_tokenizer:
        raise FactoryError(
            f"{root}: shards were made with tokenizer {have}, the model's is {expect_tokenizer}: "
            "tokenize the corpus with the model's tokenizer"
        )
    corpus = Corpus(root=root, meta=meta)
    for split in ("train", "heldout"):
        for shard in meta[split]:
            reader = IndexedReader(root / shard["prefix"])
            if len(reader) != shard["documents"] or reader.total_tokens != shard["tokens"]:
                raise FactoryError(
                    f"{root / shard['prefix']}.idx: {len(reader)} documents / {reader.total_tokens} tokens, "
                    f"{CORPUS_FILE} says {shard['documents']} / {shard['tokens']}"
                )
            getattr(corpus, split).append(reader)
    return corpus


def is_corpus(spec) -> bool:
    """Whether a dataset spec (``factory.sources.datasets.DatasetSpec``) names a tokenized corpus."""
    return getattr(spec, "format", None) == CORPUS_FORMAT
