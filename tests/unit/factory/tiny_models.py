"""Tiny random Llama models built in memory (no checkpoint on disk) and token batches for them."""

import torch
from transformers import LlamaForCausalLM

from factory.sources.tiny import VOCAB_SIZE, TinyLlamaSpec, tiny_config


def tiny_llama(seed: int = 0, **kw) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 64, 4 heads in 2 groups, MLP 128 unless ``kw`` says otherwise)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_config(TinyLlamaSpec(seed=seed, **kw))).eval()


def token_blocks(n: int = 3, seq: int = 12, seed: int = 0) -> torch.Tensor:
    """[n, seq] random token ids (no special tokens)."""
    return torch.randint(3, VOCAB_SIZE, (n, seq), generator=torch.Generator().manual_seed(seed))
