"""Alignment throughput: our sft and dpo steps against TRL's SFTTrainer and DPOTrainer.

Same model (SmolLM2-135M-Instruct, fp32), same conversations, same lengths:
- SFT: batch 4 conversations of about 256 tokens (user asks to continue a
  Shakespeare passage, the assistant continues it), loss on assistant tokens.
- DPO: 2 pairs per step, prompt + answer about 256 tokens; chosen = the true
  continuation, rejected = an unrelated passage; beta 0.1, sigmoid loss.
  TRL runs twice: as configured by default (reference model forward every
  step) and with ``precompute_ref_log_probs=True`` (the reference pass done
  before training, as ours always does; that pass is not timed for either).
Each contender runs in its own process (its own peak RSS), in turn, for
``--rounds`` rounds; the best round of each is kept (other tenants of a shared
machine slow runs down, never up). Prints tokens/s or pairs/s, peak RSS and
our ratio to each peer; writes bench/results/align_speed.json.

    .venv/bin/python bench/align_speed.py [--steps 5] [--warmup 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import StepTimer, teacher_dir, trainer_args

SEQ, SFT_BATCH, DPO_PAIRS, LR, BETA = 256, 4, 2, 1e-6, 0.1


def passages(n: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs of Shakespeare prose: about 100 + 150 tokens."""
    from factory.sources.datasets import DatasetSpec
    from factory.sources.documents import iter_documents

    docs = [d for d in iter_documents(DatasetSpec(packaged="shakespeare", doc_chars=1400), Path(".")) if len(d) > 1100][
        : n * 3
    ]
    random.Random(0).shuffle(docs)
    return [(d[:420], d[420:1050]) for d in docs[:n]]


def sft_conversations(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Continue this passage:\n{c}"}, {"role": "assistant", "content": x}]
        for c, x in passages(n)
    ]


def dpo_records(n: int) -> list[dict]:
    ps = passages(n + 1)
    return [
        {
            "prompt": [{"role": "user", "content": f"Continue this passage:\n{c}"}],
            "chosen": [{"role": "assistant", "content": x[:500]}],
            "rejected": [{"role": "assistant", "content": ps[(i + 1) % len(ps)][1][:500]}],
        }
        for i, (c, x) in enumerate(ps[:n])
    ]


def _model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher_dir(), dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(teacher_dir())


def _step(model, opt, params, loss):
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def sft_ours(steps: int, warmup: int) -> tuple[list[float], float]:
    from factory.alignment.chat import collate, render
    from factory.training.losses import causal_lm_loss
    from factory.training.optim import adamw

    model, tok = _model()
    convs = [render(tok, c, max_length=SEQ) for c in sft_conversations((steps + warmup) * SFT_BATCH)]
    model.train()
    opt = adamw(model, LR, 0.0, (0.9, 0.95), 1e-8)
    params = list(model.parameters())
    times, tokens = [], 0
    for s in range(steps + warmup):
        b = collate(convs[s * SFT_BATCH : (s + 1) * SFT_BATCH], tok.pad_token_id)
        t = time.perf_counter()
        loss, _ = causal_lm_loss(model, b["input_ids"], b["labels"], b["attention_mask"])
        _step(model, opt, params, loss)
        times.append(time.perf_counter() - t)
        tokens += int(b["attention_mask"].sum()) if s >= warmup else 0
    return times[warmup:], tokens / steps


def sft_trl(steps: int, warmup: int) -> tuple[list[float], float]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = _model()
    convs = sft_conversations((steps + warmup) * SFT_BATCH)
    ds = Dataset.from_list([{"prompt": c[:1], "completion": c[1:]} for c in convs])
    args = trainer_args(
        SFTConfig,
        "/tmp/bench-trl-sft",
        SFT_BATCH,
        steps + warmup,
        LR,
        max_length=SEQ,
        packing=False,
        dataset_num_proc=1,
        shuffle_dataset=False,
    )
    timer = StepTimer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer.callback()])
    trainer.train()
    lengths = [min(SEQ, len(x)) for x in trainer.train_dataset["input_ids"]][warmup * SFT_BATCH :]
    return timer.times[warmup:], sum(lengths) / steps


