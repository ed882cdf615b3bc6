"""Pruning on tiny random Llamas: exactness, inert structure, GQA shapes, depth choice."""

from factory.pruning.arch import Shape
from factory.pruning.budget import enumerate_candidates


def test_budget_candidates_fit():
    src = Shape(
        num_layers=30,
        hidden_size=576,
        ffn_hidden_size=1536,
        num_attention_heads=9,
        num_query_groups=3,
        head_dim=64,
        vocab_size=49152,
        tied=True,
    )
    assert src.params() == 134_515_008
    cands = enumerate_candidates(src, 67_000_000, max_candidates=6)
    assert 2 <= len(cands) <= 6
    for c in cands:
        p = c.shape(src).params()
        assert p <= 67_000_000, c
        assert c.hidden_size % c.num_attention_heads == 0
    assert any(c.num_layers < 30 and c.hidden_size == 576 for c in cands)  # the depth-only candidate
