"""The Minitron paper's token savings at small scale: how many training tokens a model of the
student's architecture needs from random init to reach the held-out loss that pruning +
distillation reaches, on SmolLM2-135M-Instruct and 2 CPU cores.

Three contenders, one architecture (the width-pruned student of bench/minitron_claims.py:
hidden 576, MLP 384, 6 heads / 2 groups, 65.9M parameters), the same training corpus
(Shakespeare), seq_len, batch, seed and held-out blocks:

  student     SmolLM2-135M-Instruct corrected on the corpus, width-pruned, then logit-distilled
              from the corrected teacher (minitron_claims' correct -> prune_width -> kd_width)
  scratch_kd  the same architecture from random init, logit-distilled from the same teacher
  scratch_lm  the same architecture from random init, trained with the LM loss only

Each is trained once, and its held-out LM loss is evaluated at log-spaced token counts within
the run (the loop's ``eval_at_tokens``). For every budget B of the student, the tokens T a
scratch run needs to reach the student's loss at B are read off the scratch curve (linear in
log-tokens between its evaluated points; between step 0 and the first point, where log-tokens
is undefined, linear in tokens) and reported as T / B. Where a scratch run never gets there
within its budget, T / B is only a lower bound (``>= max_tokens / B``) and is marked so. The
paper reports up to 40x fewer tokens; this prints whether at least 10x was measured (a lower
bound of 10x or more counts).

Why one run per contender gives a valid curve: the learning rate is constant after the warmup
(``min_lr_ratio: 1.0``, no decay), so the weights after B tokens are exactly those of a run
stopped at B, without the cooldown a decaying schedule would give it. Every contender is
treated alike: none gets a cooldown, so none is flattered at its last point. The warmup is the
first 5% of each run's steps (as in minitron_claims), so a scratch run is still warming up at
its earliest points; that only slows scratch where its curve is far above the student's.

What is counted: distillation (or training) tokens only. Not counted: the teacher's correction
(32K tokens, shared by student and scratch_kd's teacher) and the student's pruning calibration
(64 x 256 tokens, forward only), as the paper counts its student's distillation tokens.

Learning rates: the student's is minitron_claims' 2e-4 (fine-tuning a trained model); a model
from random init gets the larger rate usual for pretraining (``--scratch-lr``, 1e-3): the
student's rate would slow random init and flatter the ratio. It is not tuned per budget.

Data: each run packs as many training blocks as its own budget needs from the same shuffled
corpus (the held-out blocks, the first ones, are identical), so the student's first B tokens
are not the scratch runs' first B tokens; all are draws from one corpus, none repeats a block
at these budgets (Shakespeare is 1.56M tokens of the teacher's tokenizer).

Cost of the defaults (65,536 student tokens, 524,288 scratch tokens, 8 student points; 11
scratch points, the same density per doubling): the distill stage runs ~700 tokens/s on the
2-core host and the LM-only one about twice that, so correct 32K + student 64K + scratch_kd
512K + scratch_lm 512K take about 21 minutes, plus ~30 held-out evals of 8,192 tokens, about
25 minutes in all. The largest ratio measurable at budget B is 524,288 / B: 8x at 64K, 64x at
8K, 512x at 1K.

Everything runs through the factory's own Pipeline (one recipe, cached per stage), so a rerun
or a resumed run only computes what is missing. Results: bench/results/token_savings.json and,
where matplotlib imports, bench/results/token_savings.png.

    .venv/bin/python bench/token_savings.py [--student-tokens 65536] [--scratch-tokens 524288]
                                            [--points 8] [--scratch-lr 1e-3] [--seed 1]
                                            [--runs-dir runs-bench] [--shapes tiny]

``--shapes tiny`` runs the same line on a tiny random Llama and the project's smoke corpus
(seconds; the tests use it): its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _load_claims():
    """bench/minitron_claims.py, beside this file (bench/ is no package; sys.path stays as it is)."""
    spec = importlib.util.spec_from_file_location("minitron_claims", HERE / "minitron_claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


claims = _load_claims()

CONTENDERS = ("student", "scratch_kd", "scratch_lm")
LOSS_KEY = {"student": "eval_lm_loss", "scratch_kd": "eval_lm_loss", "scratch_lm": "eval_loss"}
TARGET_RATIO = 10.0  # the paper reports up to 40x; at least this much counts as measured savings

# --shapes tiny: minitron_claims' recipe scaled down to a tiny random Llama and the smoke corpus
TINY_TEACHER = {
    "tiny": {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    }
}
TINY_WIDTH = {
    "target_hidden_size": 48,
    "target_ffn_hidden_size": 64,
    "target_num_attention_heads": 4,
    "target_num_query_groups": 2,
}
TINY_TRAIN = {"seq_len": 64, "eval_tokens": 512}
TINY_CALIB = {"samples": 16, "seq_len": 64, "heldout_samples": 4}


@dataclass
class Settings:
    """What one measurement is run with (written to the results record)."""

    student_tokens: int = 65536
    scratch_tokens: int = 524288
    points: int = 8
    correct_tokens: int = 32768
    student_lr: float = 2e-4
    scratch_lr: float = 1e-3
    seed: int = 1
    shapes: str = "smollm2"

    @property
    def name(self) -> str:
        return f"token-savings-{self.shapes}-s{self.seed}"


def eval_points(max_tokens: int, per_step: int, points: int) -> list[int]:
    """``points`` token counts log-spaced from one optimizer step to ``max_tokens``, each a whole
    number of steps (fewer where two round to the same step)."""
    last = max(1, math.ceil(max_tokens / per_step))
    if points < 2 or last == 1:
        return [last * per_step]
    steps = {round(last ** (i / (points - 1))) for i in range(points)}
    return [s * per_step for s in sorted(steps)]


def scratch_point_count(settings: Settings, per_step: int) -> int:
    """Points for a scratch run: the student's density per doubling, over the scratch budget."""
    student = math.log(max(2, math.ceil(settings.student_tokens / per_step)))
    scratch = math.log(max(2, math.ceil(settings.scratch_tokens / per_step)))
    return 1 + round((settings.points - 1) * scratch / student)


