"""Batch sizes from the device's memory, for the ``hf`` engine and ``factory-hf``.

On a CPU the defaults stay what they were tuned to on two cores (64 sequences and 4096
prefill tokens for generation; 64 rows and 1024 tokens a batch for scoring): there a few
hundred tokens already fill the matmuls, and memory is not what limits a batch. On a GPU
a batch that small leaves the device mostly idle, so the batch is sized from the memory
left free once the weights are loaded: a share of it (``FRACTION``) divided by what a
token costs, which is

- scoring (``factory-hf``): one layer's activations at a time (the forward runs under
  inference mode, so a layer's are freed as the next starts), plus the attention scores
  and boolean mask of a row as long as ``seq`` when SDPA falls back to materialising them;
- generation (``hf``): the KV cache of every layer, for sequences of ``seq`` tokens
  (prompt and answer), plus a prefill's activations as for scoring.

``scoring_batch`` and ``generation_batch`` are pure functions of those figures, so they
are tested with given memory sizes; ``device_free_bytes`` reads a device's."""

from __future__ import annotations

from dataclasses import dataclass

import torch

FRACTION = 0.6  # of the free memory a batch may use: the rest is allocator slack and the head's buffers
CPU_SCORING = (64, 1024)  # (rows, tokens) per factory-hf batch on a CPU
CPU_GENERATION = (64, 4096)  # (sequences decoding together, tokens per prefill) on a CPU
MAX_SCORING_TOKENS = 65_536  # beyond this a batch no longer runs faster per token
MAX_SCORING_ROWS = 1024
MAX_SEQUENCES = 256  # decode steps are per-token Python work: more sequences, slower steps
MAX_PREFILL_TOKENS = 32_768


@dataclass(frozen=True)
class ModelCost:
    """The shape figures a batch's memory depends on."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    dtype_bytes: int

    @classmethod
    def from_config(cls, config, dtype: torch.dtype) -> ModelCost:
        """From a transformers config (its text part for multimodal models) and the weights' dtype."""
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = cfg.num_attention_heads
        return cls(
            layers=cfg.num_hidden_layers,
            hidden=cfg.hidden_size,
            ffn=getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size,
            heads=heads,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            vocab=cfg.vocab_size,
            dtype_bytes=torch.empty((), dtype=dtype).element_size(),
        )

    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def forward_bytes_per_token(self, seq: int) -> int:
        """Live activations of one token inside one layer's forward (residual in and out, both
        norms, q/k/v and attention output, the MLP's gate, up and product), plus one row of
        fp32 attention scores and the boolean mask over ``seq`` keys."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        elements = 4 * self.hidden + 2 * q + 2 * kv + 3 * self.ffn
        return elements * self.dtype_bytes + self.heads * seq * 4 + seq

    def head_bytes(self, rows: int) -> int:
        """fp32 logits, log-softmax and a temporary of ``rows`` positions over the vocabulary."""
        return 3 * rows * self.vocab * 4


def scoring_batch(free_bytes: int | None, cost: ModelCost, seq: int, head_chunk: int = 512) -> tuple[int, int]:
    """(max rows, max tokens) of a ``factory-hf`` batch whose rows are at most ``seq`` tokens,
    with ``free_bytes`` of device memory free after the weights (None: a CPU, the CPU defaults)."""
    if free_bytes is None:
        return CPU_SCORING
    budget = FRACTION * free_bytes - cost.head_bytes(head_chunk)
    tokens = _clamp(budget // cost.forward_bytes_per_token(seq), MAX_SCORING_TOKENS)
    return _clamp(tokens // 16, MAX_SCORING_ROWS), tokens  # rows of 16 tokens or more


def generation_batch(free_bytes: int | None, cost: ModelCost, seq: int) -> tuple[int, int]:
    """(max sequences decoding together, prefill tokens) for the ``hf`` engine when sequences
    (prompt and answer) reach ``seq`` tokens, with ``free_bytes`` free after the weights (None:
    a CPU, the CPU defaults). A quarter of the budget goes to prefill activations, the rest
    to the KV cache."""
    if free_bytes is None:
        return CPU_GENERATION
    budget = FRACTION * free_bytes
    per_token = cost.forward_bytes_per_token(seq)
    prefill = _clamp(budget / 4 // per_token, MAX_PREFILL_TOKENS)
    cache = budget - prefill * per_token - cost.head_bytes(MAX_SEQUENCES)
    return _clamp(cache // (cost.kv_bytes_per_token() * seq), MAX_SEQUENCES), prefill


def _clamp(x: float, most: int) -> int:
    """``x`` as an integer in [1, most]: a device too full for one gets batches of one (and may still run out)."""
    return int(min(most, max(1, x)))


def device_free_bytes(device: torch.device) -> int | None:
    """Memory a batch can still take on ``device``: CUDA's free memory plus what torch's
    allocator holds unused; None on a CPU (whose batches are not sized by memory)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
