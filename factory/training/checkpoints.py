"""Checkpoint I/O: an HF causal LM and its tokenizer in, an ordinary HF checkpoint out."""

from __future__ import annotations

from pathlib import Path

import torch

from factory.training import dist
from foundation import storage
from foundation.hashing import list_files


def load_model(path: Path, dtype: torch.dtype):
    """(model, tokenizer) of the HF checkpoint at ``path``, the weights in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only stages that load a model need it

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tok


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    """An ordinary HF checkpoint on the CPU: config, safetensors, tokenizer, chat template,
    generation config. An FSDP-sharded model is gathered first (every rank must call
    this); only rank 0 has the weights to write, other ranks' outputs are discarded.

    When the disk is full (or read-only, or not writable) the files this call wrote are
    removed and a one-line ``StorageError`` names the directory."""
    out_dir = Path(out_dir)
    before = _files(out_dir)
    full = dist.full_model_state(model)  # collective: every rank, before anything can fail
    try:
        if full is None:
            model.to("cpu").save_pretrained(out_dir)
        elif dist.is_main():
            model.save_pretrained(out_dir, state_dict=full)
        else:
            model.config.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    except Exception as e:
        mapped = storage.storage_error(e, out_dir, "the model checkpoint")
        if mapped is None:
            raise
        for stale in _files(out_dir) - before:  # partial weights must not pass for a checkpoint
            (out_dir / stale).unlink(missing_ok=True)
        raise mapped from e


def _files(directory: Path) -> set[str]:
    return set(list_files(directory)) if directory.is_dir() else set()