def dpo_ours(steps: int, warmup: int) -> tuple[list[float], float]:
    import torch

    from factory.alignment.chat import render
    from factory.alignment.preference import PreferenceLoss, fused_preference_loss
    from factory.stages.dpo import Pair, collate_pairs, final_hidden, flatten_pairs, pair_logps
    from factory.training.optim import adamw

    model, tok = _model()
    recs = dpo_records((steps + warmup) * DPO_PAIRS)
    pairs = [
        Pair(
            render(tok, r["prompt"] + r["chosen"], max_length=SEQ, first_turn=1),
            render(tok, r["prompt"] + r["rejected"], max_length=SEQ, first_turn=1),
        )
        for r in recs
    ]
    ref = pair_logps(model, pairs, tok.pad_token_id, 8, torch.device("cpu"))  # cached once, as the stage does
    spec = PreferenceLoss("dpo", beta=BETA)
    model.train()
    opt = adamw(model, LR, 0.0, (0.9, 0.95), 1e-8)
    params = list(model.parameters())
    times = []
    for s in range(steps + warmup):
        sl = slice(s * DPO_PAIRS, (s + 1) * DPO_PAIRS)
        b = flatten_pairs(collate_pairs(pairs[sl], tok.pad_token_id))
        t = time.perf_counter()
        loss, _ = fused_preference_loss(
            final_hidden(model, b), model.lm_head.weight, b["labels"], ref[sl].t().reshape(-1), spec
        )
        _step(model, opt, params, loss)
        times.append(time.perf_counter() - t)
    return times[warmup:], DPO_PAIRS


def _dpo_trl(steps: int, warmup: int, precompute: bool) -> tuple[list[float], float]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tok = _model()
    ds = Dataset.from_list(dpo_records((steps + warmup) * DPO_PAIRS))
    args = trainer_args(
        DPOConfig,
        "/tmp/bench-trl-dpo",
        DPO_PAIRS,
        steps + warmup,
        LR,
        max_length=SEQ,
        beta=BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute,
        dataset_num_proc=1,
    )
    timer = StepTimer()
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer.callback()])
    trainer.train()
    return timer.times[warmup:], DPO_PAIRS


def dpo_trl(steps, warmup):
    return _dpo_trl(steps, warmup, False)


def dpo_trl_precomputed(steps, warmup):
    return _dpo_trl(steps, warmup, True)


CONTENDERS = {
    "sft": {"factory": sft_ours, "TRL SFTTrainer": sft_trl},
    "dpo": {"factory": dpo_ours, "TRL DPOTrainer": dpo_trl, "TRL DPOTrainer (precomputed ref)": dpo_trl_precomputed},
}
UNIT = {"sft": "tokens/s", "dpo": "pairs/s"}


def child(kind: str, name: str, steps: int, warmup: int) -> None:
    times, per_step = CONTENDERS[kind][name](steps, warmup)
    med = sorted(times)[len(times) // 2]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"kind": kind, "name": name, "rate": per_step / med, "step_s": med, "peak_rss_gib": rss}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kind", action="append", choices=list(CONTENDERS))
    ap.add_argument("--child", nargs=2, metavar=("KIND", "NAME"))
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.steps, args.warmup)
        return
    teacher_dir()
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for kind in args.kind or CONTENDERS:
            for name in CONTENDERS[kind]:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        kind,
                        name,
                        "--steps",
                        str(args.steps),
                        "--warmup",
                        str(args.warmup),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
                if out.returncode != 0 or not lines:
                    print(f"{kind}/{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
                    continue
                row = json.loads(lines[-1])
                if (kind, name) not in best or row["rate"] > best[(kind, name)]["rate"]:
                    best[(kind, name)] = row
    rows = list(best.values())
    print(
        f"\nSmolLM2-135M fp32; SFT batch {SFT_BATCH} x ~{SEQ} tokens; DPO {DPO_PAIRS} pairs of ~{SEQ} tokens per "
        f"step; {args.steps} timed steps after {args.warmup} warm-up, best of {args.rounds} rounds"
    )
    print(f"{'':<5}{'contender':<34}{'rate':>10}{'':<9}{'peak RSS GiB':>13}{'ours / this':>13}")
    for r in rows:
        ours = best.get((r["kind"], "factory"))
        ratio = ours["rate"] / r["rate"] if ours else float("nan")
        print(
            f"{r['kind']:<5}{r['name']:<34}{r['rate']:>10.3f} {UNIT[r['kind']]:<8}{r['peak_rss_gib']:>13.2f}"
            f"{ratio:>13.2f}"
        )
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "align_speed.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
