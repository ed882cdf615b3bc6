"""Retention against size: how much of the teacher a recipe's release keeps at
several compression ratios, at the recipe's own training budget.

The recipe (by default the embedded default, ``recipes/smollm2-minitron.yaml``)
is run once per fraction of the teacher's parameters: its ``prune`` stage gets
``target_params = fraction x teacher`` (any explicit target shape is dropped,
so the budget search picks the shape), and every stage downstream of it up to
the release candidate (distill, sft, pairs, dpo, ...) is cloned for that
fraction with the same settings. All of it is one pipeline run, so the shared
stages (teacher correction, generated data, tokenized corpora) run once and
every stage is cached: a rerun, or a run with one more fraction, computes only
what is missing. One ``evaluate`` stage scores the teacher and every release
candidate on the recipe's gate suite, and one ``gate`` stage per fraction
compares it with the teacher exactly as the recipe's own gate does (same
allowances, paired bootstrap), so each point says whether a release at that
size would pass.

Per point: parameter count and fraction, each gated score with its
percentile-bootstrap 95% interval and n, and each score's paired difference
from the teacher (95% interval, p-value of "worse", the gate's verdict).
Written to ``bench/results/retention[-TAG].json`` (with the host and its matmul
probe) and printed as a table; the release stage can put the file in the model
card (``release.retention``).

    .venv/bin/python bench/retention.py [--recipe recipes/smollm2-minitron.yaml]
        [--fractions 0.5 0.65 0.8] [--runs-dir runs-bench] [--tag NAME] [--set KEY=VALUE ...]

``--set`` overrides recipe keys before the clone (dotted paths, as on the
``factory run`` command line), e.g. ``--set stages.distill.data=prose`` to
measure the curve with another distillation corpus. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import yaml

from evals import results as res
from evals import stats
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.artifacts import read_manifest
from foundation.errors import FactoryError
from foundation.host import describe as host_info

HERE = Path(__file__).parent
REPO = HERE.parent
SKIP_KINDS = ("evaluate", "gate", "release")


# config keys whose values name models, datasets or stages (at any depth: a
# calibration's data, a blend's members)
REF_KEYS = ("model", "student", "teacher", "data", "results", "reference", "models")


def _strings(x) -> set[str]:
    if isinstance(x, str):
        return {x}
    if isinstance(x, dict):
        return set().union(*(_strings(v) for v in x.values())) if x else set()
    if isinstance(x, list):
        return set().union(*(_strings(v) for v in x)) if x else set()
    return set()


def refs_of(stage: dict) -> set[str]:
    """Names a stage config refers to (model, student, teacher, data, blend members, ...)."""
    found: set[str] = set()
    for key, value in stage.items():
        if key in REF_KEYS:
            found |= _strings(value)
        elif isinstance(value, dict):
            found |= refs_of(value)
    return found


def downstream(stages: dict, root: str) -> list[str]:
    """Stages (in recipe order) that depend on ``root``, directly or not, ``root`` first;
    evaluate, gate and release stages are left out."""
    found = {root}
    grew = True
    while grew:  # to a fixed point: a recipe's stages need not be listed in order
        grew = False
        for name, cfg in stages.items():
            if name not in found and cfg.get("kind") not in SKIP_KINDS and refs_of(cfg) & found:
                found.add(name)
                grew = True
    return [root] + [n for n in stages if n in found and n != root]


def _renamed(value, mapping: dict[str, str]):
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, dict):
        return {k: _renamed(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, mapping) for v in value]
    return value


def rename(stage: dict, mapping: dict[str, str]) -> dict:
    """``stage`` with the names it refers to (REF_KEYS) renamed by ``mapping``."""
    out = {}
    for key, value in stage.items():
        if key in REF_KEYS:
            out[key] = _renamed(value, mapping)
        elif isinstance(value, dict):
            out[key] = rename(value, mapping)
        else:
            out[key] = value
    return out


def point_label(fraction: float) -> str:
    return f"p{round(fraction * 100):02d}"


def _one(stages: dict, kind: str, where: str) -> tuple[str, dict]:
    found = [(n, c) for n, c in stages.items() if c.get("kind") == kind]
    if len(found) != 1:
        raise FactoryError(f"{where}: need exactly one {kind} stage, found {len(found)}")
    return found[0]


def curve_recipe(base: dict, fractions: list[float], teacher_params: int, where: str) -> tuple[dict, dict]:
    """The recipe that trains every point, and label -> candidate stage name."""
    stages = base["stages"]
    prune_name, _ = _one(stages, "prune", where)
    gate_name, gate = _one(stages, "gate", where)
    eval_name, evaluate = _one(stages, "evaluate", where)
    candidate = evaluate["models"][gate["candidate"]]
    baseline = evaluate["models"][gate["baseline"]]
    chain = downstream(stages, prune_name)
    if candidate not in chain:
        raise FactoryError(f"{where}: the gate's candidate {candidate!r} does not depend on {prune_name!r}")
    chain = [n for n in chain if n == candidate or candidate in downstream(stages, n)]
    out = {n: c for n, c in stages.items() if n not in chain and c.get("kind") not in SKIP_KINDS}
    models, candidates = {"teacher": baseline}, {}
    for f in fractions:
        label = point_label(f)
        mapping = {n: f"{n}_{label}" for n in chain}
        for n in chain:
            cfg = rename(copy.deepcopy(stages[n]), mapping)
            if n == prune_name:
                cfg = {k: v for k, v in cfg.items() if not k.startswith("target_")}
                cfg["target_params"] = int(round(f * teacher_params))
            out[mapping[n]] = cfg
        models[label] = candidates[label] = mapping[candidate]
    out["retention_eval"] = {**{k: v for k, v in evaluate.items() if k != "models"}, "models": models}
    for label in candidates:
        g = {k: v for k, v in gate.items() if k not in ("results", "candidate", "baseline")}
        out[f"gate_{label}"] = {**g, "results": "retention_eval", "candidate": label, "baseline": "teacher",
                                "on_regression": "record"}  # fmt: skip
    recipe = {k: v for k, v in base.items() if k != "stages"}
    recipe["name"] = f"{base['name']}-retention"
    recipe["stages"] = out
    return recipe, {"gate": gate_name, "candidate": candidate, "chain": chain}


def apply_sets(recipe: dict, sets: list[str]) -> dict:
    for item in sets:
        key, _, raw = item.partition("=")
        node = recipe
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return recipe


def baseline_spec(base: dict, where: str) -> dict:
    """The ``models:`` entry the recipe's gate compares against (its teacher)."""
    evaluate = _one(base["stages"], "evaluate", where)[1]
    gate = _one(base["stages"], "gate", where)[1]
    return base["models"][evaluate["models"][gate["baseline"]]]


