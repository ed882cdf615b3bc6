"""Depth pruning: which block a criterion drops."""

import pytest
import torch

from factory.pruning import depth
from factory.pruning.importance import collect
from factory.pruning.width import apply, make_plan
from tests.unit.factory.pruning.models import ids, logits, shape, tiny


def test_block_influence_picks_identity_blocks():
    m = tiny(num_hidden_layers=6, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    with torch.no_grad():
        for i in (2, 3):  # residual stream passes these blocks unchanged
            m.model.layers[i].self_attn.o_proj.weight.zero_()
            m.model.layers[i].mlp.down_proj.weight.zero_()
    x = ids()
    imp = collect(m, x, progress=False)
    bi = imp.block_influence()
    assert float(bi[2]) < 1e-6 and float(bi[3]) < 1e-6 and float(bi[[0, 1, 4, 5]].min()) > 1e-3
    drop, ranking = depth.by_block_influence(bi, 2)
    assert drop == [2, 3] and len(ranking) == 5
    from factory.training.heldout import heldout_loss

    full = heldout_loss(m, x)["loss"]
    drop, ranking = depth.by_lm_loss(m, 2, lambda mm: heldout_loss(mm, x)["loss"])
    # on a random model another block may even lower the loss; the identity block leaves it as it was
    by_block = {tuple(r["drop"]): r["lm_loss"] for r in ranking}
    assert by_block[(2, 3)] == pytest.approx(full, abs=1e-6)
    assert by_block[tuple(drop)] == min(by_block.values())
    assert m.config.num_hidden_layers == 6 and len(m.model.layers) == 6  # restored
    keep = [0, 1, 4, 5]
    plan = make_plan(imp, shape(m), keep, 64, 64, 4, 2)
    assert torch.allclose(logits(m, x), logits(apply(m, plan), x), atol=1e-5)
