"""``sft``: supervised fine-tuning on conversations with the loss on assistant tokens only.

Conversations come from a ``chat``, ``instruction`` or ``sharegpt`` dataset
(``factory.alignment.records``), tools included, and are rendered with the
model's own chat template; labels cover exactly the assistant turns, each with
one end-of-turn token (``factory.alignment.chat``). Batches are built by
length bucketing: a seeded shuffle, then groups of ``bucket_batches`` batches
sorted by length and cut into batches (so padding is small), the batches
shuffled again; epoch after epoch until ``epochs`` or the token budget is spent."""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import dataclass

import torch

from factory.alignment.chat import Rendered, collate, render
from factory.alignment.records import BadRecords, iter_conversations
from factory.stages.base import Headline, StageContext, StageResult, register
from factory.training.checkpoints import load_model, save_checkpoint
from factory.training.data import Cuts
from factory.training.heldout import assistant_loss
from factory.training.loop import TrainConfig, train
from factory.training.losses import IGNORE_INDEX, causal_lm_loss
from factory.training.metrics import MetricsLog
from factory.training.results import stage_metrics
from foundation.chat import for_template
from foundation.configs import field, require
from foundation.errors import FactoryError


@dataclass
class SFTConfig(TrainConfig):
    kind: str = field("sft", help="stage kind")
    model: str = field(None, ref="model", help="model to fine-tune: a models: entry or an earlier stage")
    data: str = field(
        None, ref="dataset", help="conversations: a datasets: entry with format chat, instruction or sharegpt"
    )
    eval_conversations: int = field(16, help="conversations held out for the assistant-token loss")
    epochs: float | None = field(None, help="passes over the training conversations (overrides max_tokens)")
    bucket_batches: int = field(16, help="length bucketing: batches sorted together by length (1: no bucketing)")

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        require(self.data is not None, where, "data", "missing required key")
        require(self.eval_conversations > 0, where, "eval_conversations", "must be positive")
        require(self.epochs is None or self.epochs > 0, where, "epochs", "must be positive")
        require(self.bucket_batches >= 1, where, "bucket_batches", "must be >= 1")
        super().check(where)


def _conversations(ctx: StageContext, tok, cfg: SFTConfig, bad, cuts: Cuts) -> list[Rendered]:
    """The usable conversations rendered, each cut to ``seq_len`` (counted in ``cuts``)."""
    spec = ctx.datasets["data"]
    if spec.format not in ("chat", "instruction", "sharegpt"):
        raise FactoryError(
            f"stages.{ctx.name}.data: sft needs a dataset with format chat, instruction or sharegpt (got {spec.format})"
        )
    out = []
    for c in iter_conversations(spec, ctx.base, bad):
        r = render(tok, *for_template(tok, c.messages, c.tools))
        out.append(Rendered(input_ids=cuts.cut(r.input_ids, cfg.seq_len), labels=r.labels[: cfg.seq_len], text=r.text))
    out = [r for r in out if any(label != IGNORE_INDEX for label in r.labels[1:])]
    if len(out) <= cfg.eval_conversations:
        raise FactoryError(
            f"stages.{ctx.name}.data: {len(out)} usable conversations; need more than "
            f"eval_conversations ({cfg.eval_conversations})"
        )
    return out


