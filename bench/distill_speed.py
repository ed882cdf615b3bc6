"""Distillation step throughput: SmolLM2-135M teacher -> 15-layer student, batch 4 x 256, fp32.

Contenders, each in its own process on the same packed data and the same
student init: our `distill` step (teacher in inference mode, fused chunked KD
loss, fused AdamW); a plain PyTorch loop with full logits and F.kl_div; a
transformers Trainer with a KL compute_loss; TRL's GKDTrainer with lmbda=0,
beta=0 (no generation; forward KL) when it runs. Prints tokens/s, peak RSS,
ratios, and model FLOPs utilisation against this machine's fp32 matmul peak
measured in the same run.

    .venv/bin/python bench/distill_speed.py [--steps 5] [--warmup 2] [--precision highest|medium]
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

SEQ, BATCH, LR, KEEP = 256, 4, 1e-4, 15


def models():
    import torch
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32).eval().requires_grad_(False)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32)
    student.model.layers = student.model.layers[:KEEP]
    student.config.num_hidden_layers = KEEP
    return teacher, student


def blocks(n: int):
    return packed_blocks(n, SEQ)


def _timed(step_fn, data, steps, warmup):
    times = []
    for i in range(steps + warmup):
        t = time.perf_counter()
        step_fn(data[i * BATCH : (i + 1) * BATCH])
        times.append(time.perf_counter() - t)
    return times[warmup:]


def run_ours(steps, warmup):
    import torch

    from factory.training.kd import fused_kd_loss
    from factory.training.optim import adamw

    teacher, student = models()
    opt = adamw(student, LR, 0.0, (0.9, 0.95), 1e-8)
    params = list(student.parameters())

    def step(b):
        with torch.inference_mode():
            h_t = teacher.model(input_ids=b, use_cache=False).last_hidden_state[:, :-1].clone()
        h_t = h_t.clone()
        h_s = student.model(input_ids=b, use_cache=False).last_hidden_state[:, :-1]
        loss = fused_kd_loss(h_s, student.lm_head.weight, h_t, teacher.lm_head.weight)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(step, blocks((steps + warmup) * BATCH), steps, warmup)


def _kl(s_logits, t_logits):
    import torch.nn.functional as F

    v = s_logits.shape[-1]
    return F.kl_div(
        F.log_softmax(s_logits.view(-1, v), -1),
        F.log_softmax(t_logits.view(-1, v), -1),
        log_target=True,
        reduction="batchmean",
    )


def run_torch(steps, warmup):
    import torch

    teacher, student = models()
    opt = torch.optim.AdamW(student.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)

    def step(b):
        with torch.no_grad():
            t = teacher(input_ids=b).logits
        loss = _kl(student(input_ids=b).logits, t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(step, blocks((steps + warmup) * BATCH), steps, warmup)


def _dataset(n):
    return hf_dataset(blocks(n))


def run_trainer(steps, warmup):
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    teacher, student = models()

    class KDTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with torch.no_grad():
                t = teacher(input_ids=inputs["input_ids"]).logits
            out = model(input_ids=inputs["input_ids"])
            loss = _kl(out.logits, t)
            return (loss, out) if return_outputs else loss

    timer = StepTimer()
    trainer = KDTrainer(
        model=student,
        args=trainer_args(TrainingArguments, "/tmp/bench-kd-trainer", BATCH, steps + warmup, LR),
        train_dataset=_dataset((steps + warmup) * BATCH),
        data_collator=default_data_collator,
        callbacks=[timer.callback()],
    )
    trainer.train()
    return timer.times[warmup:]


def run_trl_gkd(steps, warmup):
    from datasets import Dataset
    from transformers import AutoTokenizer

    try:
        from trl import GKDConfig, GKDTrainer
    except ImportError:  # TRL 1.x keeps GKD under trl.experimental
        from trl.experimental.gkd import GKDConfig, GKDTrainer

    teacher, student = models()
    tok = AutoTokenizer.from_pretrained(teacher_dir())
    texts = [tok.decode(b) for b in blocks((steps + warmup) * BATCH)]
    ds = Dataset.from_dict(
        {"messages": [[{"role": "user", "content": "Continue."}, {"role": "assistant", "content": t}] for t in texts]}
    )
    timer = StepTimer()
    args = trainer_args(
        GKDConfig,
        "/tmp/bench-gkd",
        BATCH,
        steps + warmup,
        LR,
        lmbda=0.0,
        beta=0.0,
        max_length=SEQ + 16,
        temperature=1.0,
    )
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[timer.callback()],
    )
    trainer.train()
    return timer.times[warmup:]


CONTENDERS = {
    "factory": run_ours,
    "plain torch loop": run_torch,
    "transformers Trainer+KL": run_trainer,
    "TRL GKDTrainer": run_trl_gkd,
}


def matmul_peak_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    n = 10
    for _ in range(n):
        a @ b
    return 2 * 2048**3 * n / (time.perf_counter() - t) / 1e9


def child(name, steps, warmup, precision):
    from foundation.device import matmul_precision

    with matmul_precision(precision):
        times = CONTENDERS[name](steps, warmup)
    print(
        json.dumps(
            {
                "name": name,
                "tokens_per_s": BATCH * SEQ / sorted(times)[len(times) // 2],
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
        )
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="highest", choices=["highest", "medium"])
    ap.add_argument("--child")
    ap.add_argument("--only", action="append")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="contenders run in turn this many times; the best round of each is kept "
        "(other tenants of a shared machine slow runs down, never up)",
    )
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps, args.warmup, args.precision)
        return
    teacher_dir()
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
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
                    args.precision,
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if out.returncode or not lines:
                err = (out.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{name}: did not run ({err[:200]})", file=sys.stderr)
                continue
            row = json.loads(lines[-1])
            if name not in best or row["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = row
    rows = list(best.values())
    peak = matmul_peak_gflops()
    teacher, student = models()
    p_t = sum(p.numel() for p in teacher.parameters())
    p_s = sum(p.numel() for p in student.parameters())
    flops_per_token = 2 * p_t + 6 * p_s  # teacher forward + student forward and backward
    ours = next((r for r in rows if r["name"] == "factory"), None)
    print(
        f"\nSmolLM2-135M teacher -> {KEEP}-layer student, batch {BATCH} x {SEQ}, matmul {args.precision}; "
        f"fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    print(f"{'contender':<26}{'tokens/s':>10}{'peak RSS GiB':>14}{'MFU':>7}{'ours / this':>13}")
    for r in rows:
        r["mfu"] = r["tokens_per_s"] * flops_per_token / (peak * 1e9)
        ratio = ours["tokens_per_s"] / r["tokens_per_s"] if ours else float("nan")
        print(
            f"{r['name']:<26}{r['tokens_per_s']:>10.1f}{r['peak_rss_gib']:>14.2f}{100 * r['mfu']:>6.0f}%{ratio:>13.2f}"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"distill_speed-{args.precision}.json").write_text(
        json.dumps({"peak_gflops": peak, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