def _shrink(spec: dict) -> dict:
    """minitron_claims' recipe on the tiny random Llama and the smoke corpus (in place)."""
    spec["models"]["teacher"] = TINY_TEACHER
    spec["datasets"]["prose"] = {"path": str(ROOT / "recipes" / "data" / "smoke.txt"), "doc_chars": 400}
    for stage in spec["stages"].values():
        if stage["kind"] == "prune":
            stage.update(TINY_WIDTH)
            stage["calibration"].update(TINY_CALIB)
        else:
            stage.update(TINY_TRAIN)
    return spec


def recipe(settings: Settings, random_init_dir: str | None) -> dict:
    """The recipe: minitron_claims' correct and prune_width stages as they are, its kd_width as the
    student at a constant learning rate, and (once the random init exists) the two scratch runs."""
    base = claims.recipe(settings.correct_tokens, settings.seed, None)
    if settings.shapes == "tiny":
        base = _shrink(base)
    template = base["stages"]["kd_width"]
    per_step = template["seq_len"] * template["batch_size"]
    flat = {**template, "min_lr_ratio": 1.0}  # constant after warmup: every point is a stopped run

    lm = {k: v for k, v in flat.items() if k not in ("student", "teacher")} | {"kind": "correct"}

    def curve(stage: dict, tokens: int, points: int, **changes) -> dict:
        return {**stage, **changes, "max_tokens": tokens, "eval_at_tokens": eval_points(tokens, per_step, points)}

    stages = {k: base["stages"][k] for k in ("correct", "prune_width")}
    stages["student"] = curve(flat, settings.student_tokens, settings.points, lr=settings.student_lr)
    models = dict(base["models"])
    if random_init_dir:
        models["random_width"] = {"path": random_init_dir}
        n = scratch_point_count(settings, per_step)
        tokens, lr = settings.scratch_tokens, settings.scratch_lr
        stages["scratch_kd"] = curve(flat, tokens, n, student="random_width", lr=lr)
        stages["scratch_lm"] = curve(lm, tokens, n, model="random_width", lr=lr)
    return {
        "name": settings.name,
        "seed": settings.seed,
        "models": models,
        "datasets": base["datasets"],
        "stages": stages,
    }


