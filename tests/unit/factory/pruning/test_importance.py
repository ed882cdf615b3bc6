"""Pruning on tiny random Llamas: exactness, inert structure, GQA shapes, depth choice."""

import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from factory.pruning.importance import Importance, collect
from factory.sources.tiny import TinyLlamaSpec, build_tiny

_MODELS: dict = {}


def tiny(**kw):
    key = tuple(sorted(kw.items()))
    if key not in _MODELS:
        d = Path(tempfile.mkdtemp())
        build_tiny(TinyLlamaSpec(**kw), d)
        _MODELS[key] = d
    return AutoModelForCausalLM.from_pretrained(_MODELS[key])


def ids(n=4, s=24, seed=0):
    return torch.randint(3, 259, (n, s), generator=torch.Generator().manual_seed(seed))


def test_importance_aggregations_match_a_direct_computation():
    m = tiny(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=48)
    x = ids(n=5)
    seen = []
    h = m.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda mod, a: seen.append(a[0].detach()))
    imp = collect(m, x, batch_size=2, progress=False)  # 3 batches: the stats must add up across them
    h.remove()
    per_sample = torch.cat(seen).abs().mean(1).double()  # [5, 48]
    assert torch.allclose(imp.ffn("l2")[0], per_sample.norm(dim=0))
    assert torch.allclose(imp.ffn("mean")[0], per_sample.mean(0))
    assert torch.allclose(imp.ffn("variance")[0], per_sample.var(0, unbiased=False), atol=1e-12)
    assert imp.samples == 5 and imp.tokens == 5 * 24


def test_importance_roundtrip(tmp_path):
    m = tiny(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=48)
    imp = collect(m, ids(), progress=False)
    imp.save(tmp_path / "i.safetensors", {"key": "k"})
    back, meta = Importance.load(tmp_path / "i.safetensors")
    assert meta == {"key": "k"} and back.samples == imp.samples
    assert torch.equal(back.hidden(), imp.hidden())
