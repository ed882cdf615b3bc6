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
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from factory.alignment.records import iter_conversations, iter_preferences
from factory.corpus.artifact import CORPUS_FILE, CORPUS_FORMAT, TOKENIZER_FILES, load_corpus, tokenizer_digest
from factory.corpus.tokenize import TokenizeSettings, corpus_documents, tokenize_corpus
from factory.engines.base import SourceHashes
from factory.recipe import Recipe
from factory.shapes import first_model
from factory.sources import models as model_sources
from factory.sources.datasets import DatasetSpec
from factory.sources.produced import dataset_from_artifact
from foundation import storage
from foundation.artifacts import read_manifest
from foundation.configs import build
from foundation.errors import FactoryError
from foundation.hashing import sha256_json

# A text dataset is read up to the job's tokens at this many characters a token: more than
# English prose averages with the tokenizers the recipes use (about 4), so the cap errs long.
CAP_CHARS_PER_TOKEN = 5
STAMP_FILE = ".fingerprint"  # what a job's tokens/ dir was made from
TOKENIZE_JOB_SUFFIX = ".tokenize"  # .nemo/<stage>.tokenize/: a cluster tokenize job's dir
ENTRY = "factory.engines.nemo.prepare"  # python -m ENTRY tokenize CONFIG: a tokenize job's step


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
    under the job's work dir (streaming, resumable; with ``nemo.tokenize_on: cluster`` a
    Slurm job does that instead, see ``cluster_tokenize_job``), tokenized corpora checked
    against the model's tokenizer and left where they are, chat and preference records
    written as jsonl. Returns the train and held-out document (or record) counts."""
    data = spec.get("data")
    if not data:
        return {}
    where = f"stages.{spec['stage']}.{data['field']}"
    if data["format"] == "text" and recipe.engine_settings["nemo"].tokenize_on == "cluster":
        return {}  # the stage's tokenize job makes the shards; its training job waits for it
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


def tokenize_plan(recipe: Recipe, data: dict, run_dir: Path, tok_dir: Path, where: str) -> dict:
    """What tokenizing a stage's text dataset into ``data["tokens"]`` takes, as plain data
    (written to a cluster tokenize job's ``config.yaml``): the dataset's entry, the dirs,
    the settings, and the stamp of what the shards are made from."""
    name = data["dataset"]
    stamp = {
        "dataset": _dataset_hash(recipe, name, run_dir),
        "tokenizer": tokenizer_digest(tok_dir),
        "heldout_tokens": data["heldout_tokens"],
        "max_tokens": data["max_tokens"],
        "shard_tokens": TokenizeSettings().shard_tokens,
    }
    return {
        "where": where,
        "dataset": name,
        "dataset_entry": None if name in recipe.stages else recipe.raw["datasets"][name],
        "base": str(recipe.base),
        "run_dir": str(run_dir),
        "tokenizer": str(tok_dir),
        "out": str(run_dir / data["tokens"]),
        "heldout_tokens": data["heldout_tokens"],
        "max_tokens": data["max_tokens"],
        "workers": recipe.engine_settings["nemo"].workers,
        "stamp": sha256_json(stamp),
    }


def finished_tokens(plan: dict) -> dict | None:
    """The corpus index of ``plan``'s finished shards when they are made from what it says, else None."""
    out = Path(plan["out"])
    have = out / STAMP_FILE
    if have.is_file() and have.read_text() == plan["stamp"] and (out / CORPUS_FILE).is_file():
        return json.loads((out / CORPUS_FILE).read_text())
    return None


def run_tokenize(plan: dict) -> dict:
    """Tokenize ``plan``'s dataset into ``plan["out"]`` (``corpus.json`` + ``shards/``, the
    layout of a ``tokenize`` stage's artifact) with factory.corpus: worker processes,
    memory flat in the corpus size, the first documents up to ``heldout_tokens`` held
    out. A finished corpus of the same stamp is kept; a killed run resumes at its last
    finished shard; anything else there is started over. The host and a cluster
    tokenize job both run this, so their shards are the same bytes."""
    done = finished_tokens(plan)
    if done is not None:
        return done
    out, where, name = Path(plan["out"]), plan["where"], plan["dataset"]
    have = out / STAMP_FILE
    if not (have.is_file() and have.read_text() == plan["stamp"]) and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    have.write_text(plan["stamp"])
    if plan["dataset_entry"] is None:
        ds = dataset_from_artifact(Path(plan["run_dir"]) / name, where)
    else:
        ds = build(DatasetSpec, plan["dataset_entry"], f"datasets.{name}")
    settings = TokenizeSettings(
        heldout_tokens=plan["heldout_tokens"], workers=max(1, min(plan["workers"], os.cpu_count() or 1))
    )
    undecodable: dict[str, int] = {}
    documents = _capped(corpus_documents(ds, Path(plan["base"]), undecodable), plan["max_tokens"])
    try:
        made = tokenize_corpus(documents, Path(plan["tokenizer"]), out, settings)
    except FactoryError as e:
        raise FactoryError(f"{where}: {e}") from None
    meta = {**made, "source": name, "licence": ds.licence_of(), "undecodable_lines": dict(sorted(undecodable.items()))}
    storage.write_text(out / CORPUS_FILE, json.dumps(meta, indent=1) + "\n", "corpus index")
    return meta


def tokenize_dataset(recipe: Recipe, data: dict, run_dir: Path, tok_dir: Path, where: str) -> dict:
    """Tokenize the stage's text dataset on this machine (``run_tokenize``)."""
    return run_tokenize(tokenize_plan(recipe, data, run_dir, tok_dir, where))


def cluster_tokenize_job(recipe: Recipe, spec: dict, run_dir: Path) -> tuple[dict, Path] | None:
    """For ``nemo.tokenize_on: cluster``: the plan of the stage's tokenize job, written to
    its job dir ``.nemo/<stage>.tokenize/`` (``config.yaml``, and a copy of the tokenizer's
    files, which the cluster reads from the run dir), with that dir; None when the stage
    reads no plain text dataset or its shards are finished already."""
    data = spec.get("data")
    if not data or data["format"] != "text":
        return None
    where = f"stages.{spec['stage']}.{data['field']}"
    tok_dir = tokenizer_dir(recipe, spec["stage"], data["tokenizer"], run_dir)
    plan = tokenize_plan(recipe, data, run_dir, tok_dir, where)
    if finished_tokens(plan) is not None:
        return None
    job_dir = run_dir / ".nemo" / f"{spec['stage']}{TOKENIZE_JOB_SUFFIX}"
    copy = job_dir / "tokenizer"
    copy.mkdir(parents=True, exist_ok=True)
    for name in (*TOKENIZER_FILES, "config.json"):  # config.json: what AutoTokenizer may look at
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, copy / name)
    plan = {**plan, "tokenizer": str(copy), "stage": spec["stage"], "recipe": spec["recipe"], "image": spec["image"]}
    head = f"# Tokenize job of stage {spec['stage']} (recipe {spec['recipe']}): python -m {ENTRY} tokenize THIS\n"
    (job_dir / "config.yaml").write_text(head + yaml.safe_dump(plan, sort_keys=False, width=120))
    return plan, job_dir


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


def main(argv: list[str]) -> int:
    """``python -m factory.engines.nemo.prepare tokenize CONFIG``: run a tokenize job's
    plan (its ``config.yaml``) where it lies, e.g. inside the image on a Slurm CPU node."""
    if len(argv) != 2 or argv[0] != "tokenize":
        print(f"usage: python -m {ENTRY} tokenize CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        plan = yaml.safe_load(Path(argv[1]).read_text())
        meta = run_tokenize(plan)
    except (FactoryError, OSError) as e:
        print(f"[factory] tokenize: {e}", file=sys.stderr)
        return 1
    print(f"[factory] {plan['where']}: {meta.get('tokens')} tokens in {plan['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