def read_curve(stage_dir: Path, key: str) -> list[tuple[int, float]]:
    """(tokens, held-out loss) of every eval row in a stage's metrics.jsonl, by tokens."""
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sorted({r["tokens"]: r[key] for r in rows if key in r}.items())


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> dict:
    """The first token count at which ``curve`` (sorted (tokens, loss), starting at step 0 or not)
    reaches ``target``: ``{"tokens", "bound"}``, bound "=" where it gets there (interpolated linearly
    in log-tokens, or in tokens from a 0-token point) and ">=" (tokens = the curve's last point)
    where it never does."""
    t0, l0 = curve[0]
    if l0 <= target:
        return {"tokens": float(t0), "bound": "="}
    for (ta, la), (tb, lb) in zip(curve, curve[1:]):
        if lb <= target:
            frac = (la - target) / (la - lb)
            if frac == 1.0:  # on the point itself: exactly its tokens
                return {"tokens": float(tb), "bound": "="}
            if ta == 0:
                return {"tokens": frac * tb, "bound": "="}
            return {"tokens": math.exp(math.log(ta) + frac * (math.log(tb) - math.log(ta))), "bound": "="}
    return {"tokens": float(curve[-1][0]), "bound": ">="}


def savings(student: list[tuple[int, float]], scratch: dict[str, list[tuple[int, float]]]) -> list[dict]:
    """Per student budget B > 0: its loss, and per scratch run the tokens to match it and T / B."""
    rows = []
    for budget, loss in student:
        if budget <= 0:
            continue
        row = {"budget": budget, "student_loss": loss}
        for name, curve in scratch.items():
            reach = tokens_to_reach(curve, loss)
            row[name] = reach | {"ratio": reach["tokens"] / budget}
        rows.append(row)
    return rows


def verdict(rows: list[dict], name: str) -> dict:
    """The largest ratio against one scratch run, and whether >= TARGET_RATIO was measured:
    "yes" (an exact ratio or a lower bound reaches it), "no" (every ratio is exact and below),
    "unknown" (below, but some are lower bounds only)."""
    best = max(rows, key=lambda r: r[name]["ratio"])
    if any(r[name]["ratio"] >= TARGET_RATIO for r in rows):
        answer = "yes"
    elif all(r[name]["bound"] == "=" for r in rows):
        answer = "no"
    else:
        answer = "unknown"
    return {
        "max_ratio": best[name]["ratio"],
        "bound": best[name]["bound"],
        "at_budget": best["budget"],
        "at_least_10x": answer,
    }


def run(settings: Settings, runs: Path) -> dict[str, list[tuple[int, float]]]:
    """Train (or find cached) every contender; their held-out loss curves."""
    from factory.pipeline import Pipeline  # heavy: torch and transformers load with the stages
    from factory.recipe import load_recipe  # as above

    run_dir = runs / settings.name
    rnd = runs / f"{settings.name}-random-width"
    with tempfile.TemporaryDirectory() as tmp:
        for phase in (None, str(rnd.resolve())):
            if phase and not (rnd / "config.json").exists():
                claims.random_init_like(run_dir / "prune_width", rnd, settings.seed)
            path = Path(tmp) / f"{settings.name}.yaml"
            path.write_text(json.dumps(recipe(settings, phase)))  # JSON is YAML
            Pipeline(load_recipe(path), runs).run()
    return {name: read_curve(run_dir / name, LOSS_KEY[name]) for name in CONTENDERS}


def ratio_text(reach: dict) -> str:
    """``12.3x`` or ``>= 8.0x`` (never reached within the scratch budget)."""
    return f"{'>= ' if reach['bound'] == '>=' else ''}{reach['ratio']:.1f}x"


def tokens_text(reach: dict) -> str:
    """``12,345`` or ``>= 524,288``."""
    return f"{'>= ' if reach['bound'] == '>=' else ''}{reach['tokens']:,.0f}"


