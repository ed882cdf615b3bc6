"""The Minitron paper's claims at small scale, on SmolLM2-135M-Instruct and 2 CPU cores,
over several seeds, with 95% intervals.

All students are about half the teacher (width: hidden 576, MLP 384, 6 heads / 2
groups = 65.9M; depth: 10 of 30 layers = 63.7M), trained on the same tokens of
Shakespeare (far from the teacher's training mix) and scored by their held-out
LM loss on the same held-out blocks of that corpus, and by ARC-Easy (all 570
validation questions, 0-shot, acc and acc_norm, scored by the factory-hf harness):

  (a) pruned + distilled   vs  the same architecture from random init, distilled on the same tokens
  (b) logit KD             vs  LM loss only, for the pruned student
  (c) corrected teacher    vs  uncorrected teacher (pruned from and distilled by it)
  (d) width pruning        vs  depth pruning at about equal parameters

A seed is the recipe's ``seed``: it changes the training data order and the
calibration samples the pruning importance is estimated on (and the random init
of (a)). Per side: the mean over seeds and its 95% t-interval; per claim: the
mean paired difference (other side minus the paper's side, so > 0 means the claim
holds) with its 95% t-interval over seeds, and for ARC-Easy also a paired
bootstrap over (seed, question) pairs. With 3 seeds the t-interval is wide
(t = 4.30): a claim "holds" only where the whole interval is on its side.

Everything runs through the factory's own stages (one recipe per seed, cached),
and ARC-Easy scores are cached by the scored model's manifest hash, so a rerun or
a resumed run only computes what is missing. Numbers are printed whichever way
they fall and written to bench/results/minitron_claims.json.

    .venv/bin/python bench/minitron_claims.py [--seeds 1 2 3] [--tokens 32768] [--runs-dir runs-bench]
                                              [--arc-limit 570] [--no-arc]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import yaml

from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.artifacts import read_manifest

HERE = Path(__file__).parent
STUDENTS = ("kd_width", "lm_width", "kd_depth", "kd_width_uncorrected", "kd_random_width")
CLAIMS = [
    ("(a) pruned+distilled vs random init, distilled", "kd_width", "kd_random_width"),
    ("(b) logit KD vs LM loss only", "kd_width", "lm_width"),
    ("(c) corrected vs uncorrected teacher", "kd_width", "kd_width_uncorrected"),
    ("(d) width vs depth pruning", "kd_width", "kd_depth"),
]
# two-sided 95% quantiles of Student's t by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def recipe(tokens: int, seed: int, random_init_dir: str | None) -> dict:
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
        "name": f"minitron-claims-s{seed}",
        "seed": seed,
        "models": models,
        "datasets": {"prose": {"packaged": "shakespeare"}},
        "stages": stages,
    }


def random_init_like(artifact: Path, out: Path, seed: int) -> None:
    """The pruned student's architecture with fresh random weights (same tokenizer)."""
    import torch  # heavy: only for building the random-init student
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # heavy: as above

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(artifact))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(artifact).save_pretrained(out)


def student_loss(run_dir: Path, stage: str) -> float:
    m = read_manifest(run_dir / stage)["metrics"]
    return m.get("heldout_lm_loss_after", m.get("eval_loss_after"))


def run(spec: dict, runs: Path, tmp: Path) -> None:
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    Pipeline(load_recipe(path), runs).run()


def arc_easy(model_dir: Path, cache: Path, limit: int | None) -> dict[str, list[float]]:
    """Per-question acc and acc_norm on ARC-Easy validation, cached by the model's manifest hash."""
    key = f"{read_manifest(model_dir)['hash'][:16]}-{limit or 'all'}.json"
    path = cache / key
    if path.is_file():
        return json.loads(path.read_text())
    from evals.tasks.harness import HarnessTask  # heavy: lm-eval loads with it

    records = HarnessTask("arc_easy", device="cpu", dtype="float32").evaluate_model(
        str(model_dir), limit=limit, progress=False
    )
    out = {"ids": [], "acc": [], "acc_norm": []}
    for sample, _answer, score in records:
        out["ids"].append(sample.id)
        out["acc"].append(score.metrics["acc"])
        out["acc_norm"].append(score.metrics["acc_norm"])
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def interval(values: list[float]) -> dict:
    """Mean and 95% t-interval over seeds (no interval from one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci": [math.nan, math.nan], "n": len(values), "values": values}
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(values), "values": values}


def one_seed(seed: int, tokens: int, runs: Path, arc_limit: int | None, with_arc: bool) -> dict:
    """Train (or find cached) every student of one seed; their held-out loss and ARC-Easy."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(recipe(tokens, seed, None), runs, tmp)
        run_dir = runs / f"minitron-claims-s{seed}"
        rnd = runs / f"random-init-width-s{seed}"
        if not (rnd / "config.json").exists():
            random_init_like(run_dir / "prune_width", rnd, seed)
        run(recipe(tokens, seed, str(rnd.resolve())), runs, tmp)
    out = {
        "loss": {s: student_loss(run_dir, s) for s in ("correct", *STUDENTS)},
        "params": {s: read_manifest(run_dir / s)["metrics"]["params_after"] for s in ("prune_width", "prune_depth")},
    }
    if with_arc:
        out["arc_easy"] = {s: arc_easy(run_dir / s, runs / "claims-arc", arc_limit) for s in STUDENTS}
    return out


