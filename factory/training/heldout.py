"""Held-out evaluators: each measures a model on held-out data without training
it and returns a dict of metrics, the shape the training loop's ``eval_fn`` has."""

from __future__ import annotations

import math

import torch

from factory.training.kd import fused_kd_loss
from factory.training.losses import causal_lm_loss


@torch.no_grad()
def heldout_loss(model, blocks: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Token-weighted mean next-token loss (and perplexity) over ``blocks`` [n, seq_len]."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        batch = blocks[start : start + batch_size]
        loss, n = causal_lm_loss(model, batch)
        total += float(loss) * n
        count += n
    model.train(was_training)
    mean = total / max(count, 1)
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0)), "tokens": count}


@torch.no_grad()
def heldout_kd(student, teacher, blocks: torch.Tensor, batch_size: int, chunk: int = 256) -> dict:
    """Held-out forward KL(teacher || student) at T = 1 and the student's LM loss, token-weighted,
    over ``blocks`` [n, seq_len]; ``chunk`` tokens per chunk of the fused loss."""
    was = student.training
    student.eval()
    kl_sum, lm_sum, n = 0.0, 0.0, 0
    for i in range(0, blocks.shape[0], batch_size):
        b = blocks[i : i + batch_size]
        h_t = teacher.model(input_ids=b, use_cache=False).last_hidden_state[:, :-1]
        h_s = student.model(input_ids=b, use_cache=False).last_hidden_state[:, :-1]
        _, kd, lm = fused_kd_loss(
            h_s, student.lm_head.weight, h_t, teacher.lm_head.weight, labels=b[:, 1:], lm_weight=1.0, chunk=chunk
        )
        k = h_s.shape[0] * h_s.shape[1]
        kl_sum += kd.item() * k
        lm_sum += lm.item() * k
        n += k
    student.train(was)
    return {"kl": kl_sum / n, "lm_loss": lm_sum / n, "tokens": n}


@torch.no_grad()
def assistant_loss(model, batches: list[dict]) -> dict:
    """Token-weighted mean loss on the labelled (assistant) tokens of collated conversation
    batches (``input_ids``, ``labels``, ``attention_mask``)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        loss, n = causal_lm_loss(model, b["input_ids"], b["labels"], b["attention_mask"])
        total += float(loss) * n
        count += n
    model.train(was)
    return {"assistant_loss": total / max(count, 1), "assistant_tokens": count}
