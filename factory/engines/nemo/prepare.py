"""What the host does before a nemo job starts: put its input models and data
where the job sees them, inside the run directory.

Models named in ``models:`` (hub ids, packaged checkpoints, local dirs) are
materialised by the factory here, where its own readers and caches live, and
linked into ``$RUN_DIR/.sources/<name>``. Datasets are read with the factory's
own readers (packaged PyPI data, local files, earlier stages' outputs) and
written as jsonl to the job's ``data/`` dir: ``{"text"}`` documents for
Megatron preprocessing, ``{"messages"}`` conversations and
``{"prompt", "chosen", "rejected"}`` pairs for NeMo-Aligner. Cluster nodes
then need nothing but the image."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from factory.alignment.records import iter_conversations, iter_preferences
from factory.recipe import Recipe
from factory.sources import models as model_sources
from factory.sources.documents import iter_documents
from factory.sources.produced import dataset_from_artifact
from foundation import storage
from foundation.errors import FactoryError

CHARS_PER_TOKEN = 4  # held-out text is cut by characters before tokenisation: an estimate


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


def text_split(docs: list[str], eval_tokens: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded shuffle; the first documents up to about ``eval_tokens`` are held out."""
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    budget, cut = eval_tokens * CHARS_PER_TOKEN, 0
    while budget > 0 and cut < len(docs) - 1:
        budget -= len(docs[cut])
        cut += 1
    return docs[cut:], docs[:cut]


def export_data(recipe: Recipe, spec: dict, run_dir: Path) -> dict[str, int]:
    """Write the job's train/valid jsonl; returns record counts."""
    data = spec.get("data")
    if not data:
        return {}
    where = f"stages.{spec['stage']}.{data['field']}"
    ds = _dataset(recipe, data["dataset"], run_dir, where)
    if data["format"] == "text":
        docs = [d for d in iter_documents(ds, recipe.base) if isinstance(d, str) and d.strip()]
        train, valid = text_split(docs, data.get("eval_tokens", 0), recipe.seed)
        train_recs, valid_recs = [{"text": d} for d in train], [{"text": d} for d in (valid or train[:1])]
    else:
        records = _records(ds, recipe.base, data["format"])
        random.Random(recipe.seed).shuffle(records)
        k = data.get("eval_records", 0)
        valid_recs, train_recs = records[:k], records[k:]
        if data.get("max_records"):
            train_recs = train_recs[: data["max_records"]]
    if not train_recs:
        raise FactoryError(f"{where}: dataset {data['dataset']!r} left no training records")
    counts = {
        "train": _write(run_dir / data["train"], train_recs),
        "valid": _write(run_dir / data["valid"], valid_recs),
    }
    return counts


def _records(ds, base: Path, fmt: str) -> list[dict]:
    if fmt == "chat":
        return [
            {"messages": c.messages, **({"tools": c.tools} if c.tools else {})} for c in iter_conversations(ds, base)
        ]
    return [
        {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, **({"tools": p.tools} if p.tools else {})}
        for p in iter_preferences(ds, base)
    ]
