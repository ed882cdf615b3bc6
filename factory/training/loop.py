"""The training loop shared by every training stage: schedule, accumulation,
clipping, periodic held-out eval, metrics JSONL, progress, checkpoint and resume."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from factory.training import dist
from factory.training.metrics import MetricsLog
from factory.training.optim import adamw, lr_at
from foundation import storage
from foundation.configs import field, require
from foundation.device import DTYPES, check_device, peak_memory_gib, resolve_device
from foundation.errors import FactoryError

MAX_STEPS = 10**9  # more optimizer steps than any run can take: a budget beyond it is a typo
LR_FLOOR = float(torch.finfo(torch.float32).tiny)  # a learning rate below this underflows in float32


def check_budget(tokens: int, per_step: int, where: str, key: str) -> None:
    """A token budget must make at most ``MAX_STEPS`` optimizer steps of ``per_step`` tokens."""
    steps = math.ceil(tokens / per_step)
    require(
        steps <= MAX_STEPS,
        where,
        key,
        f"{tokens} tokens at {per_step} tokens per step make {steps:.3g} optimizer steps, "
        f"more than the {MAX_STEPS:.0e} a run can take",
    )


def check_schedule(lr: float, total: int, warmup_ratio: float, min_lr_ratio: float, where: str) -> None:
    """Every learning rate of the warmup-cosine schedule (``lr_at``) over ``total`` steps is
    either 0 or a normal float32 number: one that underflows trains with a rate of nothing."""
    warmup = int(warmup_ratio * total)
    smallest = lr / warmup if warmup > 0 else lr
    if min_lr_ratio > 0:
        smallest = min(smallest, lr * min_lr_ratio)
    require(
        smallest >= LR_FLOOR,
        where,
        "lr",
        f"the schedule's smallest learning rate, {smallest:.3g} (lr {lr:g} over {total} steps), "
        f"underflows float32 (below {LR_FLOOR:.3g})",
    )


@dataclass
class TrainConfig:
    """Knobs every training stage shares (names follow NeMo / HF where they exist)."""

    seq_len: int = field(512, help="tokens per packed sequence")
    batch_size: int = field(4, help="sequences per micro-batch")
    grad_accum: int = field(1, help="micro-batches per optimizer step")
    max_tokens: int = field(100_000, help="training token budget (k/M/B suffixes allowed)")
    lr: float = field(2e-5, help="peak learning rate")
    min_lr_ratio: float = field(0.1, help="cosine decays to lr * min_lr_ratio")
    warmup_ratio: float = field(0.05, help="fraction of steps with linear warmup")
    weight_decay: float = field(0.01, help="AdamW decoupled weight decay (not on norms/biases)")
    adam_beta1: float = field(0.9, help="AdamW beta1")
    adam_beta2: float = field(0.95, help="AdamW beta2")
    adam_eps: float = field(1e-8, help="AdamW epsilon")
    grad_clip: float = field(1.0, help="max global gradient norm (0 disables clipping)")
    eval_tokens: int = field(16_384, help="held-out tokens for the eval loss")
    eval_every: int = field(0, help="steps between held-out evals (0: before and after only)")
    eval_at_tokens: list[int] | None = field(
        None,
        help="token counts at which to run the held-out eval as well (at the first step reaching each): "
        "learning curves at log-spaced points",
        hashed_when_set=True,
    )
    eval_batch_size: int = field(8, help="sequences per eval batch", hashed=False)
    checkpoint_every: int = field(50, help="steps between mid-stage checkpoints (0: never)", hashed=False)
    log_every: int = field(1, help="steps between metrics rows", hashed=False)
    dtype: Literal["float32", "bfloat16"] = field("float32", help="training dtype of the weights")
    loss_chunk: int = field(1024, help="tokens per chunk of the fused LM-head loss")
    device: str = field("auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N", hashed=False)
    parallel: Literal["ddp", "fsdp"] = field(
        "ddp",
        help="under torchrun: ddp replicates the model on every rank; fsdp shards the decoder layers' "
        "weights, gradients and optimizer state across ranks (torch FSDP2), for models whose "
        "training state does not fit one device",
        hashed=False,
    )
    matmul_precision: Literal["highest", "medium"] = field(
        "highest",
        help="fp32 matmul precision: highest = IEEE fp32; medium = bf16 inner products with fp32 "
        "accumulation (AMX on CPUs, like TF32 on GPUs), about 1.6x faster on CPUs with AMX",
    )

    def check(self, where: str) -> None:
        for key in ("seq_len", "batch_size", "grad_accum", "max_tokens", "eval_tokens", "loss_chunk"):
            require(getattr(self, key) > 0, where, key, "must be positive")
        require(self.seq_len >= 2, where, "seq_len", "must be at least 2")
        require(self.lr > 0, where, "lr", "must be positive")
        require(0 <= self.min_lr_ratio <= 1, where, "min_lr_ratio", "must be in [0, 1]")
        require(0 <= self.warmup_ratio < 1, where, "warmup_ratio", "must be in [0, 1)")
        require(self.weight_decay >= 0, where, "weight_decay", "must be >= 0")
        require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, where, "adam_beta1", "betas must be in [0, 1)")
        for key in ("grad_clip", "eval_every", "checkpoint_every"):
            require(getattr(self, key) >= 0, where, key, "must be >= 0")
        for i, tokens in enumerate(self.eval_at_tokens or []):
            require(tokens > 0, where, f"eval_at_tokens[{i}]", f"must be positive, got {tokens}")
        require(self.log_every >= 1, where, "log_every", "must be >= 1")
        require(self.adam_eps >= 0, where, "adam_eps", "must be >= 0")
        check_budget(self.max_tokens, self.tokens_per_step, where, "max_tokens")
        check_schedule(self.lr, self.total_steps, self.warmup_ratio, self.min_lr_ratio, where)
        check_device(self.device, where)

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size * self.grad_accum

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.max_tokens / self.tokens_per_step))

    def eval_steps(self, per_step: int) -> set[int]:
        """The optimizer steps after which ``eval_at_tokens`` asks for a held-out eval: the first
        step at which the run has trained on at least that many tokens, ``per_step`` a step."""
        return {math.ceil(t / per_step) for t in self.eval_at_tokens or []}

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class LoopResult:
    """What a finished ``train`` hands back to its stage."""

    steps: int
    tokens: int
    resumed_from: int
    train_s: float  # time in optimizer steps
    wall_s: float  # including evals and checkpoints
    final_train_loss: float
    peak_memory_gib: float  # CUDA: peak allocated; CPU: the process's peak resident set
    first_eval: dict = dc_field(default_factory=dict)  # held-out metrics at step 0 (as eval_fn returns them)
    last_eval: dict = dc_field(default_factory=dict)  # held-out metrics after the last step

    def rate(self, per_step: float) -> float:
        """Throughput of this run's own optimizer steps (not those before a resume) in units of
        ``per_step`` (tokens, pairs) per second."""
        return (self.steps - self.resumed_from) * per_step / max(self.train_s, 1e-9)


# (model, batch) -> (loss, tokens) or (loss, tokens, {name: float} of parts to log)
LossFn = Callable[[torch.nn.Module, torch.Tensor], tuple]
BatchFn = Callable[[int, int], torch.Tensor]  # (step, micro) -> batch
EvalFn = Callable[[], dict]


def _save_checkpoint(path: Path, model, optimizer, step: int, layout: str) -> None:
    """Every rank calls this (under FSDP the state is gathered collectively); rank 0 writes."""
    model_state, optim_state = dist.full_state(model, optimizer)
    if dist.is_main():
        rng = {"rng": torch.get_rng_state()}
        if torch.cuda.is_initialized():  # dropout and sampling on a GPU draw from its own generator
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        # beside the checkpoint, then renamed (a crash mid-save leaves the previous one intact),
        # its sha256 recorded first: a checkpoint that appears is one a kill cannot orphan
        with storage.atomic_file(path, "training checkpoint", checked=True, record_first=True) as f:
            torch.save({"model": model_state, "optimizer": optim_state, "step": step, "layout": layout, **rng}, f)
    dist.barrier()


def _layout(model, cfg: TrainConfig) -> str:
    """How the model's training state lies across processes: "fsdp" when ``cfg.parallel``
    asks for it under torchrun (the decoder layers are sharded here), else "replicated"."""
    _, size = dist.world()
    if cfg.batch_size % size:
        raise FactoryError(
            f"batch_size {cfg.batch_size} does not split over {size} processes: make it a multiple of the process count"
        )
    if cfg.parallel == "fsdp" and size > 1 and dist.shard_layers(model):
        return "fsdp"
    return "replicated"


def _resume(ckpt: Path, model, optimizer, layout: str, log: MetricsLog, desc: str, total: int) -> int | None:
    """The step a mid-stage checkpoint left off at, with model, optimizer and RNG state
    restored and the metrics log cut back to it; None when there is no checkpoint."""
    state = storage.load_checked(
        ckpt,
        "training checkpoint",
        lambda p: torch.load(p, map_location="cpu", weights_only=False),
        f"{desc} starts over from step 0",
        owner=dist.is_main(),
    )
    dist.barrier()  # every rank has read (or rank 0 discarded) the checkpoint before anyone writes one
    if state is None:
        return None
    if state.get("layout", "replicated") != layout:
        raise FactoryError(
            f"{ckpt} was written with the model {state.get('layout', 'replicated')}, this run "
            f"has it {layout}: resume with the same parallel setting, or --force the stage"
        )
    dist.load_full_state(model, optimizer, state["model"], state["optimizer"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    start = state["step"]
    log.truncate_after(start)
    print(f"[factory] {desc}: resumed from step {start}/{total} ({ckpt})", file=sys.stderr)
    return start


def _optimizer_step(
    model, optimizer, params: list, cfg: TrainConfig, batch_fn: BatchFn, loss_fn: LossFn, step: int, lr: float
) -> tuple[float, dict[str, float], float]:
    """One optimizer step over ``cfg.grad_accum`` micro-batches: (loss, logged parts, gradient norm),
    averaged over micro-batches and processes."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    step_loss = 0.0
    parts: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        out = loss_fn(model, dist.shard_rows(batch_fn(step, micro)))
        loss = out[0]
        (loss / cfg.grad_accum).backward()
        step_loss += loss.item() / cfg.grad_accum
        for k, v in (out[2] if len(out) > 2 else {}).items():
            parts[k] = parts.get(k, 0.0) + v / cfg.grad_accum
    dist.average_gradients(params)
    step_loss = dist.mean_across(step_loss)
    parts = {k: dist.mean_across(v) for k, v in parts.items()}
    grad_norm = dist.clip_grad_norm(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, parts, float(grad_norm)


def _steps(cfg: TrainConfig, total_steps: int | None, desc: str) -> int:
    """The run's optimizer steps: ``total_steps`` (epoch budgets, known only once the data is
    counted, so checked here) or the token budget's, at most ``MAX_STEPS``."""
    total = total_steps if total_steps is not None else cfg.total_steps
    if total > MAX_STEPS:
        raise FactoryError(
            f"{desc}: {total} optimizer steps, more than the {MAX_STEPS:.0e} a run can take: lower epochs or max_tokens"
        )
    return total


def train(
    model,
    cfg: TrainConfig,
    batch_fn: BatchFn,
    loss_fn: LossFn,
    eval_fn: EvalFn,
    work_dir: Path,
    log: MetricsLog,
    progress: bool = True,
    desc: str = "train",
    total_steps: int | None = None,
    tokens_per_step: int | None = None,
    initial_eval: EvalFn | None = None,
) -> LoopResult:
    """Run ``cfg.total_steps`` optimizer steps, resuming from ``work_dir`` if a checkpoint is there.

    ``eval_fn`` returns a dict of held-out metrics; it runs before training
    (step 0), every ``eval_every`` steps, at the steps ``eval_at_tokens`` names
    and at the end. Stages whose budget is
    not a token count (DPO: epochs over pairs) pass ``total_steps`` and the
    (average) ``tokens_per_step`` themselves. ``initial_eval``, when given,
    stands in for ``eval_fn`` at step 0 of a fresh run: for stages that know
    those metrics without a pass (DPO: the policy starts as its reference)."""
    total = _steps(cfg, total_steps, desc)
    per_step = tokens_per_step if tokens_per_step is not None else cfg.tokens_per_step
    ckpt = work_dir / "checkpoint.pt"
    rank, _ = dist.world()
    layout = _layout(model, cfg)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps)
    start, first_eval = _begin(ckpt, model, optimizer, layout, log, desc, total, eval_fn, initial_eval)

    model.train()
    bar = _progress(total, start, desc, progress and rank == 0)
    t0 = time.perf_counter()
    step_time, last_loss = _train_steps(
        model, optimizer, cfg, batch_fn, loss_fn, eval_fn, log, bar, ckpt, layout, start, total, per_step
    )
    bar.close()
    wall_s = time.perf_counter() - t0
    last_eval = eval_fn()
    log.write_evals(total, total * per_step, last_eval)
    dist.barrier()  # every rank may read the finished metrics log from here on
    return LoopResult(
        steps=total,
        tokens=total * per_step,
        resumed_from=start,
        train_s=step_time,
        wall_s=wall_s,
        final_train_loss=last_loss,
        peak_memory_gib=peak_memory_gib(next(model.parameters()).device),
        first_eval=first_eval if first_eval is not None else log.evals_at(0),
        last_eval=last_eval,
    )


