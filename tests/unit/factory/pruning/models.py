"""Tiny random Llamas for the pruning tests: built once per shape as a checkpoint on disk
(``build_tiny``, as the pipeline builds them) and loaded fresh for each test, plus token
batches, logits and the pruning ``Shape`` of a model."""

import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from factory.pruning.arch import Shape
from factory.sources.tiny import TinyLlamaSpec, build_tiny

_MODELS: dict = {}


def tiny(**kw):
    """A fresh copy of the tiny Llama of this shape (built on first use)."""
    key = tuple(sorted(kw.items()))
    if key not in _MODELS:
        d = Path(tempfile.mkdtemp())
        build_tiny(TinyLlamaSpec(**kw), d)
        _MODELS[key] = d
    return AutoModelForCausalLM.from_pretrained(_MODELS[key])


def ids(n=4, s=24, seed=0):
    return torch.randint(3, 259, (n, s), generator=torch.Generator().manual_seed(seed))


def logits(m, x):
    with torch.no_grad():
        return m(x).logits


def shape(m):
    return Shape.from_config(m.config.to_dict())
