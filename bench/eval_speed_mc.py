"""Multiple-choice eval throughput: factory-hf against lm-eval's own `hf` model (HFLM).

Both score ARC-Easy (validation, 570 documents, 0-shot; the task YAML from
evals/harness with the data fetched from PyPI) with SmolLM2-135M-Instruct
(``--model DIR`` for another HF directory) in fp32 on ``--device`` (the CPU by
default), in the same process, through the same `lm_eval.simple_evaluate`
call on the same documents. The documents are split into `--rounds` blocks and
the two models alternate block by block, so that load from other processes on a
shared machine falls on both alike.

Batch sizes: HFLM runs at `--hf-batch-size` (default 8; lm-eval's own default
is 1, and 8 beat 32 here, 0.91 against 0.66 documents/s on 40 documents),
factory-hf at its defaults (at most 64 packed rows and 1024 tokens a batch).
Every request's log-likelihood must agree within 1e-4 and every document's acc
and acc_norm must be equal, or the script fails. Prints documents/s of both and
the ratio; writes bench/results/eval_speed_mc.json.

    .venv/bin/python bench/eval_speed_mc.py [--limit 570] [--rounds 3] [--hf-batch-size 8] [--threads 1]
                                            [--model DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import teacher_dir

TASK = "arc_easy"
RESULTS = Path(__file__).parent / "results" / "eval_speed_mc.json"


def run_block(lm, manager, docs: list[int]) -> tuple[dict, float, float]:
    """lm-eval on ``docs``: (output, wall seconds, process CPU seconds)."""
    import lm_eval

    wall, cpu = time.perf_counter(), time.process_time()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[TASK],
        samples={TASK: docs},
        num_fewshot=0,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,
        verbosity="ERROR",
    )
    return out, time.perf_counter() - wall, time.process_time() - cpu


def compare(ref: list[dict], ours: list[dict]) -> float:
    """Largest |log-likelihood difference|; fails on any differing verdict."""
    worst = 0.0
    for a, b in zip(sorted(ref, key=lambda s: s["doc_id"]), sorted(ours, key=lambda s: s["doc_id"]), strict=True):
        for ra, rb in zip(a["filtered_resps"], b["filtered_resps"], strict=True):
            worst = max(worst, abs(float(ra[0]) - float(rb[0])))
        assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"]), f"doc {a['doc_id']}: verdicts differ"
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=570, help="documents (ARC-Easy validation has 570)")
    ap.add_argument("--rounds", type=int, default=3, help="blocks the two models alternate over")
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); on a machine shared with other jobs 1 "
        "avoids the stalls of oversubscribed OpenMP threads",
    )
    ap.add_argument("--model", help="an HF model directory (default: the packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evals.harness import FastLM
    from evals.harness.taskdir import write_task_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or str(teacher_dir())
    tmp = tempfile.mkdtemp(prefix="harness-tasks-")
    manager = TaskManager(include_path=str(write_task_dir([TASK], Path(tmp))), include_defaults=False)
    contenders = {
        "lm-eval hf": HFLM(pretrained=model, dtype="float32", device=args.device, batch_size=args.hf_batch_size),
        "factory-hf": FastLM(pretrained=model, dtype="float32", device=args.device),
    }
    docs = list(range(args.limit))
    blocks = [docs[i :: args.rounds] for i in range(args.rounds)]
    logged = {name: [] for name in contenders}
    wall = {name: 0.0 for name in contenders}
    cpu = {name: 0.0 for name in contenders}
    acc = {}
    per_round = []
    load = [os.getloadavg()[0]]
    for r, block in enumerate(blocks):
        for name, lm in contenders.items():
            out, w, c = run_block(lm, manager, block)
            logged[name] += out["samples"][TASK]
            wall[name] += w
            cpu[name] += c
            per_round.append({"round": r + 1, "model": name, "docs": len(block), "wall_s": w, "cpu_s": c})
            print(f"round {r + 1}/{args.rounds} {name:>11}: {len(block)} docs in {w:6.1f} s", flush=True)
        load.append(os.getloadavg()[0])
    worst = compare(logged["lm-eval hf"], logged["factory-hf"])
    assert worst < 1e-4, f"log-likelihoods differ by {worst:.2e}"
    for name, samples in logged.items():
        acc[name] = {m: sum(s[m] for s in samples) / len(samples) for m in ("acc", "acc_norm")}
    assert acc["lm-eval hf"] == acc["factory-hf"]

    rate = {name: args.limit / wall[name] for name in contenders}
    ratio = rate["factory-hf"] / rate["lm-eval hf"]
    cpu_ratio = cpu["lm-eval hf"] / cpu["factory-hf"]  # steadier than wall time when others load the machine
    for name in contenders:
        print(
            f"{name:>11}: {rate[name]:6.2f} docs/s  (wall {wall[name]:.1f} s, cpu {cpu[name]:.1f} s)  "
            f"acc {acc[name]['acc']:.4f} acc_norm {acc[name]['acc_norm']:.4f}"
        )
    print(f"factory-hf / lm-eval hf: {ratio:.2f}x wall, {cpu_ratio:.2f}x cpu time   max |dLL| {worst:.2e}")
    result = {
        "task": f"{TASK} (validation, 0-shot)",
        "model": f"{args.model or 'SmolLM2-135M-Instruct'} (fp32)",
        "device": args.device,
        "documents": args.limit,
        "requests": sum(len(s["filtered_resps"]) for s in logged["factory-hf"]),
        "rounds": args.rounds,
        "hf_batch_size": args.hf_batch_size,
        "factory_hf_batch": {
            "max_rows": contenders["factory-hf"].max_rows,
            "max_batch_tokens": contenders["factory-hf"].max_batch_tokens,
        },
        "docs_per_s": rate,
        "wall_s": wall,
        "cpu_s": cpu,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "per_round": per_round,
        "accuracy": acc,
        "max_abs_loglikelihood_diff": worst,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": load,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
