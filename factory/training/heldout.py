"""Held-out language-model loss (and perplexity) of a causal LM on token blocks."""

from __future__ import annotations

import math

import torch

from factory.training.losses import causal_lm_loss


@torch.no_grad()
def heldout_loss(model, blocks: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Token-weighted mean next-token loss over ``blocks`` [n, seq_len]."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        batch = blocks[start:start + batch_size]
        loss, n = causal_lm_loss(model, batch)
        total += float(loss) * n
        count += n
    model.train(was_training)
    mean = total / max(count, 1)
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0)), "tokens": count}
