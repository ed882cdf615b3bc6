"""Training-time read cost: blocks from memory-mapped shards (``BlockSampler``) against
the in-memory tensor that ``pack()`` builds today (``PackedData``).

One corpus of random token ids (``--tokens``, default 20M) is written once as
Megatron shards; each contender then runs in its own process (so its peak RSS is
its own), builds its reader and times ``--steps`` batches of ``--batch`` x ``--seq``
after a short warm-up. Prints ms per step, the ratio, each one's peak RSS, and
the memmap read cost as a share of a training step (``--step-s``; default: the
per-token time of our ``correct`` step in bench/results/correct_speed.json scaled
to this batch). Writes bench/results/data_speed.json (key ``read``; other parts of
the data benchmark keep their keys).

    .venv/bin/python bench/data_speed.py [--tokens 20M] [--seq 2048] [--batch 8] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def write_corpus(root: Path, tokens: int, shard_tokens: int = 64 << 20) -> None:
    import numpy as np

    from factory.corpus import IndexedWriter

    rng = np.random.default_rng(0)
    done, shard = 0, 0
    while done < tokens:
        w = IndexedWriter(root / f"train-{shard:05d}", np.uint16)
        size = 0
        while size < shard_tokens and done < tokens:
            n = int(min(rng.integers(200, 4000), tokens - done))
            w.add(rng.integers(0, 49152, n, dtype=np.uint16))
            size, done = size + n, done + n
        w.finish()
        shard += 1


def contender(kind: str, root: Path, seq: int, batch: int, steps: int, warmup: int) -> dict:
    """Time ``steps`` batches of one reader in this process; peak RSS is this process's."""
    import torch

    from factory.corpus import IndexedReader
    from factory.corpus.sampler import BlockSampler
    from factory.training.data import PackedData

    readers = [IndexedReader(p.with_suffix("")) for p in sorted(root.glob("*.idx"))]
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"name": kind, "blocks": len(sampler), "step_ms": per_step * 1e3, "peak_rss_gib": peak}


def default_step_s(tokens_per_step: int) -> float | None:
    """Our ``correct`` step time per token (bench/results/correct_speed.json), scaled."""
    path = RESULTS / "correct_speed.json"
    if not path.is_file():
        return None
    rows = [r for r in json.loads(path.read_text()) if r["name"] == "factory"]
    return tokens_per_step / max(r["tokens_per_s"] for r in rows) if rows else None


def main() -> None:
    from foundation.configs import parse_count

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="20M")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--step-s", type=float, default=None, help="training step time to compare the read cost with")
    p.add_argument("--out", type=Path, default=RESULTS / "data_speed.json")
    p.add_argument("--contender", choices=("memmap", "tensor"), help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.contender:
        print(json.dumps(contender(a.contender, a.root, a.seq, a.batch, a.steps, a.warmup)))
        return
    tokens = parse_count(a.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(Path(tmp), tokens)
        rows = {}
        for kind in ("memmap", "tensor"):
            cmd = [sys.executable, __file__, "--contender", kind, "--root", tmp, "--seq", str(a.seq)]
            cmd += ["--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            rows[kind] = json.loads(out.stdout.splitlines()[-1])
    step_s = a.step_s if a.step_s is not None else default_step_s(a.batch * a.seq)
    mm, tt = rows["memmap"], rows["tensor"]
    result = {
        "tokens": tokens,
        "seq_len": a.seq,
        "batch": a.batch,
        "steps": a.steps,
        "memmap": mm,
        "tensor": tt,
        "memmap_over_tensor": mm["step_ms"] / tt["step_ms"],
        "step_s": step_s,
        "memmap_share_of_step": None if step_s is None else mm["step_ms"] / 1e3 / step_s,
    }
    for r in (mm, tt):
        print(f"{r['name']:>7}: {r['step_ms']:.3f} ms/step, peak RSS {r['peak_rss_gib']:.2f} GiB")
    print(f"memmap / tensor read time: {result['memmap_over_tensor']:.2f}x")
    if step_s is not None:
        print(f"memmap read: {100 * result['memmap_share_of_step']:.4f}% of a {step_s:.3f} s step")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(a.out.read_text()) if a.out.is_file() else {}
    merged["read"] = result
    a.out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
