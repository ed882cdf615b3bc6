"""Width pruning on tiny random Llamas: exactness, inert structure, GQA shapes, untied embeddings."""

import pytest
import torch

from factory.pruning.importance import collect
from factory.pruning.width import apply, make_plan, select_heads
from tests.unit.factory.pruning.models import ids, logits, shape, tiny

GQA = dict(
    num_hidden_layers=3, hidden_size=72, num_attention_heads=9, num_key_value_heads=3, intermediate_size=96, head_dim=8
)


def test_targets_equal_to_source_leave_logits_unchanged():
    m = tiny(**GQA)
    x = ids()
    imp = collect(m, x, progress=False)
    s = shape(m)
    plan = make_plan(imp, s, [0, 1, 2], 72, 96, 9, 3)
    assert torch.allclose(logits(m, x), logits(apply(m, plan), x), atol=1e-5)


def test_inert_neurons_and_groups_prune_exactly():
    m = tiny(**GQA)
    inert_ffn = [5, 17, 40]
    with torch.no_grad():
        for layer in m.model.layers:
            layer.mlp.gate_proj.weight[inert_ffn] = 0
            layer.mlp.up_proj.weight[inert_ffn] = 0
            layer.mlp.down_proj.weight[:, inert_ffn] = 0
            # query group 1 (heads 3, 4, 5) outputs nothing: zero V and the heads' o_proj columns
            layer.self_attn.v_proj.weight[8:16] = 0
            layer.self_attn.o_proj.weight[:, 24:48] = 0
    x = ids()
    imp = collect(m, x, progress=False)
    ffn = imp.ffn()
    assert all(float(ffn[i][inert_ffn].max()) == 0.0 for i in range(3))
    s = shape(m)
    ref = logits(m, x)
    plan = make_plan(imp, s, [0, 1, 2], 72, 93, 6, 2)  # drops the 3 inert neurons and group 1
    assert plan.groups[0].tolist() == [0, 2] and plan.heads[0].tolist() == [0, 1, 2, 6, 7, 8]
    assert torch.allclose(ref, logits(apply(m, plan), x), atol=1e-5)
    plan = make_plan(imp, s, [0, 1, 2], 72, 92, 6, 2)  # one live neuron more
    assert not torch.allclose(ref, logits(apply(m, plan), x), atol=1e-3)


def test_inert_hidden_channels_are_ranked_last():
    m = tiny(**GQA)
    inert = [3, 30, 61]
    with torch.no_grad():
        m.model.embed_tokens.weight[:, inert] = 0
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[inert] = 0
            layer.mlp.down_proj.weight[inert] = 0
    x = ids()
    imp = collect(m, x, progress=False)
    hidden = imp.hidden()
    assert float(hidden[inert].max()) == 0.0 and float(hidden.min()) == 0.0
    keep = [i for i in range(72) if i not in inert]
    plan = make_plan(imp, shape(m), [0, 1, 2], 69, 96, 9, 3)
    assert plan.hidden.tolist() == keep
    ref = logits(m, x)
    inert_change = (logits(apply(m, plan), x) - ref).abs().mean()
    plan.hidden = torch.tensor([i for i in range(72) if i not in (0, 1, 2)])
    live_change = (logits(apply(m, plan), x) - ref).abs().mean()
    # removing dead channels only rescales the RMS norm; removing live ones loses signal
    assert inert_change < live_change / 3


@pytest.mark.parametrize("heads,groups", [(6, 3), (6, 2), (3, 1), (9, 3)])
def test_gqa_shape_arithmetic(heads, groups):
    m = tiny(**GQA)
    x = ids()
    imp = collect(m, x, progress=False)
    s = shape(m)
    plan = make_plan(imp, s, [0, 2], 36, 48, heads, groups)
    p = apply(m, plan)
    c = p.config
    assert (
        c.num_attention_heads,
        c.num_key_value_heads,
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.head_dim,
    ) == (heads, groups, 2, 36, 48, 8)
    attn = p.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (heads * 8, 36) and attn.k_proj.weight.shape == (groups * 8, 36)
    assert attn.o_proj.weight.shape == (36, heads * 8)
    assert sum(t.numel() for t in p.parameters()) == plan.shape(s).params()
    assert p.lm_head.weight.data_ptr() == p.model.embed_tokens.weight.data_ptr()  # still tied
    assert logits(p, x).shape == (4, 24, 259)


def test_untied_embeddings_are_pruned_too():
    m = tiny(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        tie_word_embeddings=False,
    )
    imp = collect(m, ids(), progress=False)
    s = shape(m)
    p = apply(m, make_plan(imp, s, [0, 1], 32, 32, 4, 2))
    assert p.lm_head.weight.shape == (259, 32) and not p.config.tie_word_embeddings
    assert sum(t.numel() for t in p.parameters()) == make_plan(imp, s, [0, 1], 32, 32, 4, 2).shape(s).params()


def test_select_heads_keeps_whole_groups():
    scores = torch.tensor([1.0, 9.0, 2.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0])
    heads, groups = select_heads(scores, groups=3, target_heads=4, target_groups=2)
    assert groups.tolist() == [0, 2] and heads.tolist() == [1, 2, 6, 7]
