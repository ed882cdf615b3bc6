"""Activation importance: the aggregations against a direct computation, and its file round trip."""

import torch

from factory.pruning.importance import Importance, collect
from tests.unit.factory.pruning.models import ids, tiny


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
