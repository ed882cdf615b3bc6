"""What pruning needs to know about a decoder-only HF model, and nothing more.

Llama, Mistral, Qwen2 and SmolLM2 share one layout: RMSNorm, SwiGLU MLP
(gate/up/down), rotary attention with grouped-query attention (q/k/v/o, biases
on q/k/v for Qwen2), tied or untied embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from foundation.errors import ConfigError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
# The prune stage's explicit targets, one per dimension of ``Shape`` that pruning
# changes (``target_params`` instead sets a budget over all of them: budget.py).
WIDTH_TARGETS = ("target_hidden_size", "target_ffn_hidden_size", "target_num_attention_heads")
TARGET_KEYS = (*WIDTH_TARGETS, "target_num_query_groups", "target_num_layers")


@dataclass(frozen=True)
class Shape:
    """The dimensions pruning can change, plus what parameter counting needs."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    tied: bool
    qkv_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> Shape:
        heads = cfg["num_attention_heads"]
        return cls(
            num_layers=cfg["num_hidden_layers"],
            hidden_size=cfg["hidden_size"],
            ffn_hidden_size=cfg["intermediate_size"],
            num_attention_heads=heads,
            num_query_groups=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            tied=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", False)) or cfg.get("model_type") == "qwen2",
            qk_norm=cfg.get("model_type") == "qwen3",
        )

    def params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        h, f, d = self.hidden_size, self.ffn_hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_query_groups * d
        attn = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * d
        layer = attn + 3 * h * f + 2 * h
        emb = self.vocab_size * h * (1 if self.tied else 2)
        return self.num_layers * layer + emb + h

    def as_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "ffn_hidden_size": self.ffn_hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_query_groups": self.num_query_groups,
            "head_dim": self.head_dim,
            "params": self.params(),
        }


def layers(model):
    return model.model.layers


def check_supported(config: dict, where: str) -> None:
    mt = config.get("model_type")
    if mt not in SUPPORTED:
        raise ConfigError(where, f"cannot prune model_type {mt!r} (supported: {', '.join(SUPPORTED)})")
    if config.get("hidden_act", "silu") not in ("silu", "swish", "gelu", "gelu_pytorch_tanh"):
        raise ConfigError(where, f"unsupported MLP activation {config.get('hidden_act')!r}")