def _begin(
    ckpt: Path,
    model,
    optimizer,
    layout: str,
    log: MetricsLog,
    desc: str,
    total: int,
    eval_fn: EvalFn,
    initial_eval: EvalFn | None,
) -> tuple[int, dict | None]:
    """Where the run starts: (step, step-0 metrics). A resumed run starts at its checkpoint's
    step (its step-0 metrics are in the log: None); a fresh one clears the log and evaluates step 0."""
    resumed = _resume(ckpt, model, optimizer, layout, log, desc, total)
    first_eval = None
    if resumed is None:
        log.truncate_after(-1)
        first_eval = (initial_eval or eval_fn)()
        log.write_evals(0, 0, first_eval)
    return resumed or 0, first_eval


def _train_steps(
    model,
    optimizer,
    cfg: TrainConfig,
    batch_fn: BatchFn,
    loss_fn: LossFn,
    eval_fn: EvalFn,
    log: MetricsLog,
    bar,
    ckpt: Path,
    layout: str,
    start: int,
    total: int,
    per_step: int,
) -> tuple[float, float]:
    """Optimizer steps ``start`` to ``total``, with their metrics rows, periodic evals and
    checkpoints: (seconds spent in optimizer steps, the last step's loss)."""
    warmup = int(cfg.warmup_ratio * total)
    eval_steps = cfg.eval_steps(per_step)
    params = [p for p in model.parameters() if p.requires_grad]
    step_time = 0.0  # optimizer steps only: evals and checkpoints are not training throughput
    last_loss = float("nan")
    for step in range(start, total):
        ts = time.perf_counter()
        lr = lr_at(step, total, cfg.lr, warmup, cfg.min_lr_ratio)
        last_loss, parts, grad_norm = _optimizer_step(model, optimizer, params, cfg, batch_fn, loss_fn, step, lr)
        done = step + 1
        step_time += time.perf_counter() - ts
        tps = (done - start) * per_step / max(step_time, 1e-9)
        if done % cfg.log_every == 0 or done == total:
            log.write(_step_row(done, per_step, last_loss, parts, lr, grad_norm, tps))
        if ((cfg.eval_every and done % cfg.eval_every == 0) or done in eval_steps) and done < total:
            log.write_evals(done, done * per_step, eval_fn())
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
            _save_checkpoint(ckpt, model, optimizer, done, layout)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
    return step_time, last_loss


def _step_row(
    done: int, per_step: int, loss: float, parts: dict[str, float], lr: float, grad_norm: float, tps: float
) -> dict:
    """The metrics row of optimizer step ``done``."""
    return {
        "step": done,
        "tokens": done * per_step,
        "loss": loss,
        **parts,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": tps,
    }


def _progress(total: int, start: int, desc: str, enabled: bool):
    return tqdm(
        total=total, initial=start, desc=desc, unit="step", disable=not enabled, file=sys.stderr, dynamic_ncols=True
    )
