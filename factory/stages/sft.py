"""``sft``: supervised fine-tuning on conversations with the loss on assistant tokens only.

Conversations come from a ``format: chat`` dataset and are rendered with the
model's own chat template; labels cover exactly the assistant turns, each with
one end-of-turn token (``factory.alignment.chat``). Batches are padded to their
longest member and drawn in a seeded order, epoch after epoch, until the token
budget is spent."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass

import torch

from factory.alignment.chat import Rendered, collate, render
from factory.configs import field, require
from factory.errors import FactoryError
from factory.sources.datasets import iter_documents
from factory.stages.base import StageContext, StageResult, register
from factory.training.loop import TrainConfig, train
from factory.training.losses import IGNORE_INDEX, causal_lm_loss
from factory.training.metrics import MetricsLog
from factory.training.runner import load_model, save_checkpoint


@dataclass
class SFTConfig(TrainConfig):
    kind: str = field("sft", help="stage kind")
    model: str = field(None, ref="model", help="model to fine-tune: a models: entry or an earlier stage")
    data: str = field(None, ref="dataset", help="conversations: a datasets: entry with format: chat")
    eval_conversations: int = field(16, help="conversations held out for the assistant-token loss")

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        require(self.data is not None, where, "data", "missing required key")
        require(self.eval_conversations > 0, where, "eval_conversations", "must be positive")
        super().check(where)


def _conversations(ctx: StageContext, tok, cfg: SFTConfig) -> list[Rendered]:
    spec = ctx.datasets["data"]
    if spec.format != "chat":
        raise FactoryError(f"stages.{ctx.name}.data: sft needs a dataset with format: chat")
    out = [render(tok, msgs, max_length=cfg.seq_len) for msgs in iter_documents(spec, ctx.base)]
    out = [r for r in out if any(label != IGNORE_INDEX for label in r.labels[1:])]
    if len(out) <= cfg.eval_conversations:
        raise FactoryError(f"stages.{ctx.name}.data: {len(out)} usable conversations; need more than "
                           f"eval_conversations ({cfg.eval_conversations})")
    return out


@torch.no_grad()
def assistant_loss(model, batches: list[dict]) -> dict:
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        loss, n = causal_lm_loss(model, b["input_ids"], b["labels"], b["attention_mask"])
        total += float(loss) * n
        count += n
    model.train(was)
    return {"assistant_loss": total / max(count, 1), "assistant_tokens": count}


@register("sft", SFTConfig, "supervised fine-tuning on conversations, loss on assistant tokens only")
def run(ctx: StageContext) -> StageResult:
    cfg: SFTConfig = ctx.config
    torch.manual_seed(ctx.seed)
    device = cfg.torch_device()
    model, tok = load_model(ctx.models["model"], cfg.torch_dtype())
    model.to(device)
    convs = _conversations(ctx, tok, cfg)
    random.Random(ctx.seed).shuffle(convs)
    heldout, train_set = convs[: cfg.eval_conversations], convs[cfg.eval_conversations:]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eval_batches = [{k: v.to(device) for k, v in collate(heldout[i:i + cfg.eval_batch_size], pad).items()}
                    for i in range(0, len(heldout), cfg.eval_batch_size)]

    def batch_fn(step: int, micro: int) -> dict:
        n = len(train_set)
        first = (step * cfg.grad_accum + micro) * cfg.batch_size
        picks = []
        for pos in range(first, first + cfg.batch_size):
            epoch, offset = divmod(pos, n)
            order = list(range(n))
            random.Random(ctx.seed * 1_000_003 + epoch).shuffle(order)
            picks.append(train_set[order[offset]])
        return {k: v.to(device) for k, v in collate(picks, pad).items()}

    def loss_fn(m, b):
        return causal_lm_loss(m, b["input_ids"], b["labels"], b["attention_mask"], chunk_size=cfg.loss_chunk)

    log = MetricsLog(ctx.work_dir / "metrics.jsonl")
    result = train(model, cfg, batch_fn, loss_fn, lambda: assistant_loss(model, eval_batches), ctx.work_dir, log,
                   ctx.progress, f"{ctx.name} (sft)")
    save_checkpoint(model.to("cpu"), tok, ctx.out_dir)
    shutil.copy(log.path, ctx.metrics_path())
    evals = [json.loads(x) for x in log.path.read_text().splitlines() if "eval_assistant_loss" in x]
    metrics = {"heldout_assistant_loss_before": evals[0]["eval_assistant_loss"],
               "heldout_assistant_loss_after": evals[-1]["eval_assistant_loss"],
               "final_train_loss": result.final_train_loss, "steps": result.steps,
               "peak_memory_gib": result.peak_memory_gib}
    extra = {"data": {"licence": ctx.datasets["data"].licence_of(), "conversations": len(train_set),
                      "heldout_conversations": len(heldout)}, "resumed_from_step": result.resumed_from}
    return StageResult(metrics=metrics, tokens=result.tokens, extra=extra)
