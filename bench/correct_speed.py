"""Training-step throughput of the `correct` stage against transformers Trainer and TRL SFTTrainer.

All three train SmolLM2-135M-Instruct (fp32) on the same packed Shakespeare
blocks with batch 4 x 256, AdamW, lr 2e-5, grad clip 1.0. Each contender runs
in its own process (so peak RSS is its own); the first steps are warm-up and
not timed. Prints tokens/s, peak RSS and the ratio of ours to each peer.

    .venv/bin/python bench/correct_speed.py [--steps 6] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import StepTimer, hf_dataset, packed_blocks, teacher_dir, trainer_args

SEQ, BATCH, LR = 256, 4, 2e-5


def blocks(n: int):
    return packed_blocks(n, SEQ)


def run_ours(steps: int, warmup: int) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    from factory.training.losses import causal_lm_loss
    from factory.training.optim import adamw

    data = blocks((steps + warmup) * BATCH)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32)
    model.train()
    opt = adamw(model, LR, 0.0, (0.9, 0.95), 1e-8)
    params = [p for p in model.parameters()]
    times = []
    for step in range(steps + warmup):
        t = time.perf_counter()
        batch = data[step * BATCH : (step + 1) * BATCH]
        loss, _ = causal_lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times[warmup:]


def _dataset(n: int):
    return hf_dataset(blocks(n))


def run_trainer(steps: int, warmup: int) -> list[float]:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    ds = _dataset((steps + warmup) * BATCH)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(teacher_dir())
    args = trainer_args(TrainingArguments, "/tmp/bench-trainer", BATCH, steps + warmup, LR)
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        callbacks=[timer.callback()],
    )
    trainer.train()
    return timer.times[warmup:]


def run_trl(steps: int, warmup: int) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ds = _dataset((steps + warmup) * BATCH)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(teacher_dir())
    args = trainer_args(
        SFTConfig, "/tmp/bench-trl", BATCH, steps + warmup, LR, max_length=SEQ, packing=False, dataset_num_proc=1
    )
    timer = StepTimer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer.callback()])
    trainer.train()
    return timer.times[warmup:]


CONTENDERS = {"factory": run_ours, "transformers Trainer": run_trainer, "TRL SFTTrainer": run_trl}


def child(name: str, steps: int, warmup: int, precision: str) -> None:
    from foundation.device import matmul_precision

    with matmul_precision(precision):
        times = CONTENDERS[name](steps, warmup)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    tokens = BATCH * SEQ
    print(
        json.dumps(
            {
                "name": name,
                "precision": precision,
                "tokens_per_s": tokens / sorted(times)[len(times) // 2],
                "step_s": sorted(times)[len(times) // 2],
                "peak_rss_gib": rss_gib,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--child")
    ap.add_argument("--only", action="append")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="contenders run in turn this many times; the best round of each is kept "
        "(other tenants of a shared machine slow runs down, never up)",
    )
    ap.add_argument(
        "--precision",
        action="append",
        choices=["highest", "medium"],
        help="fp32 matmul precision(s) to measure, applied to every contender alike (default: both)",
    )
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps, args.warmup, args.precision[0])
        return
    teacher_dir()  # fetch/convert once, outside the timed children
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for precision in args.precision or ["highest", "medium"]:
            for name in args.only or CONTENDERS:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        name,
                        "--steps",
                        str(args.steps),
                        "--warmup",
                        str(args.warmup),
                        "--precision",
                        precision,
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
                if out.returncode != 0 or not lines:
                    print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(lines[-1])
                key = (name, precision)
                if key not in best or row["tokens_per_s"] > best[key]["tokens_per_s"]:
                    best[key] = row
    rows = list(best.values())
    print(f"\nSmolLM2-135M fp32 weights, batch {BATCH} x {SEQ}, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'contender':<22}{'matmul':>8}{'tokens/s':>10}{'peak RSS GiB':>14}{'ours / this':>13}")
    for r in rows:
        ours = next((o for o in rows if o["name"] == "factory" and o["precision"] == r["precision"]), None)
        ratio = ours["tokens_per_s"] / r["tokens_per_s"] if ours else float("nan")
        print(f"{r['name']:<22}{r['precision']:>8}{r['tokens_per_s']:>10.1f}{r['peak_rss_gib']:>14.2f}{ratio:>13.2f}")
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "correct_speed.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