def paired_arc(per_seed: dict, ours: str, other: str, metric: str) -> dict:
    """Paired bootstrap of (other - ours) over every (seed, question) pair."""
    from evals.stats import paired_bootstrap  # light, but keeps the loss-only path free of evals

    base, cand = {}, {}
    for seed, res in per_seed.items():
        a, b = res["arc_easy"][ours], res["arc_easy"][other]
        base.update({(seed, i): (v, 1.0) for i, v in zip(a["ids"], a[metric], strict=True)})
        cand.update({(seed, i): (v, 1.0) for i, v in zip(b["ids"], b[metric], strict=True)})
    p = paired_bootstrap(base, cand)
    return {"n": p.n, "delta": p.delta, "ci": list(p.ci)}


def summarize(per_seed: dict) -> list[dict]:
    """Per claim: both sides and their difference, for the loss and (where scored) ARC-Easy."""
    rows = []
    with_arc = all("arc_easy" in r for r in per_seed.values())
    for label, ours, other in CLAIMS:
        row = {"claim": label, "paper_side": ours, "other_side": other}
        loss = {k: [r["loss"][k] for r in per_seed.values()] for k in (ours, other)}
        # a lower loss is better: other - ours > 0 where the paper's side wins
        row["loss"] = {
            "paper": interval(loss[ours]),
            "other": interval(loss[other]),
            "other_minus_paper": interval([b - a for a, b in zip(loss[ours], loss[other], strict=True)]),
        }
        if with_arc:
            for metric in ("acc", "acc_norm"):
                acc = {
                    k: [statistics.fmean(r["arc_easy"][k][metric]) for r in per_seed.values()] for k in (ours, other)
                }
                # a higher accuracy is better: paper - other > 0 where the paper's side wins
                row[f"arc_easy_{metric}"] = {
                    "paper": interval(acc[ours]),
                    "other": interval(acc[other]),
                    "paper_minus_other": interval([a - b for a, b in zip(acc[ours], acc[other], strict=True)]),
                    "paired_bootstrap_other_minus_paper": paired_arc(per_seed, ours, other, metric),
                }
        row["holds"] = verdict(row)
        rows.append(row)
    return rows


def verdict(row: dict) -> str:
    """'yes' / 'no' where the loss difference's whole interval is on one side, else 'unclear'."""
    lo, hi = row["loss"]["other_minus_paper"]["ci"]
    if math.isnan(lo):
        return "yes" if row["loss"]["other_minus_paper"]["mean"] > 0 else "no"
    return "yes" if lo > 0 else "no" if hi < 0 else "unclear"


def fmt(iv: dict, digits: int = 3) -> str:
    lo, hi = iv["ci"]
    if math.isnan(lo):
        return f"{iv['mean']:.{digits}f}"
    return f"{iv['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def report(rows: list[dict], per_seed: dict, tokens: int) -> None:
    first = next(iter(per_seed.values()))
    print(
        f"\n{len(per_seed)} seeds ({', '.join(map(str, per_seed))}), {tokens:,} training tokens per stage; width "
        f"student {first['params']['prune_width']:,} params, depth student {first['params']['prune_depth']:,}"
    )
    print(f"{'claim':<48}{'held-out loss: paper side':>30}{'other side':>26}{'other - paper':>26}  holds")
    for r in rows:
        L = r["loss"]
        print(
            f"{r['claim']:<48}{fmt(L['paper']):>30}{fmt(L['other']):>26}{fmt(L['other_minus_paper']):>26}  {r['holds']}"
        )
    if "arc_easy_acc" in rows[0]:
        print(
            f"\n{'ARC-Easy (570 validation questions)':<48}{'acc: paper side':>30}{'other side':>26}{'paper - other':>26}"
        )
        for r in rows:
            A = r["arc_easy_acc"]
            print(f"{r['claim']:<48}{fmt(A['paper']):>30}{fmt(A['other']):>26}{fmt(A['paper_minus_other']):>26}")
        print(f"{'':<48}{'acc_norm: paper side':>30}")
        for r in rows:
            A = r["arc_easy_acc_norm"]
            print(f"{r['claim']:<48}{fmt(A['paper']):>30}{fmt(A['other']):>26}{fmt(A['paper_minus_other']):>26}")


def results_record(per_seed: dict, rows: list[dict], tokens: int, arc_limit: int | None) -> dict:
    """What bench/results/minitron_claims.json holds: per seed the losses and ARC-Easy means, the claims."""
    from foundation.host import describe  # light; only the record needs it

    seeds = {}
    for seed, res in per_seed.items():
        arc = {
            s: {m: statistics.fmean(x[m]) for m in ("acc", "acc_norm")} | {"n": len(x["ids"])}
            for s, x in res.get("arc_easy", {}).items()
        }
        seeds[str(seed)] = {"loss": res["loss"], "params": res["params"], "arc_easy": arc}
    return {
        "tokens": tokens,
        "seeds": list(per_seed),
        "arc_limit": arc_limit,
        "host": describe(),
        "per_seed": seeds,
        "claims": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--tokens", type=int, default=32768, help="training tokens of every training stage")
    ap.add_argument("--runs-dir", default="runs-bench")
    ap.add_argument("--arc-limit", type=int, default=None, help="ARC-Easy questions (default: all 570)")
    ap.add_argument("--no-arc", action="store_true", help="held-out loss only")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "minitron_claims.json")
    args = ap.parse_args()
    runs = Path(args.runs_dir)
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = one_seed(seed, args.tokens, runs, args.arc_limit, not args.no_arc)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_seed[seed]["loss"].items()), flush=True)
    rows = summarize(per_seed)
    report(rows, per_seed, args.tokens)
    args.out.parent.mkdir(exist_ok=True)
    record = results_record(per_seed, rows, args.tokens, args.arc_limit)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
