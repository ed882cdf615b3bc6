"""``correct``: teacher correction, a light causal-LM fine-tune of the teacher on
the distillation corpus (Minitron, arXiv 2408.11796, section 2), so that the
teacher's distribution matches the data the student will be distilled on."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import torch

from factory.corpus.blend import Blend, check_data
from factory.corpus.feed import training_data
from factory.stages.base import Headline, StageContext, StageResult, register
from factory.training.checkpoints import load_model, save_checkpoint
from factory.training.data import PackedData
from factory.training.heldout import heldout_loss
from factory.training.loop import TrainConfig, train
from factory.training.losses import causal_lm_loss
from factory.training.metrics import MetricsLog
from factory.training.results import stage_metrics
from foundation.configs import field, require


@dataclass
class CorrectConfig(TrainConfig):
    kind: str = field("correct", help="stage kind")
    model: str = field(None, ref="model", help="model to correct: a models: entry or an earlier stage")
    data: str | Blend = field(
        None,
        ref="dataset",
        help="the distillation corpus: a datasets: entry, a tokenize stage, or {blend: [[weight, corpus], ...]}",
    )

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        require(self.data is not None, where, "data", "missing required key")
        check_data(self.data, where)
        super().check(where)


@register(
    "correct",
    CorrectConfig,
    "teacher correction: causal-LM fine-tune of a model on a text corpus",
    headline=(Headline("eval_loss", "held-out loss", brief="loss", curve="eval_loss"),),
)
def run(ctx: StageContext) -> StageResult:
    """Causal-LM fine-tuning of the model on the packed corpus, with held-out loss before and after."""
    cfg: CorrectConfig = ctx.config
    torch.manual_seed(ctx.seed)
    device = cfg.torch_device()
    model, tok = load_model(ctx.models["model"], cfg.torch_dtype())
    model.to(device)
    packed = training_data(ctx, tok, ctx.models["model"], cfg)
    log = MetricsLog(ctx.work_dir / "metrics.jsonl")

    def batch_fn(step: int, micro: int) -> torch.Tensor:
        return packed.batch(step, micro, cfg.batch_size, cfg.grad_accum, ctx.seed).to(device)

    def loss_fn(m, batch):
        return causal_lm_loss(m, batch, chunk_size=cfg.loss_chunk)

    def eval_fn() -> dict:
        return heldout_loss(model, packed.heldout.to(device), cfg.eval_batch_size)

    result = train(model, cfg, batch_fn, loss_fn, eval_fn, ctx.work_dir, log, ctx.progress, f"{ctx.name} (correct)")
    save_checkpoint(model, tok, ctx.out_dir)
    shutil.copy(log.path, ctx.metrics_path())
    metrics = stage_metrics(
        result, {"eval_loss": "loss", "eval_ppl": "ppl"}, rate=("train_tokens_per_s", cfg.tokens_per_step)
    )
    if isinstance(packed, PackedData):
        summary = {
            "documents_used": packed.documents_used,
            "train_blocks": int(packed.train.shape[0]),
            "heldout_blocks": int(packed.heldout.shape[0]),
            "epochs": result.tokens / max(1, packed.train.numel()),
            "licence": ctx.datasets["data"].licence_of(),
            **packed.cuts(),
        }
    else:
        summary = packed.manifest(result.tokens)
    extra = {"data": summary, "resumed_from_step": result.resumed_from}
    return StageResult(metrics=metrics, tokens=result.tokens, extra=extra)
