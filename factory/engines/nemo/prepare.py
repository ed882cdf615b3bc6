"""What the host does before a nemo job starts: put its input models and data
where the job sees them, inside the run directory.

Models named in ``models:`` (hub ids, packaged checkpoints, local dirs) are
materialised by the factory here, where its own readers and caches live, and
linked into ``$RUN_DIR/.sources/<name>``. Datasets are read with the factory's
own readers (packaged PyPI data, local files, hub streams, earlier stages'
outputs). The corpus of a NeMo 2 job (correct, distill, prune calibration) is
Megatron indexed shards: a ``tokenize`` stage's artifact (or a blend of them)
is read where it lies, after its tokenizer is checked against the model's; a
plain text dataset is tokenized here, streaming, by ``factory.corpus`` into
the job's ``tokens/`` dir, which has the layout of such an artifact. Chat and
preference records for NeMo-Aligner are written as jsonl to the job's
``data/`` dir. Cluster nodes then need nothing but the image."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from factory.alignment.records import iter_conversations, iter_preferences
from factory.corpus.artifact import CORPUS_FILE, CORPUS_FORMAT, load_corpus, tokenizer_digest
from factory.corpus.tokenize import TokenizeSettings, corpus_documents, tokenize_corpus
from factory.engines.base import SourceHashes
from factory.recipe import Recipe
from factory.shapes import first_model
from factory.sources import models as model_sources
from factory.sources.produced import dataset_from_artifact
from foundation import storage
from foundation.artifacts import read_manifest
from foundation.errors import FactoryError
from foundation.hashing import sha256_json

# A text dataset is read up to the job's tokens at this many characters a token: more than
# English prose averages with the tokenizers the recipes use (about 4), so the cap errs long.
CAP_CHARS_PER_TOKEN = 5
STAMP_FILE = ".fingerprint"  # what a job's tokens/ dir was made from


def link_tree(src: Path, dst: Path) -> None:
    """A copy of ``src`` at ``dst`` made of hard links where the filesystem allows."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)

    shutil.copytree(src, tmp, copy_function=storage.link_or_copy, ignore=shutil.ignore_patterns(".complete"))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def materialize_sources(recipe: Recipe, stage: str, run_dir: Path, fingerprint) -> None:
    for _field, (kind, name) in recipe.stage_inputs(stage).items():
        if kind != "model" or name in recipe.stages:
            continue
        dst = run_dir / ".sources" / name
        stamp = dst / ".fingerprint"
        want = fingerprint("model", name)
        if stamp.is_file() and stamp.read_text() == want:
            continue
        link_tree(model_sources.materialize(recipe.models[name], recipe.base), dst)
        stamp.write_text(want)


def _dataset(recipe: Recipe, name: str, run_dir: Path, where: str):
    if name in recipe.stages:
        return dataset_from_artifact(run_dir / name, where)
    return recipe.datasets[name]


def _write(path: Path, records) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def export_data(recipe: Recipe, spec: dict, run_dir: Path) -> dict[str, int]:
    """Put the job's data in place: a plain text dataset tokenized into Megatron shards
    under the job's work dir (streaming, resumable), tokenized corpora checked against
    the model's tokenizer and left where they are, chat and preference records written
    as jsonl. Returns the train and held-out document (or record) counts."""
    data = spec.get("data")
    if not data:
        return {}
    where = f"stages.{spec['stage']}.{data['field']}"
    if data["format"] in ("text", CORPUS_FORMAT):
        tok_dir = tokenizer_dir(recipe, spec["stage"], data["tokenizer"], run_dir)
        if data["format"] == "text":
            tokenize_dataset(recipe, data, run_dir, tok_dir, where)
        return check_corpora(data, run_dir, tok_dir, where)
    ds = _dataset(recipe, data["dataset"], run_dir, where)
    # the held-out records are a seeded sample of all of them, so the records are listed first
    records = _records(ds, recipe.base, data["format"])
    random.Random(recipe.seed).shuffle(records)
    k = data.get("eval_records", 0)
    valid_recs, train_recs = records[:k], records[k:]
    if data.get("max_records"):
        train_recs = train_recs[: data["max_records"]]
    if not train_recs:
        raise FactoryError(f"{where}: dataset {data['dataset']!r} left no training records")
    return {"train": _write(run_dir / data["train"], train_recs), "valid": _write(run_dir / data["valid"], valid_recs)}


# -- text: tokenized corpora ------------------------------------------------------------------------


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer.model"))