def teacher_param_count(recipe_path: Path, base: dict) -> int:
    """The baseline model's parameters, from its materialized config."""
    from factory.sources.models import ModelSpec, materialize

    return params_of(materialize(ModelSpec(**baseline_spec(base, str(recipe_path))), recipe_path.parent))


def scores(results: dict) -> dict[str, dict]:
    out = {}
    for task, t in results["tasks"].items():
        for metric, m in t["metrics"].items():
            out[f"{task}/{metric}"] = {"value": m["value"], "lo": m["ci"][0], "hi": m["ci"][1], "n": m["n"]}
    return out


def paired_deltas(cand: dict, base: dict) -> dict[str, dict]:
    """Per task/metric of ``base``: candidate - baseline on their shared samples, with the
    paired bootstrap's 95% interval and p-value of "the candidate is worse"."""
    out = {}
    for task in base["tasks"]:
        for metric in base["tasks"][task]["metrics"]:
            b = res.metric_values(res.task_samples(base, task), metric)
            c = res.metric_values(res.task_samples(cand, task), metric)
            pair = stats.paired_bootstrap(b, c)
            out[f"{task}/{metric}"] = {"value": pair.delta, "lo": pair.ci[0], "hi": pair.ci[1], "p": pair.p_worse,
                                       "n": pair.n}  # fmt: skip
    return out


def deltas(cand: dict, base: dict, gate_json: dict) -> dict[str, dict]:
    """``paired_deltas`` with each metric's allowance and verdict from the gate."""
    verdicts = {f"{r['task']}/{r['metric']}": r for r in gate_json["rows"]}
    out = paired_deltas(cand, base)
    for key, d in out.items():
        row = verdicts.get(key, {})
        d.update(allowed=row.get("allowed"), verdict=row.get("verdict"))
    return out


def params_of(model_dir: Path) -> int:
    from factory.planner import param_count

    return param_count(json.loads((model_dir / "config.json").read_text()))


def collect(run_dir: Path, recipe: dict, teacher: dict, fractions: list[float], meta: dict) -> dict:
    ev = run_dir / "retention_eval"
    base = res.load_verified(ev / "results-teacher.json")
    points = [
        {
            "label": "teacher",
            "params": teacher["params"],
            "fraction": 1.0,
            "target_fraction": 1.0,
            "scores": scores(base),
        }  # fmt: skip
    ]
    for f in fractions:
        label = point_label(f)
        cand = res.load_verified(ev / f"results-{label}.json")
        gate_json = json.loads((run_dir / f"gate_{label}" / "gate.json").read_text())
        candidates_stage = recipe["stages"]["retention_eval"]["models"][label]
        params = params_of(run_dir / candidates_stage)
        shape = json.loads((run_dir / f"{meta['prune']}_{label}" / "config.json").read_text())
        points.append(
            {
                "label": label,
                "params": params,
                "fraction": params / teacher["params"],
                "target_fraction": f,
                "shape": {
                    k: shape.get(k)
                    for k in (
                        "hidden_size",
                        "intermediate_size",
                        "num_attention_heads",
                        "num_key_value_heads",
                        "num_hidden_layers",
                    )
                },  # fmt: skip
                "scores": scores(cand),
                "delta": deltas(cand, base, gate_json),
                "gate_passed": gate_json["passed"],
                # what the candidate's own stage measured (e.g. dpo's held-out reward accuracy)
                "candidate_metrics": read_manifest(run_dir / candidates_stage)["metrics"],
            }
        )
    return {"teacher": teacher, "points": points}


