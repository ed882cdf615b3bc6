"""The resource planner's predictions against measured runs.

1. The smoke line (recipes/smoke.yaml) at three budget scales, each into its own runs
   dir: the planner is calibrated on scales 1 and 2 (``factory calibrate``'s fit: fixed
   overhead + efficiency per stage kind) and predicts scale 4, an extrapolation; its
   predicted time and peak memory are compared with scale 4's manifests.
2. The default line (recipes/smollm2-minitron.yaml), from the per-stage wall times and
   tokens recorded in docs/performance.md (not rerun: it takes 37 minutes): the
   efficiency is fitted on its `correct` stage alone and predicts every other stage's
   time, which tests whether one achieved FLOP/s per host carries across stage kinds.

CPU peak memory is the process's resident set; the runtime part of it (Python, torch,
transformers, the factory and one trivial training step) is measured here in a fresh
process and stands in for ``planner.CPU_RUNTIME_GIB``.

    .venv/bin/python bench/planner_validation.py                 # CPU: bench/results/planner_validation-cpu.json
    .venv/bin/python bench/planner_validation.py --device cuda   # GPU: a wider tiny model, bf16, -gpu.json

On a GPU the smoke model is widened (4 layers, hidden 1024, MLP 2816, sequence 512, bf16)
so that compute, not start-up, is what is timed; the GPU kind is read from torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory import planner  # noqa: E402 (the repository root on sys.path first)
from factory.recipe import load_recipe  # noqa: E402
from foundation import host  # noqa: E402

SMOKE = ROOT / "recipes/smoke.yaml"
DEFAULT = ROOT / "recipes/smollm2-minitron.yaml"
TRAIN_STAGES = ("correct", "distill", "sft", "dpo")

# docs/performance.md, "What the default line produces": one run on a 2-core AMD EPYC whose
# fp32 matmul probe read 69 GFLOP/s (stage: tokens, wall seconds)
DEFAULT_LINE = {"correct": (24_576, 313), "prune": (32_768, 150), "distill": (57_344, 594),
                "sft": (25_311, 184), "dpo": (29_448, 283)}  # fmt: skip
DEFAULT_HOST = {"cpu": "AMD EPYC (2 cores, AVX2), docs/performance.md", "fp32_matmul_gflops": 69.0}
DEFAULT_PEAK_GIB = 4.9  # the whole line's peak RSS, the only memory figure recorded

RUNTIME_PROBE = """
import resource, torch
import factory.cli, factory.pipeline
from factory.stages.base import stage_kinds
from foundation.host import describe
from transformers import LlamaConfig, LlamaForCausalLM
stage_kinds(); describe()
m = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=16,
                                 num_attention_heads=2, num_key_value_heads=1, vocab_size=259))
opt = torch.optim.AdamW(m.parameters(), fused=True)
x = torch.randint(0, 259, (4, 64))
for _ in range(2):
    m(x, labels=x).loss.backward(); opt.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def scale_overrides(k: int, tokens: int = 4096) -> list[str]:
    """The smoke line with every budget multiplied by ``k`` (``tokens``: correct's and distill's at scale 1)."""
    return [
        f"stages.correct.max_tokens={tokens * k}",
        f"stages.distill.max_tokens={tokens * k}",
        f"stages.prune.calibration.samples={16 * k}",
        f"stages.sft.epochs={k}",
        f"stages.dpo.epochs={k}",
    ]


def gpu_overrides() -> list[str]:
    """A smoke model wide enough that a GPU's time goes to compute, in bf16 on cuda."""
    out = [
        "models.teacher.tiny.num_hidden_layers=4",
        "models.teacher.tiny.hidden_size=1024",
        "models.teacher.tiny.intermediate_size=2816",
        "models.teacher.tiny.num_attention_heads=16",
        "models.teacher.tiny.num_key_value_heads=4",
        "stages.prune.target_hidden_size=768",
        "stages.prune.target_ffn_hidden_size=2048",
        "stages.prune.target_num_attention_heads=16",
        "stages.prune.target_num_query_groups=4",
        "stages.prune.dtype=bfloat16",
        "stages.prune.device=cuda",
    ]
    for s in TRAIN_STAGES:
        out += [f"stages.{s}.device=cuda", f"stages.{s}.dtype=bfloat16"]
    for s in ("correct", "distill"):
        out += [f"stages.{s}.seq_len=512", f"stages.{s}.batch_size=8", f"stages.{s}.eval_tokens=4096"]
    return out


GPU_TOKENS = 131_072  # correct's and distill's budget at scale 1 on a GPU (4 steps of 8 x 512 per 16k)