def tokenizer_dir(recipe: Recipe, stage: str, field: str, run_dir: Path) -> Path:
    """The HF dir holding the tokenizer of ``stage``'s input model ``field``, on this
    machine: the input itself when it is there, else (an earlier stage's job still
    queued) followed back through the stages that make it to its source, since every
    stage keeps its input's tokenizer."""
    _, ref = recipe.stage_inputs(stage)[field]
    while ref in recipe.stages:
        if _has_tokenizer(run_dir / ref):
            return run_dir / ref
        ref = first_model(recipe.stages[ref])
    linked = run_dir / ".sources" / ref
    return linked if _has_tokenizer(linked) else model_sources.materialize(recipe.models[ref], recipe.base)


def _capped(documents: Iterable, max_tokens: int) -> Iterator:
    """The documents until they hold about ``max_tokens`` tokens (``CAP_CHARS_PER_TOKEN``
    characters each): the job reads no more than that, and Megatron repeats the data
    if the cap falls short."""
    budget = max_tokens * CAP_CHARS_PER_TOKEN
    for doc in documents:
        if budget <= 0:
            return
        yield doc
        budget -= len(doc) if isinstance(doc, str) else sum(len(str(m.get("content") or "")) for m in doc)


def _dataset_hash(recipe: Recipe, name: str, run_dir: Path) -> str:
    if name in recipe.stages:
        return (read_manifest(run_dir / name) or {}).get("hash", "")
    return SourceHashes(recipe)("dataset", name)


def tokenize_dataset(recipe: Recipe, data: dict, run_dir: Path, tok_dir: Path, where: str) -> dict:
    """Tokenize the dataset into ``data["tokens"]`` (``corpus.json`` + ``shards/``, the
    layout of a ``tokenize`` stage's artifact) with factory.corpus: worker processes,
    memory flat in the corpus size, the first documents up to ``heldout_tokens`` held
    out. A finished corpus of the same dataset, tokenizer and settings is kept; a killed
    run resumes at its last finished shard; anything else there is started over."""
    out = run_dir / data["tokens"]
    settings = TokenizeSettings(
        heldout_tokens=data["heldout_tokens"],
        workers=max(1, min(recipe.engine_settings["nemo"].workers, os.cpu_count() or 1)),
    )
    digest = tokenizer_digest(tok_dir)
    stamp = sha256_json(
        {
            "dataset": _dataset_hash(recipe, data["dataset"], run_dir),
            "tokenizer": digest,
            "heldout_tokens": settings.heldout_tokens,
            "max_tokens": data["max_tokens"],
            "shard_tokens": settings.shard_tokens,
        }
    )
    have = out / STAMP_FILE
    if have.is_file() and have.read_text() == stamp and (out / CORPUS_FILE).is_file():
        return json.loads((out / CORPUS_FILE).read_text())
    if not (have.is_file() and have.read_text() == stamp) and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    have.write_text(stamp)
    ds = _dataset(recipe, data["dataset"], run_dir, where)
    undecodable: dict[str, int] = {}
    documents = _capped(corpus_documents(ds, recipe.base, undecodable), data["max_tokens"])
    try:
        made = tokenize_corpus(documents, tok_dir, out, settings)
    except FactoryError as e:
        raise FactoryError(f"{where}: {e}") from None
    meta = {
        **made,
        "source": data["dataset"],
        "licence": ds.licence_of(),
        "undecodable_lines": dict(sorted(undecodable.items())),
    }
    storage.write_text(out / CORPUS_FILE, json.dumps(meta, indent=1) + "\n", "corpus index")
    return meta


def check_corpora(data: dict, run_dir: Path, tok_dir: Path, where: str) -> dict[str, int]:
    """Open every corpus the job reads (its shards' counts checked against ``corpus.json``),
    refuse one made with another tokenizer than ``tok_dir``'s, and one without held-out
    shards where the job validates. Returns the train and held-out document counts."""
    want = tokenizer_digest(tok_dir)
    counts = {"train": 0, "valid": 0}
    for c in data["corpora"]:
        path = Path(c["path"]) if Path(c["path"]).is_absolute() else run_dir / c["path"]
        try:
            corpus = load_corpus(path, expect_tokenizer=want)
        except FactoryError as e:
            raise FactoryError(f"{where}: {e}") from None  # another tokenizer's shards: both digests named
        if data.get("heldout") and not corpus.heldout:
            raise FactoryError(
                f"{where}: corpus {c['name']!r} ({path}) has no held-out shards and the job validates: "
                "tokenize it with heldout_tokens > 0"
            )
        counts["train"] += sum(len(r) for r in corpus.train)
        counts["valid"] += sum(len(r) for r in corpus.heldout)
    return counts


# -- chat and preference records ------------------------------------------------------------------


def _records(ds, base: Path, fmt: str) -> list[dict]:
    if fmt == "chat":
        return [
            {"messages": c.messages, **({"tools": c.tools} if c.tools else {})} for c in iter_conversations(ds, base)
        ]
    return [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, **({"tools": p.tools} if p.tools else {})}
        for p in iter_preferences(ds, base)
    ]
