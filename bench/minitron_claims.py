"""The Minitron paper's claims at small scale, on SmolLM2-135M-Instruct and 2 CPU cores.

All students are about half the teacher (width: hidden 576, MLP 384, 6 heads / 2
groups = 65.9M; depth: 10 of 30 layers = 63.7M), trained on the same tokens of
Shakespeare (far from the teacher's training mix) and scored by their held-out
LM loss on the same held-out blocks of that corpus:

  (a) pruned + distilled   vs  the same architecture from random init, distilled on the same tokens
  (b) logit KD             vs  LM loss only, for the pruned student
  (c) corrected teacher    vs  uncorrected teacher (pruned from and distilled by it)
  (d) width pruning        vs  depth pruning at about equal parameters

Everything runs through the factory's own stages (one recipe, cached), so a
rerun only trains what changed. Numbers are printed whichever way they fall
and written to bench/results/minitron_claims.json.

    .venv/bin/python bench/minitron_claims.py [--tokens 32768] [--runs-dir runs-bench]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.artifacts import read_manifest

HERE = Path(__file__).parent


def recipe(tokens: int, random_init_dir: str | None) -> dict:
    train = {
        "seq_len": 256,
        "batch_size": 4,
        "max_tokens": tokens,
        "eval_tokens": 8192,
        "warmup_ratio": 0.05,
        "checkpoint_every": 16,
        "matmul_precision": "medium",
    }
    calib = {"data": "prose", "samples": 64, "seq_len": 256, "heldout_samples": 8}
    width = {
        "target_hidden_size": 576,
        "target_ffn_hidden_size": 384,
        "target_num_attention_heads": 6,
        "target_num_query_groups": 2,
    }
    stages = {
        "correct": {"kind": "correct", "model": "teacher", "data": "prose", "lr": 1e-4, **train},
        "prune_width": {
            "kind": "prune",
            "model": "correct",
            "calibration": calib,
            **width,
            "matmul_precision": "medium",
        },
        "prune_depth": {
            "kind": "prune",
            "model": "correct",
            "calibration": calib,
            "target_num_layers": 10,
            "depth_criterion": "block_influence",
            "matmul_precision": "medium",
        },
        "prune_width_uncorrected": {
            "kind": "prune",
            "model": "teacher",
            "calibration": calib,
            **width,
            "matmul_precision": "medium",
        },
        "kd_width": {
            "kind": "distill",
            "student": "prune_width",
            "teacher": "correct",
            "data": "prose",
            "lr": 2e-4,
            **train,
        },
        "lm_width": {"kind": "correct", "model": "prune_width", "data": "prose", "lr": 2e-4, **train},
        "kd_depth": {
            "kind": "distill",
            "student": "prune_depth",
            "teacher": "correct",
            "data": "prose",
            "lr": 2e-4,
            **train,
        },
        "kd_width_uncorrected": {
            "kind": "distill",
            "student": "prune_width_uncorrected",
            "teacher": "teacher",
            "data": "prose",
            "lr": 2e-4,
            **train,
        },
    }
    models = {"teacher": {"packaged": "smollm2-135m-instruct"}}
    if random_init_dir:
        models["random_width"] = {"path": random_init_dir}
        stages["kd_random_width"] = {
            "kind": "distill",
            "student": "random_width",
            "teacher": "correct",
            "data": "prose",
            "lr": 2e-4,
            **train,
        }
    return {
        "name": "minitron-claims",
        "seed": 7,
        "models": models,
        "datasets": {"prose": {"packaged": "shakespeare"}},
        "stages": stages,
    }


def random_init_like(artifact: Path, out: Path) -> None:
    """The pruned student's architecture with fresh random weights (same tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(artifact))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(artifact).save_pretrained(out)


def student_loss(runs: Path, stage: str) -> float:
    m = read_manifest(runs / "minitron-claims" / stage)["metrics"]
    return m.get("heldout_lm_loss_after", m.get("eval_loss_after"))


def run(spec: dict, runs: Path, tmp: Path) -> None:
    path = tmp / "minitron-claims.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    Pipeline(load_recipe(path), runs).run()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32768, help="training tokens of every training stage")
    ap.add_argument("--runs-dir", default="runs-bench")
    args = ap.parse_args()
    runs = Path(args.runs_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(recipe(args.tokens, None), runs, tmp)
        rnd = runs / "random-init-width"
        if not (rnd / "config.json").exists():
            random_init_like(runs / "minitron-claims" / "prune_width", rnd)
        run(recipe(args.tokens, str(rnd.resolve())), runs, tmp)
    loss = {
        s: student_loss(runs, s)
        for s in ("correct", "kd_width", "lm_width", "kd_depth", "kd_width_uncorrected", "kd_random_width")
    }
    params = {
        s: read_manifest(runs / "minitron-claims" / s)["metrics"]["params_after"]
        for s in ("prune_width", "prune_depth")
    }
    claims = [
        ("(a) pruned+distilled vs random init, distilled", "kd_width", "kd_random_width"),
        ("(b) logit KD vs LM loss only", "kd_width", "lm_width"),
        ("(c) corrected vs uncorrected teacher", "kd_width", "kd_width_uncorrected"),
        ("(d) width vs depth pruning", "kd_width", "kd_depth"),
    ]
    print(
        f"\nheld-out LM loss on Shakespeare after {args.tokens:,} training tokens per stage "
        f"(corrected teacher: {loss['correct']:.3f}; width student {params['prune_width']:,} params, "
        f"depth student {params['prune_depth']:,})"
    )
    print(f"{'claim':<48}{'paper side':>12}{'other side':>12}{'holds':>7}")
    rows = []
    for label, ours, other in claims:
        holds = loss[ours] < loss[other]
        rows.append(
            {
                "claim": label,
                "paper_side": ours,
                "paper_loss": loss[ours],
                "other_side": other,
                "other_loss": loss[other],
                "holds": holds,
            }
        )
        print(f"{label:<48}{loss[ours]:>12.3f}{loss[other]:>12.3f}{'yes' if holds else 'no':>7}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "minitron_claims.json").write_text(
        json.dumps({"tokens": args.tokens, "loss": loss, "params": params, "claims": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
