"""Checkpoint I/O: what save_checkpoint writes, load_model reads back unchanged."""

import torch

from factory.sources.tiny import byte_tokenizer
from factory.training.checkpoints import load_model, save_checkpoint
from tests.unit.factory.tiny_models import tiny_llama


def test_a_saved_checkpoint_loads_back_with_the_same_weights_and_tokenizer(tmp_path):
    model, tok = tiny_llama(seed=3), byte_tokenizer()
    save_checkpoint(model, tok, tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded, loaded_tok = load_model(tmp_path, torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    want = model.state_dict()
    assert all(torch.equal(v.to(torch.bfloat16), want[k].to(torch.bfloat16)) for k, v in loaded.state_dict().items())
    assert loaded_tok.get_vocab() == tok.get_vocab()
