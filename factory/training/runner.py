"""Causal-LM fine-tuning of an HF checkpoint on a packed corpus, as a stage body."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from factory.training.heldout import heldout_loss
from factory.sources.datasets import DatasetSpec
from factory.sources.documents import iter_documents
from factory.stages.base import StageContext, StageResult
from factory.training.data import blocks_for, pack
from factory.training.loop import TrainConfig, train
from factory.training.losses import causal_lm_loss
from factory.training.metrics import MetricsLog


def load_model(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tok


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    """An ordinary HF checkpoint on the CPU: config, safetensors, tokenizer, chat template,
    generation config. An FSDP-sharded model is gathered first (every rank must call
    this); only rank 0 has the weights to write, other ranks' outputs are discarded."""
    from factory.training import dist

    full = dist.full_model_state(model)
    if full is None:
        model.to("cpu").save_pretrained(out_dir)
    elif dist.is_main():
        model.save_pretrained(out_dir, state_dict=full)
    else:
        model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def lm_finetune(ctx: StageContext, model_dir: Path, data: DatasetSpec, desc: str) -> StageResult:
    cfg: TrainConfig = ctx.config
    torch.manual_seed(ctx.seed)
    device = cfg.torch_device()
    model, tok = load_model(model_dir, cfg.torch_dtype())
    model.to(device)
    packed = pack(iter_documents(data, ctx.base), tok, cfg.seq_len,
                  train_blocks=blocks_for(cfg.max_tokens, cfg.seq_len),
                  heldout_blocks=blocks_for(cfg.eval_tokens, cfg.seq_len), seed=ctx.seed,
                  source=f"stages.{ctx.name}.data")
    log = MetricsLog(ctx.work_dir / "metrics.jsonl")

    def batch_fn(step: int, micro: int) -> torch.Tensor:
        return packed.batch(step, micro, cfg.batch_size, cfg.grad_accum, ctx.seed).to(device)

    def loss_fn(m, batch):
        return causal_lm_loss(m, batch, chunk_size=cfg.loss_chunk)

    def eval_fn() -> dict:
        return heldout_loss(model, packed.heldout.to(device), cfg.eval_batch_size)

    result = train(model, cfg, batch_fn, loss_fn, eval_fn, ctx.work_dir, log, ctx.progress, desc)
    save_checkpoint(model, tok, ctx.out_dir)
    shutil.copy(log.path, ctx.metrics_path())
    rows = [json.loads(line) for line in log.path.read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    metrics = {
        "eval_loss_before": evals[0]["eval_loss"],
        "eval_loss_after": evals[-1]["eval_loss"],
        "eval_ppl_before": evals[0]["eval_ppl"],
        "eval_ppl_after": evals[-1]["eval_ppl"],
        "final_train_loss": result.final_train_loss,
        "steps": result.steps,
        "train_tokens_per_s": (result.steps - result.resumed_from) * cfg.tokens_per_step / max(result.train_s, 1e-9),
        "peak_memory_gib": result.peak_memory_gib,
    }
    extra = {"data": {"documents_used": packed.documents_used, "train_blocks": int(packed.train.shape[0]),
                      "heldout_blocks": int(packed.heldout.shape[0]),
                      "epochs": result.tokens / max(1, packed.train.numel()),
                      "licence": data.licence_of()},
             "resumed_from_step": result.resumed_from}
    return StageResult(metrics=metrics, tokens=result.tokens, extra=extra)
