"""Tiny random Llama models with a byte-level ChatML tokenizer, for tests and smoke runs.

Nothing is downloaded: the tokenizer maps every byte to one token (plus the
ChatML special tokens), and the model is initialised from a seed, so the same
spec always yields the same weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from foundation.configs import field, require

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as used by SmolLM2 and Qwen: one <|im_end|> closes every turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class TinyLlamaSpec:
    num_hidden_layers: int = field(2, help="transformer blocks")
    hidden_size: int = field(64, help="hidden / embedding width")
    num_attention_heads: int = field(4, help="query heads")
    num_key_value_heads: int = field(2, help="key/value heads (query groups)")
    intermediate_size: int = field(128, help="MLP width")
    head_dim: int | None = field(None, help="per-head width; hidden_size / heads when null")
    tie_word_embeddings: bool = field(True, help="share input embedding and LM head")
    max_position_embeddings: int = field(2048, help="context length")
    seed: int = field(0, help="initialisation seed")

    def check(self, where: str) -> None:
        for key in (
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
        ):
            require(getattr(self, key) > 0, where, key, "must be positive")
        require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            where,
            "num_key_value_heads",
            f"must divide num_attention_heads ({self.num_attention_heads})",
        )
        # transformers' Llama config insists on this even when head_dim is explicit
        require(
            self.hidden_size % self.num_attention_heads == 0,
            where,
            "hidden_size",
            f"must be a multiple of num_attention_heads ({self.num_attention_heads})",
        )


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges and ChatML specials (ids 0, 1, 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # heavy: only building a tiny model needs it
    from transformers import PreTrainedTokenizerFast  # heavy: likewise

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def tiny_config(spec: TinyLlamaSpec):
    from transformers import LlamaConfig  # heavy: recipe validation reads shapes without transformers loaded

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim or spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rms_norm_eps=1e-5,
    )


def build_tiny(spec: TinyLlamaSpec, out_dir: Path) -> None:
    """Write a tiny random Llama checkpoint with its tokenizer to ``out_dir``."""
    import torch  # heavy: only building a tiny model needs it
    from transformers import GenerationConfig, LlamaForCausalLM  # heavy: likewise

    tok = byte_tokenizer()
    assert len(tok) == VOCAB_SIZE and tok.eos_token_id == 2 and tok.bos_token_id == 1
    config = tiny_config(spec)
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
