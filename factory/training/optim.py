"""AdamW with linear warmup and cosine decay to a floor."""

from __future__ import annotations

import math

import torch


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float):
    """AdamW without decay on norms and biases (1-D parameters), as is usual for LMs."""
    from torch.distributed.tensor import DTensor  # optional: torch.distributed is only needed under torchrun

    # FSDP-sharded (DTensor) and replicated parameters go to separate groups: the fused
    # kernel updates one group's tensors in one call, which cannot mix the two.
    by_kind: dict[tuple[bool, bool], list] = {}  # (decayed, sharded) -> parameters
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        by_kind.setdefault((p.ndim >= 2, isinstance(p, DTensor)), []).append(p)
    groups = [
        {"params": params, "weight_decay": weight_decay if decay else 0.0}
        for (decay, _), params in sorted(by_kind.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    ]
    # The fused kernel does the whole update in one pass over each tensor: on a CPU
    # it is several times faster than the foreach path, which is memory-bound.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