def table(data: dict, keys: list[str]) -> str:
    head = ["point", "params", "frac"] + keys + ["gate"]
    rows = [head]
    for p in data["points"]:
        cells = [p["label"], f"{p['params'] / 1e6:.1f}M", f"{p['fraction']:.2f}"]
        for k in keys:
            s = p["scores"].get(k)
            d = p.get("delta", {}).get(k)
            txt = "-" if s is None else f"{s['value']:.3f} [{s['lo']:.3f},{s['hi']:.3f}]"
            if d:
                txt += f" {d['value']:+.3f} {d['verdict']}"
            cells.append(txt)
        cells.append("" if "gate_passed" not in p else ("PASS" if p["gate_passed"] else "FAIL"))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def markdown(data: dict, keys: list[str]) -> str:
    """The curve as a Markdown table: a column per score (value [interval], delta, verdict)."""
    lines = ["| model | params | of teacher | " + " | ".join(keys) + " | gate |", "|---" * (len(keys) + 4) + "|"]
    for p in data["points"]:
        cells = []
        for k in keys:
            s, d = p["scores"][k], p.get("delta", {}).get(k)
            cell = f"{s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"
            if d:
                cell += f"; {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {d['verdict']}"
            cells.append(cell)
        gate = "" if "gate_passed" not in p else ("**PASS**" if p["gate_passed"] else "FAIL")
        name = "teacher" if p["label"] == "teacher" else f"{p['label']} ({p['target_fraction']:.2f})"
        lines.append(
            f"| {name} | {p['params'] / 1e6:.1f}M | {p['fraction']:.2f} | " + " | ".join(cells) + f" | {gate} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "smollm2-minitron.yaml"))
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.65, 0.8])
    ap.add_argument("--runs-dir", default="runs-bench")
    ap.add_argument("--tag", default="", help="suffix of the results file: retention-TAG.json")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=None, help="results file (default bench/results/retention[-TAG].json)")
    args = ap.parse_args(argv)
    recipe_path = Path(args.recipe).resolve()
    base = apply_sets(yaml.safe_load(recipe_path.read_text()), args.sets)
    for f in args.fractions:
        if not 0 < f < 1:
            raise FactoryError(f"--fractions: {f} is not between 0 and 1")
    teacher_params = teacher_param_count(recipe_path, base)
    recipe, meta = curve_recipe(base, sorted(args.fractions), teacher_params, str(recipe_path))
    if args.tag:
        recipe["name"] += f"-{args.tag}"
    meta["prune"] = _one(base["stages"], "prune", str(recipe_path))[0]
    runs = Path(args.runs_dir)
    # the clone lives beside the recipe so that its relative paths still resolve
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=recipe_path.parent, delete=False) as fh:
        yaml.safe_dump(recipe, fh, sort_keys=False)
        clone = Path(fh.name)
    try:
        Pipeline(load_recipe(clone), runs).run()
    finally:
        clone.unlink()
    run_dir = runs / recipe["name"]
    teacher = {"name": _teacher_name(base), "params": teacher_params}
    data = collect(run_dir, recipe, teacher, sorted(args.fractions), meta)
    data = {
        "recipe": str(recipe_path.relative_to(REPO)) if recipe_path.is_relative_to(REPO) else str(recipe_path),
        "overrides": args.sets,
        "host": host_info(),
        "suite": recipe["stages"]["retention_eval"].get("suite"),
        "gate": {
            k: v for k, v in base["stages"][meta["gate"]].items() if k in ("max_drop", "default_max_drop", "alpha")
        },  # fmt: skip
        "budget": _budget(base),
        **data,
    }
    out = Path(args.out) if args.out else HERE / "results" / f"retention{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(data, indent=1) + "\n")
    keys = sorted({k for p in data["points"] for k in p.get("delta", {})})
    print(table(data, keys))
    print(markdown(data, keys))
    print(f"written {out}")
    return data


def _teacher_name(base: dict) -> str:
    spec = baseline_spec(base, "recipe")
    return spec.get("packaged") or spec.get("path") or str(spec)


def _budget(base: dict) -> dict:
    """Tokens (or pairs) each training stage of the recipe spends."""
    out = {}
    for name, cfg in base["stages"].items():
        for key in ("max_tokens", "max_pairs", "prompts", "max_prompts"):
            if key in cfg:
                out[f"{name}.{key}"] = cfg[key]
    return out


if __name__ == "__main__":
    main()