def bucketed_batches(lengths: list[int], batch_size: int, bucket_batches: int, seed: int) -> list[list[int]]:
    """One epoch's batches of indices: shuffled, sorted by length within
    groups of ``bucket_batches`` batches, cut, and the batches shuffled. A
    trailing partial batch is dropped (every batch has ``batch_size`` rows, so
    it splits evenly across processes)."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * bucket_batches
    batches = []
    for g in range(0, len(order), group):
        members = sorted(order[g : g + group], key=lambda i: lengths[i])
        batches += [members[i : i + batch_size] for i in range(0, len(members) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


@register(
    "sft",
    SFTConfig,
    "supervised fine-tuning on conversations, loss on assistant tokens only",
    headline=(Headline("heldout_assistant_loss", "assistant loss", curve="eval_assistant_loss"),),
)
def run(ctx: StageContext) -> StageResult:
    """Fine-tune ``model`` on the ``data`` conversations' assistant turns; the held-out ones give the eval loss."""
    cfg: SFTConfig = ctx.config
    torch.manual_seed(ctx.seed)
    device = cfg.torch_device()
    model, tok = load_model(ctx.models["model"], cfg.torch_dtype())
    model.to(device)
    bad, cuts = BadRecords(), Cuts()
    heldout, train_set = _split(ctx, cfg, _conversations(ctx, tok, cfg, bad, cuts))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eval_batches = [
        {k: v.to(device) for k, v in collate(heldout[i : i + cfg.eval_batch_size], pad).items()}
        for i in range(0, len(heldout), cfg.eval_batch_size)
    ]
    lengths = [len(r.input_ids) for r in train_set]
    per_epoch = len(train_set) // cfg.batch_size

    def loss_fn(m, b):
        return causal_lm_loss(m, b["input_ids"], b["labels"], b["attention_mask"], chunk_size=cfg.loss_chunk)

    steps, per_step = _schedule(cfg, lengths, per_epoch)
    log = MetricsLog(ctx.work_dir / "metrics.jsonl")
    result = train(
        model,
        cfg,
        _batch_fn(cfg, train_set, lengths, per_epoch, pad, device, ctx.seed),
        loss_fn,
        lambda: assistant_loss(model, eval_batches),
        ctx.work_dir,
        log,
        ctx.progress,
        f"{ctx.name} (sft)",
        total_steps=steps,
        tokens_per_step=per_step,
    )
    save_checkpoint(model, tok, ctx.out_dir)
    shutil.copy(log.path, ctx.metrics_path())
    metrics = stage_metrics(result, {"heldout_assistant_loss": "assistant_loss"})
    extra = {
        "data": {
            "licence": ctx.datasets["data"].licence_of(),
            "conversations": len(train_set),
            "heldout_conversations": len(heldout),
            "epochs": result.steps * cfg.grad_accum / per_epoch,
            "records": bad.as_dict(),
            **cuts.as_dict(),
        },
        "resumed_from_step": result.resumed_from,
    }
    return StageResult(metrics=metrics, tokens=result.tokens, extra=extra)


def _split(ctx: StageContext, cfg: SFTConfig, convs: list[Rendered]) -> tuple[list[Rendered], list[Rendered]]:
    """The conversations shuffled by the seed and split into held-out and training ones (enough for one batch)."""
    random.Random(ctx.seed).shuffle(convs)
    heldout, train_set = convs[: cfg.eval_conversations], convs[cfg.eval_conversations :]
    if len(train_set) < cfg.batch_size:
        raise FactoryError(
            f"stages.{ctx.name}: {len(train_set)} training conversations, fewer than batch_size ({cfg.batch_size})"
        )
    return heldout, train_set


def _batch_fn(
    cfg: SFTConfig,
    train_set: list[Rendered],
    lengths: list[int],
    per_epoch: int,
    pad: int,
    device: torch.device,
    seed: int,
):
    """The training loop's ``batch_fn(step, micro)``: the bucketed batches of each epoch in turn, on ``device``."""
    epochs_cache: dict[int, list[list[int]]] = {}

    def epoch_batches(epoch: int) -> list[list[int]]:
        if epoch not in epochs_cache:
            epochs_cache.clear()
            epochs_cache[epoch] = bucketed_batches(
                lengths, cfg.batch_size, cfg.bucket_batches, seed * 1_000_003 + epoch
            )
        return epochs_cache[epoch]

    def batch_fn(step: int, micro: int) -> dict:
        epoch, k = divmod(step * cfg.grad_accum + micro, per_epoch)
        picks = [train_set[i] for i in epoch_batches(epoch)[k]]
        return {k: v.to(device) for k, v in collate(picks, pad).items()}

    return batch_fn


def _schedule(cfg: SFTConfig, lengths: list[int], per_epoch: int) -> tuple[int, int]:
    """The optimizer steps to run and the tokens per step, from ``epochs`` or else the token budget."""
    # The budget counts real tokens (mean conversation length), not padded slots.
    mean_len = sum(lengths) / len(lengths)
    per_step = round(mean_len * cfg.batch_size * cfg.grad_accum)
    if cfg.epochs is not None:
        steps = max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    else:
        steps = max(1, math.ceil(cfg.max_tokens / per_step))
    return steps, per_step
