import pytest
import torch
import torch.nn.functional as F

from factory.training.losses import IGNORE_INDEX, fused_linear_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_fused_ce_matches_reference_loss_and_grads(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(53, 24, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(97, 24, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 97, (53,), generator=g)
    y[[0, 5, 52]] = IGNORE_INDEX
    loss = fused_linear_cross_entropy(h, w, y, chunk_size=chunk)
    (loss * 1.7).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy(h @ w.t(), y, ignore_index=IGNORE_INDEX)
    (ref * 1.7).backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    assert torch.allclose(gh, h.grad, atol=1e-12) and torch.allclose(gw, w.grad, atol=1e-12)


def test_fused_ce_no_grad_and_all_masked():
    h = torch.randn(4, 8)
    w = torch.randn(10, 8)
    y = torch.full((4,), IGNORE_INDEX)
    with torch.no_grad():
        assert fused_linear_cross_entropy(h, w, y).item() == 0.0


def test_fused_ce_bf16_close_to_fp32():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(32, 16, generator=g)
    w = torch.randn(50, 16, generator=g)
    y = torch.randint(0, 50, (32,), generator=g)
    ref = F.cross_entropy(h @ w.t(), y)
    got = fused_linear_cross_entropy(h.bfloat16(), w.bfloat16(), y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)