def report(rows: list[dict], verdicts: dict, settings: Settings) -> None:
    print(
        f"\nheld-out LM loss of the student after B distillation tokens, and the tokens a model of its "
        f"architecture needs from random init to reach it (scratch runs up to {settings.scratch_tokens:,} tokens)"
    )
    print(f"{'B':>9}{'student loss':>14}{'scratch KD tokens':>20}{'ratio':>10}{'scratch LM tokens':>20}{'ratio':>10}")
    for r in rows:
        kd, lm = r["scratch_kd"], r["scratch_lm"]
        print(
            f"{r['budget']:>9,}{r['student_loss']:>14.3f}{tokens_text(kd):>20}{ratio_text(kd):>10}"
            f"{tokens_text(lm):>20}{ratio_text(lm):>10}"
        )
    if any(r[n]["bound"] == ">=" for r in rows for n in ("scratch_kd", "scratch_lm")):
        print("'>=': the scratch run never reached the student's loss within its budget; the ratio is a lower bound")
    for name, v in verdicts.items():
        best = f"{'>= ' if v['bound'] == '>=' else ''}{v['max_ratio']:.1f}x at B = {v['at_budget']:,}"
        print(f"{name}: largest ratio {best}; >= {TARGET_RATIO:.0f}x measured: {v['at_least_10x']}")


def plot(curves: dict, rows: list[dict], path: Path) -> bool:
    """Loss against tokens (log x), one line per contender, and for each student budget a
    horizontal marker to where the LM-only scratch run reaches its loss. False without matplotlib."""
    try:
        import matplotlib  # optional: the plot only

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional: as above
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    labels = {"student": "pruned + distilled", "scratch_kd": "random init, KD", "scratch_lm": "random init, LM loss"}
    for name, curve in curves.items():
        pts = [(t, loss) for t, loss in curve if t > 0]
        ax.plot([t for t, _ in pts], [loss for _, loss in pts], marker="o", ms=3, label=labels[name])
    for r in (r for r in rows if r["scratch_lm"]["tokens"] > 0):  # a log axis has no 0
        ax.hlines(r["student_loss"], r["budget"], r["scratch_lm"]["tokens"], colors="grey", linestyles=":", lw=0.8)
        ax.plot(
            r["scratch_lm"]["tokens"],
            r["student_loss"],
            marker=">" if r["scratch_lm"]["bound"] == ">=" else "x",
            color="grey",
            ms=5,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out LM loss")
    ax.set_title("tokens to reach the pruned + distilled student's loss")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def results_record(settings: Settings, curves: dict, rows: list[dict], verdicts: dict) -> dict:
    """What bench/results/token_savings.json holds."""
    from foundation.host import describe  # light; only the record needs it

    return {
        "settings": asdict(settings),
        "host": describe(),
        "curves": {name: [{"tokens": t, "loss": loss} for t, loss in c] for name, c in curves.items()},
        "savings": rows,
        "verdicts": verdicts,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Settings()
    ap.add_argument("--student-tokens", type=int, default=d.student_tokens, help="the student's distillation budget")
    ap.add_argument("--scratch-tokens", type=int, default=d.scratch_tokens, help="each scratch run's budget")
    ap.add_argument("--points", type=int, default=d.points, help="log-spaced eval points of the student")
    ap.add_argument("--correct-tokens", type=int, default=d.correct_tokens, help="the teacher's correction budget")
    ap.add_argument("--scratch-lr", type=float, default=d.scratch_lr, help="learning rate from random init")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--shapes", choices=("smollm2", "tiny"), default=d.shapes)
    ap.add_argument("--runs-dir", type=Path, default=Path("runs-bench"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "token_savings.json")
    args = ap.parse_args(argv)
    settings = Settings(
        student_tokens=args.student_tokens,
        scratch_tokens=args.scratch_tokens,
        points=args.points,
        correct_tokens=args.correct_tokens,
        scratch_lr=args.scratch_lr,
        seed=args.seed,
        shapes=args.shapes,
    )
    curves = run(settings, args.runs_dir)
    rows = savings(curves["student"], {n: curves[n] for n in ("scratch_kd", "scratch_lm")})
    verdicts = {n: verdict(rows, n) for n in ("scratch_kd", "scratch_lm")}
    report(rows, verdicts, settings)
    record = results_record(settings, curves, rows, verdicts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    if plot(curves, rows, args.out.with_suffix(".png")):
        print(f"plot: {args.out.with_suffix('.png')}")
    return record


if __name__ == "__main__":
    main()
