"""``distill``: logit knowledge distillation from a (corrected) teacher into a
(pruned) student, as in Minitron (forward KL on logits, T = 1, LM loss off).

The teacher runs in inference mode; the KD loss is fused with both LM heads
and chunked over tokens, so full [batch, seq, vocab] logits never exist.
Optional intermediate-state losses align mapped hidden states (cosine), with a
learned projection when the widths differ."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Literal

import torch

from foundation.configs import field, require
from foundation.errors import FactoryError
from factory.sources.documents import iter_documents
from factory.stages.base import StageContext, StageResult, register
from factory.training.data import blocks_for, pack
from factory.training.kd import fused_kd_loss
from factory.training.loop import TrainConfig, train
from factory.training.metrics import MetricsLog
from factory.training.runner import load_model, save_checkpoint


@dataclass
class DistillConfig(TrainConfig):
    kind: str = field("distill", help="stage kind")
    student: str = field(None, ref="model", help="the student: a models: entry or an earlier stage (e.g. prune)")
    teacher: str = field(None, ref="model", help="the teacher: a models: entry or an earlier stage (e.g. correct)")
    data: str = field(None, ref="dataset", help="the distillation corpus: a datasets: entry")
    kd_loss: Literal["forward_kl", "reverse_kl"] = field("forward_kl", help="KL direction on the logits")
    temperature: float = field(1.0, help="softmax temperature of both models (the paper: 1)")
    top_k: int | None = field(None, help="distil only the teacher's top-k tokens (renormalised); null: full vocab")
    kd_loss_scale: float = field(1.0, help="weight of the logit KD loss")
    skip_lm_loss: bool = field(True, help="no next-token cross entropy on the data (NeMo's default)")
    lm_loss_scale: float = field(1.0, help="weight of the LM loss when skip_lm_loss is false")
    intermediate_layer_pairs: list[list[int]] | None = field(
        None, help="[[student_layer, teacher_layer], ...]: cosine loss between those layers' outputs")
    intermediate_loss_scale: float = field(1.0, help="weight of the intermediate-state losses")
    kd_chunk: int = field(256, help="tokens per chunk of the fused KD loss (256 keeps each [chunk, vocab] buffer in reusable heap memory)")

    def check(self, where: str) -> None:
        for key in ("student", "teacher", "data"):
            require(getattr(self, key) is not None, where, key, "missing required key")
        super().check(where)
        require(self.temperature > 0, where, "temperature", "must be positive")
        require(self.top_k is None or self.top_k > 0, where, "top_k", "must be positive")
        require(self.kd_loss_scale >= 0 and self.lm_loss_scale >= 0, where, "kd_loss_scale", "must be >= 0")
        require(self.kd_chunk > 0, where, "kd_chunk", "must be positive")
        require(self.top_k is None or self.kd_loss == "forward_kl", where, "top_k", "needs kd_loss: forward_kl")
        for i, pair in enumerate(self.intermediate_layer_pairs or []):
            require(len(pair) == 2 and min(pair) >= 0, where, f"intermediate_layer_pairs[{i}]",
                    "expected [student_layer, teacher_layer] with non-negative indices")


def distill_shape(cfg: DistillConfig, model_config: dict, where: str) -> dict:
    n = model_config.get("num_hidden_layers")
    for i, (s, _) in enumerate(cfg.intermediate_layer_pairs or []):
        require(n is None or s < n, where, f"intermediate_layer_pairs[{i}]",
                f"student layer {s} is out of range (the student has {n} layers)")
    return model_config


def check_compatible(student_dir, teacher_dir, s_tok, t_tok, s_cfg, t_cfg, where: str) -> None:
    """Teacher and student must share the tokenizer and vocabulary, or the KL compares different tokens."""
    if s_cfg.vocab_size != t_cfg.vocab_size:
        raise FactoryError(f"{where}: the student's vocabulary ({s_cfg.vocab_size}, {student_dir}) differs from "
                           f"the teacher's ({t_cfg.vocab_size}, {teacher_dir}); distillation needs the same tokenizer")
    if s_tok.get_vocab() != t_tok.get_vocab():
        raise FactoryError(f"{where}: the student's tokenizer ({student_dir}) maps tokens to ids differently "
                           f"from the teacher's ({teacher_dir}); distillation needs the same tokenizer")


class _Student(torch.nn.Module):
    """The student plus the projections of intermediate-state losses (trained with it, not released)."""

    def __init__(self, student, pairs, s_width: int, t_width: int):
        super().__init__()
        self.student = student
        self.pairs = [tuple(p) for p in (pairs or [])]
        self.proj = torch.nn.ModuleList(
            torch.nn.Linear(s_width, t_width, bias=False) if s_width != t_width else torch.nn.Identity()
            for _ in self.pairs)


def _kd_terms(wrapper: _Student, teacher, batch: torch.Tensor, cfg: DistillConfig):
    pairs = wrapper.pairs
    with torch.inference_mode():
        t_out = teacher.model(input_ids=batch, use_cache=False, output_hidden_states=bool(pairs))
        t_hidden = t_out.last_hidden_state[:, :-1].clone()
        t_states = [t_out.hidden_states[t + 1].clone() for _, t in pairs] if pairs else []
    t_hidden = t_hidden.clone()  # leave inference mode: a normal tensor from here on
    s_out = wrapper.student.model(input_ids=batch, use_cache=False, output_hidden_states=bool(pairs))
    h_s = s_out.last_hidden_state[:, :-1]
    lm_weight = 0.0 if cfg.skip_lm_loss else cfg.lm_loss_scale
    total, kd, lm = fused_kd_loss(h_s, wrapper.student.lm_head.weight, t_hidden, teacher.lm_head.weight,
                                  labels=batch[:, 1:], temperature=cfg.temperature, kind=cfg.kd_loss,
                                  top_k=cfg.top_k, kd_scale=cfg.kd_loss_scale, lm_weight=lm_weight,
                                  chunk=cfg.kd_chunk)
    extras = {"kd_loss": kd.item()}
    if lm_weight:
        extras["lm_loss"] = lm.item()
    if pairs:
        inter = sum(1 - torch.nn.functional.cosine_similarity(proj(s_out.hidden_states[s + 1]), t.clone(), dim=-1).mean()
                    for (s, _), proj, t in zip(pairs, wrapper.proj, t_states)) / len(pairs)
        total = total + cfg.intermediate_loss_scale * inter
        extras["intermediate_loss"] = inter.item()
    return total, int(h_s.shape[0] * h_s.shape[1]), extras


@torch.no_grad()
def heldout_kd(student, teacher, blocks: torch.Tensor, cfg: DistillConfig, batch_size: int) -> dict:
    """Held-out forward KL(teacher || student) at T = 1 and the student's LM loss, token-weighted."""
    was = student.training
    student.eval()
    kl_sum, lm_sum, n = 0.0, 0.0, 0
    for i in range(0, blocks.shape[0], batch_size):
        b = blocks[i:i + batch_size]
        h_t = teacher.model(input_ids=b, use_cache=False).last_hidden_state[:, :-1]
        h_s = student.model(input_ids=b, use_cache=False).last_hidden_state[:, :-1]
        _, kd, lm = fused_kd_loss(h_s, student.lm_head.weight, h_t, teacher.lm_head.weight, labels=b[:, 1:],
                                  lm_weight=1.0, chunk=cfg.kd_chunk)
        k = h_s.shape[0] * h_s.shape[1]
        kl_sum += kd.item() * k
        lm_sum += lm.item() * k
        n += k
    student.train(was)
    return {"kl": kl_sum / n, "lm_loss": lm_sum / n, "tokens": n}


