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

SEQ, BATCH, LR = 256, 4, 2e-5


def blocks(n: int):
    from transformers import AutoTokenizer

    from factory.sources.datasets import DatasetSpec, iter_documents
    from factory.training.data import pack

    tok = AutoTokenizer.from_pretrained(teacher_dir())
    return pack(iter_documents(DatasetSpec(packaged="shakespeare"), Path(".")), tok, SEQ, n, 1, seed=0,
                source="bench").train


def teacher_dir() -> Path:
    from factory.sources.models import ModelSpec, materialize

    return materialize(ModelSpec(packaged="smollm2-135m-instruct"), Path("."))


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
        batch = data[step * BATCH:(step + 1) * BATCH]
        loss, _ = causal_lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times[warmup:]


class _StepTimer:
    def __init__(self):
        self.times, self._t = [], None

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_step_begin(self, *a, **k):
                timer._t = time.perf_counter()

            def on_step_end(self, *a, **k):
                timer.times.append(time.perf_counter() - timer._t)
        return CB()


def _dataset(n: int):
    from datasets import Dataset

    data = blocks(n)
    return Dataset.from_dict({"input_ids": data.tolist()})


def run_trainer(steps: int, warmup: int) -> list[float]:
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    ds = _dataset((steps + warmup) * BATCH)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(teacher_dir())
    args = TrainingArguments(output_dir="/tmp/bench-trainer", per_device_train_batch_size=BATCH, max_steps=steps + warmup,
                             learning_rate=LR, weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0,
                             lr_scheduler_type="constant", logging_steps=10**6, save_strategy="no", report_to=[],
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    timer = _StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False), callbacks=[timer.callback()])
    trainer.train()
    return timer.times[warmup:]


def run_trl(steps: int, warmup: int) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ds = _dataset((steps + warmup) * BATCH)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(teacher_dir())
    args = SFTConfig(output_dir="/tmp/bench-trl", per_device_train_batch_size=BATCH, max_steps=steps + warmup,
                     learning_rate=LR, weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0,
                     lr_scheduler_type="constant", logging_steps=10**6, save_strategy="no", report_to=[],
                     use_cpu=True, max_length=SEQ, packing=False, disable_tqdm=True, dataset_num_proc=1,
                     bf16=False)  # TRL defaults to bf16 autocast; the comparison is fp32 to fp32
    timer = _StepTimer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer.callback()])
    trainer.train()
    return timer.times[warmup:]


CONTENDERS = {"factory": run_ours, "transformers Trainer": run_trainer, "TRL SFTTrainer": run_trl}


def child(name: str, steps: int, warmup: int, precision: str) -> None:
    from factory.training.loop import matmul_precision

    with matmul_precision(precision):
        times = CONTENDERS[name](steps, warmup)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    tokens = BATCH * SEQ
    print(json.dumps({"name": name, "precision": precision, "tokens_per_s": tokens / sorted(times)[len(times) // 2],
                      "step_s": sorted(times)[len(times) // 2], "peak_rss_gib": rss_gib}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--child")
    ap.add_argument("--only", action="append")
    ap.add_argument("--rounds", type=int, default=2,
                    help="contenders run in turn this many times; the best round of each is kept "
                         "(other tenants of a shared machine slow runs down, never up)")
    ap.add_argument("--precision", action="append", choices=["highest", "medium"],
                    help="fp32 matmul precision(s) to measure, applied to every contender alike "
                         "(default: both)")
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
                out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                                      "--warmup", str(args.warmup), "--precision", precision],
                                     capture_output=True, text=True, env=env)
                lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
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
