"""The fused, chunked KD loss equals a direct full-vocabulary computation."""

import pytest
import torch
import torch.nn.functional as F

from factory.training.kd import fused_kd_loss


def _data(seed=0, n=29, hs=12, ht=16, v=41):
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(n, hs, dtype=torch.float64, generator=g, requires_grad=True)
    w_s = torch.randn(v, hs, dtype=torch.float64, generator=g, requires_grad=True)
    h_t = torch.randn(n, ht, dtype=torch.float64, generator=g)
    w_t = torch.randn(v, ht, dtype=torch.float64, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    mask = torch.ones(n, dtype=torch.bool)
    mask[[2, 11]] = False
    return h_s, w_s, h_t, w_t, labels, mask


def _reference(h_s, w_s, h_t, w_t, labels, mask, T, kind, top_k, kd_scale, lm_weight):
    s, t = h_s @ w_s.t(), h_t @ w_t.t()
    logq = F.log_softmax(s / T, -1)
    zt = t / T
    if top_k:
        vals, idx = zt.topk(top_k, -1)
        logp = torch.full_like(zt, float("-inf")).scatter(-1, idx, F.log_softmax(vals, -1))
    else:
        logp = F.log_softmax(zt, -1)
    p = logp.exp()
    if kind == "forward_kl":
        kl = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)
    else:
        kl = (logq.exp() * (logq - logp)).sum(-1)
    m = mask.double()
    kd = (kl * m).sum() / m.sum() * T * T
    lm = (F.cross_entropy(s, labels, reduction="none") * m).sum() / m.sum()
    return kd_scale * kd + lm_weight * lm, kd, lm


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("kind,top_k", [("forward_kl", None), ("forward_kl", 5), ("reverse_kl", None)])
@pytest.mark.parametrize("lm_weight", [0.0, 0.7])
def test_fused_kd_matches_reference(T, kind, top_k, lm_weight):
    h_s, w_s, h_t, w_t, labels, mask = _data()
    loss, kd, lm = fused_kd_loss(
        h_s, w_s, h_t, w_t, labels, mask, T, kind, top_k, kd_scale=1.3, lm_weight=lm_weight, chunk=7
    )
    (loss * 0.9).backward()
    gh, gw = h_s.grad.clone(), w_s.grad.clone()
    h_s.grad = w_s.grad = None
    ref, ref_kd, ref_lm = _reference(h_s, w_s, h_t, w_t, labels, mask, T, kind, top_k, 1.3, lm_weight)
    (ref * 0.9).backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert kd.item() == pytest.approx(ref_kd.item(), abs=1e-6)
    if lm_weight:
        assert lm.item() == pytest.approx(ref_lm.item(), abs=1e-6)
    assert torch.allclose(gh, h_s.grad, atol=1e-6) and torch.allclose(gw, w_s.grad, atol=1e-6)


def test_self_distillation_is_zero():
    h_s, w_s, _, _, labels, mask = _data()
    loss, kd, _ = fused_kd_loss(h_s, w_s, h_s.detach(), w_s.detach(), labels, mask)
    assert abs(kd.item()) < 1e-12
    loss.backward()
    assert h_s.grad.abs().max().item() < 1e-12


def test_chunking_does_not_change_the_result():
    h_s, w_s, h_t, w_t, labels, mask = _data(seed=3)
    a = fused_kd_loss(h_s, w_s, h_t, w_t, mask=mask, chunk=1)[0].item()
    b = fused_kd_loss(h_s, w_s, h_t, w_t, mask=mask, chunk=1000)[0].item()
    assert a == pytest.approx(b, abs=1e-12)