@register("distill", DistillConfig, "logit knowledge distillation from a teacher into a student",
          shape=distill_shape)
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
            raise FactoryError(f"{where}.intermediate_layer_pairs[{i}]: [{s}, {t}] is out of range "
                               f"(student {n_s} layers, teacher {n_t})")
    teacher.to(device).eval().requires_grad_(False)
    wrapper = _Student(student, cfg.intermediate_layer_pairs, student.config.hidden_size,
                       teacher.config.hidden_size).to(device)
    packed = pack(iter_documents(ctx.datasets["data"], ctx.base), t_tok, cfg.seq_len,
                  train_blocks=blocks_for(cfg.max_tokens, cfg.seq_len),
                  heldout_blocks=blocks_for(cfg.eval_tokens, cfg.seq_len), seed=ctx.seed, source=f"{where}.data")
    heldout = packed.heldout.to(device)
    log = MetricsLog(ctx.work_dir / "metrics.jsonl")
    result = train(
        wrapper, cfg,
        batch_fn=lambda step, micro: packed.batch(step, micro, cfg.batch_size, cfg.grad_accum, ctx.seed).to(device),
        loss_fn=lambda w, batch: _kd_terms(w, teacher, batch, cfg),
        eval_fn=lambda: heldout_kd(student, teacher, heldout, cfg, cfg.eval_batch_size),
        work_dir=ctx.work_dir, log=log, progress=ctx.progress, desc=f"{ctx.name} (distill)")
    save_checkpoint(student, s_tok, ctx.out_dir)
    shutil.copy(log.path, ctx.metrics_path())
    evals = [json.loads(x) for x in log.path.read_text().splitlines() if "eval_kl" in x]
    metrics = {"heldout_kl_before": evals[0]["eval_kl"], "heldout_kl_after": evals[-1]["eval_kl"],
               "heldout_lm_loss_before": evals[0]["eval_lm_loss"], "heldout_lm_loss_after": evals[-1]["eval_lm_loss"],
               "final_train_loss": result.final_train_loss, "steps": result.steps,
               "train_tokens_per_s": (result.steps - result.resumed_from) * cfg.tokens_per_step / max(result.train_s, 1e-9),
               "peak_memory_gib": result.peak_memory_gib}
    extra = {"data": {"licence": ctx.datasets["data"].licence_of(), "train_blocks": int(packed.train.shape[0])},
             "resumed_from_step": result.resumed_from}
    return StageResult(metrics=metrics, tokens=result.tokens, extra=extra)
