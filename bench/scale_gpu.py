"""Memory and speed of the native engine at the shapes users run, on one GPU.

Random weights of real architectures (nothing is downloaded): a Llama-3.1-8B-shaped teacher
(hidden 4096, 32 layers, 32 heads / 8 KV heads, MLP 14336, vocab 128256) and the Minitron
paper's 4B width student of it (hidden 3072, MLP 9216, same layers and heads), in bf16. In
one process, on one device:

1. the device's bf16 matmul peak (8192^3 products, the mean of 10 after 3 warm-ups): the
   yardstick of every MFU below;
2. importance estimation (factory/pruning/importance.py) over ``calib_tokens`` tokens of the
   teacher, and the width prune itself (factory/pruning/width.py) to the student's shape;
3. KD steps, per sequence length, of
   - ``factory``: the fused, chunked KD loss (factory/training/kd.py: no [tokens x vocab]
     logits held) with the student sharded by FSDP2 (``fully_shard`` on a one-rank mesh,
     as ``parallel: fsdp`` shards it) and activation checkpointing, AdamW as the stages use it;
   - ``peer``: a plain PyTorch loop over the same student, teacher and batches: full logits of
     both models, ``F.kl_div`` on their log-softmax, the same activation checkpointing and a
     fused AdamW; a peer that runs out of memory is recorded so and retried at half the rows.

MFU counts model FLOPs only (the teacher's forward, the student's forward and backward,
causal attention; not the recomputation of activation checkpointing), against the peak
measured in step 1. Peak memory is ``torch.cuda.max_memory_allocated`` over the timed
steps (both models and the optimizer state included). The planner's predicted peak for the
same distill step is recorded beside it.

    python3 bench/scale_gpu.py                     # one GPU: bench/results/scale_gpu-<gpu>.json
    python3 bench/scale_gpu.py --shapes tiny       # the whole script with tiny shapes on a CPU (prints only)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory import planner  # noqa: E402 (the repository root on sys.path first)
from factory.pruning import importance, width  # noqa: E402
from factory.pruning.arch import Shape  # noqa: E402
from factory.sources.models import KNOWN_HUB_CONFIGS  # noqa: E402
from factory.training import dist  # noqa: E402
from factory.training.kd import KDSettings, KDStudent, fused_kd_loss, kd_terms  # noqa: E402
from factory.training.optim import adamw  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FACTORY = "factory: fused KD, FSDP2, activation checkpointing"
PEER = "peer: plain loop, full logits, F.kl_div"
LR = 1e-5


@dataclass(frozen=True)
class Scale:
    """The shapes and amounts of one run of the bench."""

    name: str
    teacher: dict  # config.json numbers of the teacher
    student: dict  # width targets: hidden, ffn, heads, groups
    seqs: tuple[int, ...]  # sequence lengths of the KD runs
    step_tokens: int  # tokens per KD step (rows = step_tokens / seq)
    calib_tokens: int  # importance estimation's tokens
    calib_seq: int
    calib_batch: int
    warmup: int  # untimed KD steps per run
    steps: int  # timed KD steps per run
    matmul_n: int  # side of the square matmul probe
    dtype: str
    kd_chunk: int = 256


REAL = Scale(
    name="real",
    teacher=KNOWN_HUB_CONFIGS["meta-llama/Llama-3.1-8B"],
    student={"hidden": 3072, "ffn": 9216, "heads": 32, "groups": 8},
    seqs=(4096, 8192),
    step_tokens=16384,
    calib_tokens=262144,
    calib_seq=4096,
    calib_batch=4,
    warmup=2,
    steps=4,
    matmul_n=8192,
    dtype="bfloat16",
)
TINY = Scale(
    name="tiny",
    teacher={
        "model_type": "llama",
        "hidden_act": "silu",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 384,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "max_position_embeddings": 256,
    },
    student={"hidden": 48, "ffn": 96, "heads": 4, "groups": 2},
    seqs=(32, 64),
    step_tokens=128,
    calib_tokens=1024,
    calib_seq=32,
    calib_batch=8,
    warmup=1,
    steps=2,
    matmul_n=128,
    dtype="float32",
)
SCALES = {"real": REAL, "tiny": TINY}


# ---------------------------------------------------------------- device, models, timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_slug(device: torch.device) -> str:
    """A file-name word for the device: h200, h100, a100, another GPU's name, or cpu."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for part in ("H200", "H100", "A100", "L40S", "L4"):
        if part in name:
            return part.lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, warmup: int = 3, reps: int = 10) -> float:
    """Dense matmul TFLOP/s of this device: the mean of ``reps`` n x n x n products after ``warmup``."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(warmup):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def llama_config(numbers: dict):
    """A transformers ``LlamaConfig`` from config.json numbers (SDPA attention)."""
    from transformers import LlamaConfig  # heavy: only building the models needs it

    cfg = LlamaConfig(**{k: v for k, v in numbers.items() if k != "model_type"})
    cfg._attn_implementation = "sdpa"
    return cfg


def build_model(cfg, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A randomly initialised causal LM of ``cfg``, created directly on ``device`` (no host copy)."""
    from transformers import AutoModelForCausalLM  # heavy: only building the models needs it

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model


