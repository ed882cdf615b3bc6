"""Alignment-aware distillation: does distilling on the teacher's own chat answers
(blended with prose) keep more of an instruct teacher than distilling on prose only?

At one point of the retention curve (``bench/retention.py``: the same recipe, the
same pruned student, the same number of distillation tokens), two students are
distilled from the corrected teacher:

  mix    the recipe's own distillation data: ``{blend: [[0.5, prose], [0.5, answers]]}``,
         answers being the teacher's greedy answers to instruction prompts rendered
         with its chat template (sequence-level KD data; the ``generate`` stage)
  prose  prose only, as the paper distils a base model before any alignment

and each is then aligned exactly as the recipe aligns (SFT on the instruction data;
the paper's order is "distil, then align", so ``prose`` + SFT is that order, and
``mix`` + SFT distils an instruct-aware student before aligning it). All four models
are scored on IFEval (all 541 prompts, answers capped at 256 tokens) and ARC-Easy
(all 570 questions), with percentile-bootstrap 95% intervals, and the paired
difference mix - prose with its interval and p-value, after distillation and after
SFT.

It runs in the retention bench's run directory with the same stage names, so the
pruned student, the corpora, the teacher answers and the mix student are taken from
that run when they are there (run ``bench/retention.py`` first, or let this compute
them). Written to ``bench/results/align_distill.json`` and printed as a table.

    .venv/bin/python bench/align_distill.py [--fraction 0.8] [--runs-dir runs-bench]
        [--recipe recipes/smollm2-minitron.yaml] [--ifeval-limit N]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import tempfile
from pathlib import Path

import yaml

from evals import results as res
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.errors import FactoryError
from foundation.host import describe as host_info

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("retention", HERE / "retention.py")
retention = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(retention)

PROSE_KEY = "prose_only"


def suite(ifeval_limit: int | None) -> dict:
    ifeval = {"task": "ifeval", "sampling": {"max_tokens": 256}}
    if ifeval_limit:
        ifeval["limit"] = ifeval_limit
    return {
        "name": "align-distill",
        "description": "IFEval and ARC-Easy in full",
        "engine": "auto",
        "tasks": [ifeval, {"task": "harness", "tasks": ["arc_easy"]}],
    }


def prose_member(blend: list, stages: dict) -> str:
    """The blend member that is not generated chat answers: the prose corpus."""
    for _weight, member in blend:
        src = stages.get(member, {}).get("data")
        if stages.get(src, {}).get("kind") != "generate":
            return member
    raise FactoryError("the distill stage's blend has no prose member")


def order_recipe(base: dict, fraction: float, teacher_params: int, ifeval_limit: int | None) -> tuple[dict, dict]:
    recipe, meta = retention.curve_recipe(base, [fraction], teacher_params, "recipe")
    label = retention.point_label(fraction)
    stages = recipe["stages"]
    distill = next(n for n in meta["chain"] if base["stages"][n]["kind"] == "distill")
    sft = next(n for n in meta["chain"] if base["stages"][n]["kind"] == "sft")
    data = base["stages"][distill]["data"]
    if not (isinstance(data, dict) and "blend" in data):
        raise FactoryError(f"stages.{distill}.data: not a blend; nothing to compare prose-only against")
    mix_d, mix_s = f"{distill}_{label}", f"{sft}_{label}"
    prose_d, prose_s = f"{distill}_{PROSE_KEY}_{label}", f"{sft}_{PROSE_KEY}_{label}"
    stages[prose_d] = {**copy.deepcopy(stages[mix_d]), "data": prose_member(data["blend"], base["stages"])}
    stages[prose_s] = {**copy.deepcopy(stages[mix_s]), "model": prose_d}
    later = {f"{n}_{label}" for n in meta["chain"][1:] if n not in (distill, sft)}  # alignment after SFT
    for n in list(stages):  # drop what this comparison does not need: later alignment, the gates
        if n in later or n.startswith("gate_"):
            del stages[n]
    del stages["retention_eval"]
    models = {"distilled_mix": mix_d, "distilled_prose": prose_d, "sft_mix": mix_s, "sft_prose": prose_s}
    stages["order_eval"] = {"kind": "evaluate", "models": models, "suite": suite(ifeval_limit)}
    return recipe, models


def compare(ev: Path, a: str, b: str) -> dict:
    """a - b on the samples both were scored on (retention.paired_deltas)."""
    return retention.paired_deltas(
        res.load_verified(ev / f"results-{a}.json"), res.load_verified(ev / f"results-{b}.json")
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(retention.REPO / "recipes" / "smollm2-minitron.yaml"))
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--runs-dir", default="runs-bench")
    ap.add_argument("--ifeval-limit", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "align_distill.json"))
    args = ap.parse_args(argv)
    recipe_path = Path(args.recipe).resolve()
    base = yaml.safe_load(recipe_path.read_text())
    teacher_params = retention.teacher_param_count(recipe_path, base)
    recipe, models = order_recipe(base, args.fraction, teacher_params, args.ifeval_limit)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=recipe_path.parent, delete=False) as fh:
        yaml.safe_dump(recipe, fh, sort_keys=False)
        clone = Path(fh.name)
    try:
        Pipeline(load_recipe(clone), Path(args.runs_dir)).run()
    finally:
        clone.unlink()
    ev = Path(args.runs_dir) / recipe["name"] / "order_eval"
    data = {
        "recipe": str(recipe_path.name),
        "fraction": args.fraction,
        "host": host_info(),
        "models": models,
        "scores": {label: retention.scores(res.load_verified(ev / f"results-{label}.json")) for label in models},
        "mix_minus_prose": {
            "distilled": compare(ev, "distilled_mix", "distilled_prose"),
            "sft": compare(ev, "sft_mix", "sft_prose"),
        },
    }
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    print(report(data))
    print(f"written {args.out}")
    return data


def report(data: dict) -> str:
    keys = list(next(iter(data["scores"].values())))
    lines = ["| metric | " + " | ".join(data["scores"]) + " | mix - prose, distilled | mix - prose, after SFT |"]
    lines.append("|---" * (len(data["scores"]) + 3) + "|")
    for k in keys:
        cells = [f"{s[k]['value']:.3f} [{s[k]['lo']:.3f}, {s[k]['hi']:.3f}]" for s in data["scores"].values()]
        for stage in ("distilled", "sft"):
            d = data["mix_minus_prose"][stage][k]
            cells.append(f"{d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] p={d['p']:.3f}")
        n = next(iter(data["scores"].values()))[k]["n"]
        lines.append(f"| {k} (n={n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
