"""``distill``: logit knowledge distillation from a (corrected) teacher into a
(pruned) student, as in Minitron (forward KL on logits, T = 1, LM loss off).

The teacher runs in inference mode; the KD loss is fused with both LM heads
and chunked over tokens, so full [batch, seq, vocab] logits never exist.
Optional intermediate-state losses align mapped hidden states (cosine), with a
learned projection when the widths differ."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Literal

import torch

from factory.corpus.blend import Blend, check_data
from factory.corpus.feed import training_data
from factory.stages.base import Headline, StageContext, StageResult, register
from factory.training.checkpoints import load_model, save_checkpoint
from factory.training.data import PackedData
from factory.training.heldout import heldout_kd
from factory.training.kd import KDSettings, KDStudent, kd_terms
from factory.training.loop import TrainConfig, train
from factory.training.metrics import MetricsLog
from factory.training.results import stage_metrics
from foundation.configs import field, require
from foundation.errors import FactoryError


@dataclass
class DistillConfig(TrainConfig):
    kind: str = field("distill", help="stage kind")
    student: str = field(None, ref="model", help="the student: a models: entry or an earlier stage (e.g. prune)")
    teacher: str = field(None, ref="model", help="the teacher: a models: entry or an earlier stage (e.g. correct)")
    data: str | Blend = field(
        None,
        ref="dataset",
        help="the distillation corpus: a datasets: entry, a tokenize stage, or {blend: [[weight, corpus], ...]}",
    )
    kd_loss: Literal["forward_kl", "reverse_kl"] = field("forward_kl", help="KL direction on the logits")
    temperature: float = field(1.0, help="softmax temperature of both models (the paper: 1)")
    top_k: int | None = field(None, help="distil only the teacher's top-k tokens (renormalised); null: full vocab")
    kd_loss_scale: float = field(1.0, help="weight of the logit KD loss")
    skip_lm_loss: bool = field(True, help="no next-token cross entropy on the data (NeMo's default)")
    lm_loss_scale: float = field(1.0, help="weight of the LM loss when skip_lm_loss is false")
    intermediate_layer_pairs: list[list[int]] | None = field(
        None, help="[[student_layer, teacher_layer], ...]: cosine loss between those layers' outputs"
    )
    intermediate_loss_scale: float = field(1.0, help="weight of the intermediate-state losses")
    kd_chunk: int = field(
        256, help="tokens per chunk of the fused KD loss (256 keeps each [chunk, vocab] buffer in reusable heap memory)"
    )

    def check(self, where: str) -> None:
        for key in ("student", "teacher", "data"):
            require(getattr(self, key) is not None, where, key, "missing required key")
        check_data(self.data, where)
        super().check(where)
        require(self.temperature > 0, where, "temperature", "must be positive")
        require(self.top_k is None or self.top_k > 0, where, "top_k", "must be positive")
        require(self.kd_loss_scale >= 0 and self.lm_loss_scale >= 0, where, "kd_loss_scale", "must be >= 0")
        require(self.kd_chunk > 0, where, "kd_chunk", "must be positive")
        require(self.top_k is None or self.kd_loss == "forward_kl", where, "top_k", "needs kd_loss: forward_kl")
        for i, pair in enumerate(self.intermediate_layer_pairs or []):
            require(
                len(pair) == 2 and min(pair) >= 0,
                where,
                f"intermediate_layer_pairs[{i}]",
                "expected [student_layer, teacher_layer] with non-negative indices",
            )

    def kd_settings(self) -> KDSettings:
        return KDSettings(
            kind=self.kd_loss,
            temperature=self.temperature,
            top_k=self.top_k,
            kd_scale=self.kd_loss_scale,
            lm_weight=0.0 if self.skip_lm_loss else self.lm_loss_scale,
            intermediate_scale=self.intermediate_loss_scale,
            chunk=self.kd_chunk,
        )


def distill_shape(cfg: DistillConfig, model_config: dict, where: str) -> dict:
    n = model_config.get("num_hidden_layers")
    for i, (s, _) in enumerate(cfg.intermediate_layer_pairs or []):
        require(
            n is None or s < n,
            where,
            f"intermediate_layer_pairs[{i}]",
            f"student layer {s} is out of range (the student has {n} layers)",
        )
    return model_config


def check_compatible(student_dir, teacher_dir, s_tok, t_tok, s_cfg, t_cfg, where: str) -> None:
    """Teacher and student must share the tokenizer and vocabulary, or the KL compares different tokens."""
    if s_cfg.vocab_size != t_cfg.vocab_size:
        raise FactoryError(
            f"{where}: the student's vocabulary ({s_cfg.vocab_size}, {student_dir}) differs from "
            f"the teacher's ({t_cfg.vocab_size}, {teacher_dir}); distillation needs the same tokenizer"
        )
    if s_tok.get_vocab() != t_tok.get_vocab():
        raise FactoryError(
            f"{where}: the student's tokenizer ({student_dir}) maps tokens to ids differently "
            f"from the teacher's ({teacher_dir}); distillation needs the same tokenizer"
        )


@register(
    "distill",
    DistillConfig,
    "logit knowledge distillation from a teacher into a student",
    shape=distill_shape,
    headline=(Headline("heldout_kl", "held-out KL", brief="kl", curve="eval_kl"),),
)
def run(ctx: StageContext) -> StageResult:
    cfg: DistillConfig = ctx.config
    torch.manual_seed(ctx.seed)
    device = cfg.torch_device()
    where = f"stages.{ctx.name}"
    student, s_tok = load_model(ctx.models["student"], cfg.torch_dtype())
    teacher, t_tok = load_model(ctx.models["teacher"], cfg.torch_dtype())
    check_compatible(ctx.models["student"], ctx.models["teacher"], s_tok, t_tok, student.config, teacher.config, where)
    n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    for i, (s, t) in enumerate(cfg.intermediate_layer_pairs or []):
        if s >= n_s or t >= n_t:
            raise FactoryError(
                f"{where}.intermediate_layer_pairs[{i}]: [{s}, {t}] is out of range "
                f"(student {n_s} layers, teacher {n_t})"
            )
    teacher.to(device).eval().requires_grad_(False)
    wrapper = KDStudent(
        student, cfg.intermediate_layer_pairs, student.config.hidden_size, teacher.config.hidden_size
    ).to(device)
    packed = training_data(ctx, t_tok, ctx.models["student"], cfg)
    heldout = packed.heldout.to(device)
    kd = cfg.kd_settings()
    log = MetricsLog(ctx.work_dir / "metrics.jsonl")
    result = train(
        wrapper,
        cfg,
        batch_fn=lambda step, micro: packed.batch(step, micro, cfg.batch_size, cfg.grad_accum, ctx.seed).to(device),
        loss_fn=lambda w, batch: kd_terms(w, teacher, batch, kd),
        eval_fn=lambda: heldout_kd(student, teacher, heldout, cfg.eval_batch_size, cfg.kd_chunk),
        work_dir=ctx.work_dir,
        log=log,
        progress=ctx.progress,
        desc=f"{ctx.name} (distill)",
    )
    save_checkpoint(student, s_tok, ctx.out_dir)
    shutil.copy(log.path, ctx.metrics_path())
    metrics = stage_metrics(
        result, {"heldout_kl": "kl", "heldout_lm_loss": "lm_loss"}, rate=("train_tokens_per_s", cfg.tokens_per_step)
    )
    if isinstance(packed, PackedData):
        summary = {
            "licence": ctx.datasets["data"].licence_of(),
            "train_blocks": int(packed.train.shape[0]),
            **packed.cuts(),
        }
    else:
        summary = packed.manifest(result.tokens)
    extra = {"data": summary, "resumed_from_step": result.resumed_from}
    return StageResult(metrics=metrics, tokens=result.tokens, extra=extra)
