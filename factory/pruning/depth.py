"""Choosing which contiguous block of layers to drop.

- ``lm_loss``: held-out LM loss with each candidate block removed; the lowest
  wins (the paper's method).
- ``block_influence``: 1 - cosine(block input, block output), averaged over
  tokens; the contiguous block with the lowest total is dropped (ShortGPT /
  ModelOpt's measure; no extra forward passes).
- ``last``: drop the last layers (a baseline)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from factory.pruning.arch import layers


def candidate_blocks(n_layers: int, n_drop: int) -> list[list[int]]:
    return [list(range(s, s + n_drop)) for s in range(0, n_layers - n_drop + 1)]


@contextmanager
def without_layers(model, drop: list[int]):
    """Temporarily remove layers ``drop`` from ``model`` (forward without cache only)."""
    blocks = layers(model)
    original = list(blocks)
    n = model.config.num_hidden_layers
    kept = [b for i, b in enumerate(original) if i not in set(drop)]
    model.model.layers = torch.nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    try:
        yield model
    finally:
        model.model.layers = torch.nn.ModuleList(original)
        model.config.num_hidden_layers = n


def by_block_influence(bi: torch.Tensor, n_drop: int) -> tuple[list[int], list[dict]]:
    ranking = [{"drop": blk, "block_influence": float(bi[blk].sum())} for blk in candidate_blocks(bi.numel(), n_drop)]
    best = min(ranking, key=lambda r: r["block_influence"])
    return best["drop"], ranking


def by_lm_loss(model, n_drop: int, loss_fn: Callable[[torch.nn.Module], float]) -> tuple[list[int], list[dict]]:
    ranking = []
    for blk in candidate_blocks(model.config.num_hidden_layers, n_drop):
        with without_layers(model, blk):
            ranking.append({"drop": blk, "lm_loss": loss_fn(model)})
    best = min(ranking, key=lambda r: r["lm_loss"])
    return best["drop"], ranking