def run_smoke(runs: Path, overrides: list[str]) -> float:
    """Run the smoke line into ``runs`` (fresh); the seconds it took."""
    t0 = time.perf_counter()
    # this interpreter, not a console script: a GPU machine runs the bench without the project's .venv
    cmd = [sys.executable, "-m", "factory.cli", "run", str(SMOKE), "--runs-dir", str(runs), "--no-progress", *overrides]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure_runtime_gib() -> float:
    out = subprocess.run([sys.executable, "-c", RUNTIME_PROBE], check=True, capture_output=True, text=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def _error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or not measured:
        return None
    return round((predicted - measured) / measured, 3)


def compare(plans: list, measured: dict, peaks: list) -> list[dict]:
    """One row per modelled stage: predicted and measured time and peak memory."""
    rows = []
    for p, peak in zip(plans, peaks):
        m = measured.get(p.stage)
        if m is None or p.time_s is None:
            continue
        rows.append({
            "stage": p.stage,
            "tokens": p.tokens,
            "flops": p.flops,
            "efficiency": round(p.efficiency, 5),
            "time_predicted_s": round(p.time_s, 2),
            "time_measured_s": m.wall_s,
            "time_error": _error(p.time_s, m.wall_s),
            "peak_predicted_gib": None if peak is None else round(peak, 3),
            "peak_measured_gib": None if m.peak_gib is None else round(m.peak_gib, 3),
            "peak_error": _error(peak, m.peak_gib),
        })  # fmt: skip
    return rows


def _scale(k: int, device: str) -> list[str]:
    if device == "cuda":
        return scale_overrides(k, GPU_TOKENS) + gpu_overrides()
    return scale_overrides(k)


def validate_smoke(work: Path, device: str, repeats: int, reuse: bool = False) -> dict:
    """Calibrate on scales 1 and 2, predict scale 4; every scale run ``repeats`` times, the
    fit over all runs, and the held-out scale's best (shortest) run per stage compared,
    as the benches compare best-of-N on shared machines."""
    walls = {}
    for k in (1, 2, 4):
        for i in range(repeats):
            runs = work / f"scale{k}-{i}"
            if not (reuse and (runs / "smoke/release/manifest.json").is_file()):
                if runs.exists():
                    subprocess.run(["rm", "-rf", str(runs)], check=True)
                run_smoke(runs, _scale(k, device))
            stages = [json.loads(m.read_text()) for m in runs.glob("smoke/*/manifest.json")]
            walls[f"{k}-{i}"] = {s["stage"]: s["wall_s"] for s in stages if s["kind"] in planner.MODELLED_KINDS}
    rates = planner.calibrate([work / f"scale{k}-{i}" for k in (1, 2) for i in range(repeats)])
    held: dict = {}
    for m in planner.find_measured([work / f"scale4-{i}" for i in range(repeats)]):
        if m.stage not in held or m.wall_s < held[m.stage].wall_s:
            held[m.stage] = m
    target_dev = held["correct"].device
    if target_dev.key == "cpu":
        target_dev = planner.cpu_device(json.loads((held["correct"].path / "manifest.json").read_text())["host"])
    recipe = load_recipe(SMOKE, _scale(4, device))
    plans = planner.plan_recipe(recipe, planner.Target(target_dev), rates, {s: m.tokens for s, m in held.items()})
    peaks = planner.running_peaks(plans)  # ru_maxrss and torch.cuda.max_memory_allocated: both the process's peak
    return {
        "protocol": f"smoke line at budget scales 1, 2, 4, each run {repeats}x; calibrated on 1 and 2, "
        "predicting 4 (its best run per stage)",
        "stage_wall_s": walls,  # every run's modelled stages: the spread between repeats is the noise
        "rates": [r.__dict__ for r in rates],
        "device": target_dev.name,
        "rows": compare(plans, held, peaks),
    }


def validate_default_line() -> dict:
    """The default line's recorded stage times, predicted from its `correct` stage's efficiency."""
    recipe = load_recipe(DEFAULT)
    device = planner.cpu_device(DEFAULT_HOST)
    tokens = {s: t for s, (t, _) in DEFAULT_LINE.items()}
    probe = planner.plan_recipe(recipe, planner.Target(device), [], tokens)
    correct = next(p for p in probe if p.stage == "correct")
    eff = correct.flops / (device.peak_flops * DEFAULT_LINE["correct"][1])
    rate = planner.Rate("cpu", "correct", "medium", eff, 0.0, 1)
    plans = planner.plan_recipe(recipe, planner.Target(device), [rate], tokens)
    rows = []
    for p in plans:
        if p.stage not in DEFAULT_LINE or p.time_s is None:
            continue
        wall = DEFAULT_LINE[p.stage][1]
        rows.append({"stage": p.stage, "tokens": p.tokens, "flops": p.flops,
                     "time_predicted_s": round(p.time_s, 1), "time_measured_s": wall,
                     "time_error": _error(p.time_s, wall), "peak_predicted_gib": round(p.peak_gib, 2)})  # fmt: skip
    top = max(planner.running_peaks(plans)[i] or 0 for i in range(len(plans)))
    return {
        "protocol": "docs/performance.md's recorded default line; efficiency fitted on correct only",
        "efficiency_from_correct": round(eff, 4),
        "rows": rows,
        "line_peak_predicted_gib": round(top, 2),
        "line_peak_measured_gib": DEFAULT_PEAK_GIB,
        "line_peak_error": _error(top, DEFAULT_PEAK_GIB),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--work", default="/tmp/planner-runs", help="runs dirs go here")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each scale (default 2)")
    ap.add_argument("--reuse", action="store_true", help="read runs already under --work instead of rerunning")
    ap.add_argument("--out", help="results file (default bench/results/planner_validation-<device>.json)")
    args = ap.parse_args()
    runtime = measure_runtime_gib() if args.device == "cpu" else 0.0
    if args.device == "cpu":
        planner.CPU_RUNTIME_GIB = runtime  # this host's measured constant, not the recorded default
    result = {"device": args.device, "host": host.describe(), "cpu_runtime_gib": round(runtime, 3),
              "smoke": validate_smoke(Path(args.work), args.device, args.repeats, args.reuse)}  # fmt: skip
    if args.device == "cpu":
        result["default_line"] = validate_default_line()
    out = Path(args.out or ROOT / f"bench/results/planner_validation-{'gpu' if args.device == 'cuda' else 'cpu'}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for part in ("smoke", "default_line"):
        for r in result.get(part, {}).get("rows", []):
            line = f"{part:<12} {r['stage']:<8} time {r['time_predicted_s']:>8} vs {r['time_measured_s']:>8} s "
            line += f"({r['time_error']:+.0%})"
            if r.get("peak_error") is not None:
                line += f"  peak {r['peak_predicted_gib']} vs {r['peak_measured_gib']} GiB ({r['peak_error']:+.0%})"
            print(line)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
