"""Preference losses: hand computations from log-probs, and the fused LM-head
form against plain autograd over full logits."""

import math

import pytest
import torch

from factory.alignment.preference import PreferenceLoss, fused_preference_loss, preference_loss, sequence_logps
from factory.training.losses import IGNORE_INDEX


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(
    "loss_type,eps,w", [("dpo", 0.0, 0.0), ("dpo", 0.2, 0.0), ("ipo", 0.0, 0.0), ("rpo", 0.0, 0.5)]
)
def test_loss_equals_hand_computation(loss_type, eps, w):
    pc, pr, rc, rr, n = -10.0, -14.0, -11.0, -12.5, 5.0
    beta = 0.1
    spec = PreferenceLoss(loss_type, beta=beta, label_smoothing=eps, sft_loss_weight=w)
    losses, rewards = preference_loss(
        *(torch.tensor([v]) for v in (pc, pr, rc, rr)), spec, chosen_tokens=torch.tensor([n])
    )
    h = (pc - rc) - (pr - rr)  # 1 + 1.5 = 2.5
    if loss_type == "ipo":
        want = (h - 1 / (2 * beta)) ** 2  # (2.5 - 5)^2 = 6.25
    else:
        want = -(1 - eps) * math.log(_sig(beta * h)) - eps * math.log(_sig(-beta * h))
        if loss_type == "rpo":
            want += w * (-pc / n)
    assert float(losses[0]) == pytest.approx(want, abs=1e-6)
    assert float(rewards["chosen"][0]) == pytest.approx(beta * (pc - rc))
    assert float(rewards["rejected"][0]) == pytest.approx(beta * (pr - rr))
    if loss_type == "ipo":
        assert float(losses[0]) == pytest.approx(6.25)


def _reference(hidden, weight, labels, ref, spec):
    """Full logits, plain autograd: the definition."""
    logp = torch.log_softmax((hidden @ weight.t()).double(), dim=-1)[:, :-1]
    y = labels[:, 1:]
    mask = y != IGNORE_INDEX
    tok = logp.gather(-1, y.clamp(min=0)[..., None])[..., 0] * mask
    seq = tok.sum(-1)
    n = mask.sum(-1).double()
    p = hidden.shape[0] // 2
    if spec.average_log_probs:
        pc, pr = seq[:p] / n[:p], seq[p:] / n[p:]
    else:
        pc, pr = seq[:p], seq[p:]
    losses, _ = preference_loss(pc, pr, ref[:p].double(), ref[p:].double(), spec, chosen_tokens=n[:p])
    return losses.mean(), seq


def _batch(seed=0, pairs=3, t=9, hdim=16, vocab=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * pairs, t, hdim, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, hdim, generator=g, dtype=torch.float64) * 0.3
    labels = torch.randint(0, vocab, (2 * pairs, t), generator=g)
    for s in range(2 * pairs):  # a prompt of varying length, then the completion, then padding
        start, end = 2 + s % 3, t - (s % 2)
        labels[s, :start] = IGNORE_INDEX
        labels[s, end:] = IGNORE_INDEX
    ref = torch.randn(2 * pairs, generator=g, dtype=torch.float64) - 20
    return hidden, weight, labels, ref


@pytest.mark.parametrize(
    "spec",
    [
        PreferenceLoss("dpo", beta=0.1),
        PreferenceLoss("dpo", beta=0.5, label_smoothing=0.1),
        PreferenceLoss("ipo", beta=0.1, average_log_probs=True),
        PreferenceLoss("ipo", beta=0.3),
        PreferenceLoss("rpo", beta=0.1, sft_loss_weight=1.0),
        PreferenceLoss("rpo", beta=0.1, sft_loss_weight=0.5, average_log_probs=True),
    ],
)
def test_fused_matches_full_logits_autograd(spec):
    hidden, weight, labels, ref = _batch()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    want, want_seq = _reference(h1, w1, labels, ref, spec)
    want.backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got, got_seq = fused_preference_loss(h2, w2, labels, ref, spec)
    (got * 1.0).backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-10)
    torch.testing.assert_close(got_seq.double(), want_seq.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(w2.grad, w1.grad, atol=1e-10, rtol=1e-8)
    # prompt and padding positions get no gradient
    assert float(h2.grad[0, 0].abs().sum()) == 0.0


def test_sequence_logps_and_zero_margin_at_reference():
    hidden, weight, labels, _ = _batch(seed=1)
    seq, counts = sequence_logps(hidden.float(), weight.float(), labels, chunk_size=4)
    _, want = _reference(hidden, weight, labels, torch.zeros(hidden.shape[0]), PreferenceLoss())
    torch.testing.assert_close(seq.double(), want, atol=1e-4, rtol=1e-5)
    assert counts.tolist() == (labels[:, 1:] != IGNORE_INDEX).sum(-1).tolist()
    # policy == reference: h = 0, the DPO loss is log 2 whatever the data
    loss, _ = fused_preference_loss(hidden, weight, labels, want, PreferenceLoss("dpo", beta=0.1))
    assert float(loss) == pytest.approx(math.log(2), abs=1e-9)