def random_tokens(n: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def kd_flops_per_token(teacher: Shape, student: Shape, seq: int) -> float:
    """Model FLOPs of one KD token: the teacher's forward and the student's forward and backward."""
    return planner.forward_flops(teacher, seq) + planner.train_flops(student, seq)


# ---------------------------------------------------------------- importance and prune


def estimate_and_prune(teacher, scale: Scale, device: torch.device, peak: float) -> tuple:
    """Importance over ``scale.calib_tokens`` tokens, then the width prune: (student, report)."""
    src = Shape.from_config(teacher.config.to_dict())
    blocks = random_tokens(scale.calib_tokens // scale.calib_seq, scale.calib_seq, src.vocab_size, seed=1)
    sync(device)
    t0 = time.perf_counter()
    imp = importance.collect(teacher, blocks, batch_size=scale.calib_batch, progress=False)
    sync(device)
    t_imp = time.perf_counter() - t0
    s = scale.student
    plan = width.make_plan(imp, src, list(range(src.num_layers)), s["hidden"], s["ffn"], s["heads"], s["groups"])
    # the plan's indices where the weights are: under the device context every index
    # tensor apply makes is created there, and indexing needs both on one device
    on = lambda ts: [t.to(device) for t in ts]  # noqa: E731
    plan = replace(plan, hidden=plan.hidden.to(device), ffn=on(plan.ffn), heads=on(plan.heads), groups=on(plan.groups))
    t0 = time.perf_counter()
    with torch.device(device):
        student = width.apply(teacher, plan)
    sync(device)
    t_prune = time.perf_counter() - t0
    head = 2 * src.vocab_size * src.hidden_size  # collect runs the decoder only, not the LM head
    flops = (planner.forward_flops(src, scale.calib_seq) - head) * imp.tokens
    report = {
        "importance": {
            "tokens": imp.tokens,
            "seq_len": scale.calib_seq,
            "batch_size": scale.calib_batch,
            "seconds": round(t_imp, 3),
            "tokens_per_s": round(imp.tokens / t_imp, 1),
            "mfu": round(flops / t_imp / (peak * 1e12), 4),
        },
        "prune": {"seconds": round(t_prune, 3)},
    }
    return student, report


# ---------------------------------------------------------------- the two KD loops


@contextlib.contextmanager
def one_rank_group(device: torch.device):
    """A one-process group (in-memory store, no ports) for FSDP2; left as found afterwards."""
    created = not torch.distributed.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        if created:
            torch.distributed.destroy_process_group()


def fsdp2(model: torch.nn.Module, device: torch.device) -> None:
    """Shard every decoder layer and make the decoder stack the root, as ``parallel: fsdp``
    does (embeddings, final norm and LM head stay plain: the fused loss reads the head)."""
    from torch.distributed.device_mesh import init_device_mesh  # optional: only the FSDP run needs it
    from torch.distributed.fsdp import fully_shard  # likewise

    mesh = init_device_mesh(device.type, (1,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    inside = {id(p) for p in model.model.layers.parameters()}
    ignored = {p for p in model.model.parameters() if id(p) not in inside}
    fully_shard(model.model, mesh=mesh, ignored_params=ignored)


def checkpointed(model):
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return model


def factory_step(wrapper: KDStudent, teacher, optimizer, params, batch: torch.Tensor, *, kd: KDSettings) -> float:
    """One optimizer step of the factory's distill objective; its KD loss."""
    loss, _, extras = kd_terms(wrapper, teacher, batch, kd)
    loss.backward()
    dist.clip_grad_norm(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return extras["kd_loss"]


def peer_kl(student, teacher, batch: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(teacher || student) from both models' full logits."""
    import torch.nn.functional as F  # noqa: N812 (torch's own spelling)

    with torch.no_grad():
        t = teacher(input_ids=batch, use_cache=False).logits[:, :-1].float()
    s = student(input_ids=batch, use_cache=False).logits[:, :-1].float()
    v = s.shape[-1]
    return F.kl_div(
        F.log_softmax(s, -1).reshape(-1, v), F.log_softmax(t, -1).reshape(-1, v), log_target=True, reduction="batchmean"
    )


def peer_step(student, teacher, optimizer, params, batch: torch.Tensor) -> float:
    loss = peer_kl(student, teacher, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def timed_steps(step, batches: list[torch.Tensor], warmup: int, device: torch.device) -> tuple[list[float], list]:
    """Run ``step(batch)`` on every batch; (seconds of each step after ``warmup``, every loss)."""
    times, losses = [], []
    for i, batch in enumerate(batches):
        if i == warmup:
            free(device)  # peak memory over the timed steps, after the allocator settled
        sync(device)
        t0 = time.perf_counter()
        losses.append(step(batch.to(device)))
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, losses


def factory_loop(student, teacher, scale: Scale, batches: list, device: torch.device) -> tuple[list, list]:
    """The factory's KD steps: the student FSDP2-sharded on a one-rank group, the stages' AdamW."""
    with one_rank_group(device):
        fsdp2(student, device)
        wrapper = KDStudent(student, [], student.config.hidden_size, teacher.config.hidden_size)
        opt = adamw(wrapper, LR, 0.0, (0.9, 0.95), 1e-8)
        params = [p for p in wrapper.parameters() if p.requires_grad]
        step = functools.partial(factory_step, wrapper, teacher, opt, params, kd=KDSettings(chunk=scale.kd_chunk))
        return timed_steps(step, batches, scale.warmup, device)


def peer_loop(student, teacher, scale: Scale, batches: list, device: torch.device) -> tuple[list, list]:
    """The peer's steps: the plain student, a fused AdamW with the same settings."""
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), weight_decay=0.0, fused=device.type == "cuda")
    step = functools.partial(peer_step, student, teacher, opt, params)
    return timed_steps(step, batches, scale.warmup, device)


def kd_run(contender: str, make_student, teacher, scale: Scale, seq: int, rows: int, device: torch.device) -> dict:
    """``scale.warmup + scale.steps`` KD steps of one contender at ``rows`` x ``seq``."""
    vocab = teacher.config.vocab_size
    batches = [random_tokens(rows, seq, vocab, seed=100 + i) for i in range(scale.warmup + scale.steps)]
    free(device)
    student = checkpointed(make_student())
    loop = factory_loop if contender == FACTORY else peer_loop
    try:
        times, losses = loop(student, teacher, scale, batches, device)
        return {"times": times, "losses": losses, "peak_gib": peak_gib(device)}
    finally:
        del student
        free(device)


def summarise(contender: str, seq: int, rows: int, raw: dict, flops_per_token: float, peak: float) -> dict:
    tokens = rows * seq
    step_s = sorted(raw["times"])[len(raw["times"]) // 2]  # the median step
    achieved = flops_per_token * tokens / step_s
    return {
        "contender": contender,
        "seq_len": seq,
        "rows": rows,
        "tokens_per_step": tokens,
        "step_s": round(step_s, 4),
        "step_times_s": [round(t, 4) for t in raw["times"]],
        "tokens_per_s": round(tokens / step_s, 1),
        "tflops": round(achieved / 1e12, 2),
        "mfu": round(achieved / (peak * 1e12), 4),
        "peak_gib": None if raw["peak_gib"] is None else round(raw["peak_gib"], 3),
        "losses": [round(x, 5) for x in raw["losses"]],
        "oom": False,
    }


def contender_runs(contender: str, make_student, teacher, scale, seq: int, device, peak: float) -> list[dict]:
    """The contender's row at ``seq``; a peer out of memory is recorded, then tried at half the rows."""
    t_shape, s_shape = Shape.from_config(teacher.config.to_dict()), Shape.from_config(make_student.config.to_dict())
    rows, out = max(1, scale.step_tokens // seq), []
    while True:
        try:
            raw = kd_run(contender, make_student, teacher, scale, seq, rows, device)
        except torch.cuda.OutOfMemoryError:
            free(device)
            out.append({"contender": contender, "seq_len": seq, "rows": rows, "oom": True})
            print(f"  {contender} at {rows} x {seq}: out of memory", flush=True)
            if contender == FACTORY or rows == 1:
                return out
            rows //= 2
            continue
        out.append(summarise(contender, seq, rows, raw, kd_flops_per_token(t_shape, s_shape, seq), peak))
        return out


# ---------------------------------------------------------------- the report


def loss_agreement(student, teacher, batch: torch.Tensor, kd: KDSettings) -> dict:
    """The fused KD loss and the peer's ``F.kl_div`` on the same models and batch (no step taken)."""
    with torch.no_grad():
        h_s = student.model(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
        h_t = teacher.model(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
        _, fused, _ = fused_kd_loss(h_s, student.lm_head.weight, h_t, teacher.lm_head.weight, chunk=kd.chunk)
        peer = peer_kl(student, teacher, batch)
    fused, peer = float(fused), float(peer)
    return {"fused_kl": fused, "peer_kl": peer, "abs_diff": abs(fused - peer), "rel_diff": abs(fused - peer) / peer}


def planned_peak_gib(teacher: Shape, student: Shape, scale: Scale, seq: int, rows: int) -> float:
    """The planner's peak for this distill step on one GPU, with activation checkpointing."""
    cfg = {"seq_len": seq, "batch_size": rows, "dtype": scale.dtype, "kd_chunk": scale.kd_chunk}
    work = planner.stage_work("distill", cfg, student, rows * seq, teacher)
    mem = planner.stage_memory("distill", cfg, work, planner.Layout(), cpu=False)
    return round(mem.total(checkpointing=True) / planner.GIB, 3)


class StudentMaker:
    """Fresh copies of the pruned student on the device (from a host copy of its weights)."""

    def __init__(self, student, device: torch.device, dtype: torch.dtype):
        self.config = student.config
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
        self.device, self.dtype = device, dtype

    def __call__(self):
        model = build_model(self.config, self.device, self.dtype, seed=1)
        model.load_state_dict(self.state)
        return model


def model_report(model) -> dict:
    return {**Shape.from_config(model.config.to_dict()).as_dict(), "vocab_size": model.config.vocab_size}


def run(scale: Scale, device: torch.device, seqs: tuple[int, ...] | None = None, out: Path | None = None) -> dict:
    """The whole bench at ``scale`` on ``device``: the report, also written to ``out`` (when
    given) after every run, so a bench cut short by a time limit leaves what it measured."""
    dtype = getattr(torch, scale.dtype)
    t_start = time.perf_counter()
    peak = matmul_peak_tflops(device, torch.bfloat16 if device.type == "cuda" else dtype, scale.matmul_n)
    print(f"matmul peak: {peak:.3g} TFLOP/s", flush=True)
    teacher = build_model(llama_config(scale.teacher), device, dtype).eval()
    teacher.requires_grad_(False)
    student, pruning = estimate_and_prune(teacher, scale, device, peak)
    print(f"importance {pruning['importance']}, prune {pruning['prune']}", flush=True)
    t_shape, s_shape = Shape.from_config(teacher.config.to_dict()), Shape.from_config(student.config.to_dict())
    probe = random_tokens(1, min(scale.seqs), t_shape.vocab_size, seed=7).to(device)
    report = {
        "bench": "scale_gpu",
        "shapes": scale.name,
        "scale": asdict(scale),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": scale.dtype,
        "fp32_matmul_precision": torch.get_float32_matmul_precision(),
        "matmul_peak_tflops": round(peak, 4),
        "teacher": model_report(teacher),
        "student": {**s_shape.as_dict(), "vocab_size": s_shape.vocab_size},
        "student_target": scale.student,
        **pruning,
        "kd_loss_agreement": loss_agreement(student, teacher, probe, KDSettings(chunk=scale.kd_chunk)),
        "kd_chunk": scale.kd_chunk,
        "runs": [],
    }
    maker = StudentMaker(student, device, dtype)
    del student
    for seq in seqs or scale.seqs:
        for contender in (FACTORY, PEER):
            for r in contender_runs(contender, maker, teacher, scale, seq, device, peak):
                if not r["oom"]:
                    r["planned_peak_gib"] = planned_peak_gib(t_shape, s_shape, scale, seq, r["rows"])
                print(format_row(r), flush=True)
                report["runs"].append(r)
            report["wall_s"] = round(time.perf_counter() - t_start, 1)
            write(report, out)
    return report


def write(report: dict, out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


def format_row(r: dict) -> str:
    name = "factory" if r["contender"] == FACTORY else "peer"
    where = f"{name:<8} seq {r['seq_len']:>5} x {r['rows']:>2} rows"
    if r["oom"]:
        return f"{where}: out of memory"
    return (
        f"{where}: {r['tokens_per_s']:>10,.0f} tok/s  MFU {r['mfu']:6.1%}  peak {r['peak_gib']} GiB "
        f"(planned {r['planned_peak_gib']})  step {r['step_s']:.3f} s  loss {r['losses'][-1]:.4f}"
    )


def table(report: dict) -> str:
    """The report as a few lines of text."""
    imp = report["importance"]
    lines = [
        f"{report['device']} ({report['dtype']}, torch {report['torch']}): matmul peak "
        f"{report['matmul_peak_tflops']} TFLOP/s",
        f"teacher {report['teacher']['params'] / 1e9:.2f}B -> student {report['student']['params'] / 1e9:.2f}B; "
        f"importance {imp['tokens']:,} tokens in {imp['seconds']} s ({imp['tokens_per_s']:,.0f} tok/s, "
        f"MFU {imp['mfu']:.1%}); prune {report['prune']['seconds']} s",
        f"fused KD vs F.kl_div on the same logits: {report['kd_loss_agreement']['fused_kl']:.6f} vs "
        f"{report['kd_loss_agreement']['peer_kl']:.6f}",
    ]
    return "\n".join(lines + [format_row(r) for r in report["runs"]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", choices=sorted(SCALES), default="real", help="real (one GPU) or tiny (any CPU)")
    ap.add_argument("--tiny", action="store_true", help="same as --shapes tiny")
    ap.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda for real shapes, cpu for tiny)")
    ap.add_argument("--seqs", help="comma-separated sequence lengths (default: the shapes' own)")
    ap.add_argument("--steps", type=int, help="timed KD steps per run")
    ap.add_argument("--calib-tokens", type=int, help="importance estimation's tokens")
    ap.add_argument("--kd-chunk", type=int, help="tokens per chunk of the fused KD loss")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/scale_gpu-<device>.json)")
    args = ap.parse_args(argv)
    scale = SCALES["tiny" if args.tiny else args.shapes]
    changes = {"steps": args.steps, "calib_tokens": args.calib_tokens, "kd_chunk": args.kd_chunk}
    scale = replace(scale, **{k: v for k, v in changes.items() if v is not None})
    device = torch.device(args.device or ("cuda" if scale.name == "real" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("scale_gpu: no CUDA device visible (run with --shapes tiny on a CPU)", file=sys.stderr)
        return 2
    seqs = tuple(int(s) for s in args.seqs.split(",")) if args.seqs else None
    # tiny shapes are a smoke run: written only where --out says
    out = args.out or (RESULTS / f"scale_gpu-{device_slug(device)}.json" if scale.name == "real" else None)
    report = run(scale, device, seqs, out)
    print(table(report))
    if out is not None:
        print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
