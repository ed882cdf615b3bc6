"""Checkpoint I/O: an HF causal LM and its tokenizer in, an ordinary HF checkpoint out."""

from __future__ import annotations

from pathlib import Path

import torch

from factory.training import dist


def load_model(path: Path, dtype: torch.dtype):
    """(model, tokenizer) of the HF checkpoint at ``path``, the weights in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only stages that load a model need it

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tok


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    """An ordinary HF checkpoint on the CPU: config, safetensors, tokenizer, chat template,
    generation config. An FSDP-sharded model is gathered first (every rank must call
    this); only rank 0 has the weights to write, other ranks' outputs are discarded."""
    full = dist.full_model_state(model)
    if full is None:
        model.to("cpu").save_pretrained(out_dir)
    elif dist.is_main():
        model.save_pretrained(out_dir, state_dict=full)
    else:
        model.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
