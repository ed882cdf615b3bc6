"""Preference losses (DPO, IPO, RPO), and their LM-head-fused, per-pair chunked form.

Notation, per pair: ``pc``/``pr`` are the policy's log-probabilities of the
chosen/rejected completion (summed over completion tokens, or averaged when
``average_log_probs``), ``rc``/``rr`` the frozen reference's. With
``h = (pc - rc) - (pr - rr)`` and ``beta`` (NeMo-Aligner's
``ref_policy_kl_penalty``):

- ``dpo``: ``-(1 - eps) * log sigmoid(beta h) - eps * log sigmoid(-beta h)``
  (``eps`` = label smoothing: the chance a label is flipped);
- ``ipo``: ``(h - 1 / (2 beta))^2``;
- ``rpo``: ``dpo`` plus ``sft_loss_weight`` times the chosen completion's mean
  per-token negative log-likelihood.

The loss of a batch is the mean over its pairs. Implicit rewards are
``beta * (p - r)``; reward accuracy is the share of pairs whose chosen reward
is the larger.

Only completion tokens need the LM head: the fused form gathers their hidden
states and, pair by pair, forms the logits of that pair only, computes the
pair's loss and, at once, its gradient with respect to the hidden states and
the head weight. Full [batch, seq, vocab] logits never exist, and prompt
positions never meet the 49k-wide head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from factory.training.losses import IGNORE_INDEX

LossType = Literal["dpo", "ipo", "rpo"]


@dataclass(frozen=True)
class PreferenceLoss:
    loss_type: LossType = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    sft_loss_weight: float = 0.0  # rpo only
    average_log_probs: bool = False  # ipo is usually run with True


def preference_loss(
    pc: torch.Tensor,
    pr: torch.Tensor,
    rc: torch.Tensor,
    rr: torch.Tensor,
    spec: PreferenceLoss,
    chosen_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses from sequence log-probabilities (already averaged if the
    spec asks for it). ``chosen_tokens`` (per pair) turns a summed ``pc`` into
    the mean NLL that ``rpo`` adds. Returns (losses [pairs], rewards dict)."""
    h = (pc - rc) - (pr - rr)
    b = spec.beta
    if spec.loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * b)) ** 2
    else:
        eps = spec.label_smoothing
        losses = -(1.0 - eps) * F.logsigmoid(b * h) - eps * F.logsigmoid(-b * h)
        if spec.loss_type == "rpo":
            n = chosen_tokens if (chosen_tokens is not None and not spec.average_log_probs) else torch.ones_like(pc)
            losses = losses + spec.sft_loss_weight * (-pc / n)
    rewards = {"chosen": b * (pc - rc).detach(), "rejected": b * (pr - rr).detach()}
    return losses, rewards


def _dloss_dlogp(pc, pr, rc, rr, nc, nr, spec: PreferenceLoss) -> tuple[float, float]:
    """d(pair loss)/d(summed token log-prob) of the chosen and rejected completions."""
    sc = 1.0 / nc if spec.average_log_probs else 1.0
    sr = 1.0 / nr if spec.average_log_probs else 1.0
    h = (pc * sc - rc) - (pr * sr - rr)
    b = spec.beta
    if spec.loss_type == "ipo":
        dh = 2.0 * (h - 1.0 / (2.0 * b))
    else:
        eps = spec.label_smoothing
        # d/dh of -(1-eps) log s(bh) - eps log s(-bh) = -(1-eps) b s(-bh) + eps b s(bh)
        dh = -(1.0 - eps) * b * torch.sigmoid(-b * h) + eps * b * torch.sigmoid(b * h)
    d_c = dh * sc
    d_r = -dh * sr
    if spec.loss_type == "rpo":
        d_c = d_c - spec.sft_loss_weight / nc
    return d_c, d_r


class _FusedPreference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, seq_of_row, ref, n_pairs: int, spec: PreferenceLoss, need_grad: bool):
        # hidden [R, H]: hidden states of the completion positions only; targets [R]:
        # the next token at each; seq_of_row [R]: sequence index (chosen i, rejected
        # n_pairs + i); ref [2 * n_pairs]: reference sequence log-probs (summed).
        acc = torch.promote_types(hidden.dtype, torch.float32)
        logps = torch.zeros(2 * n_pairs, dtype=acc, device=hidden.device)
        counts = torch.bincount(seq_of_row, minlength=2 * n_pairs).to(acc)
        losses = torch.zeros(n_pairs, dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_grad else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_grad and weight.requires_grad else None
        order = torch.argsort(seq_of_row, stable=True)
        bounds = torch.searchsorted(seq_of_row[order], torch.arange(2 * n_pairs + 1, device=hidden.device))
        for i in range(n_pairs):
            rows_c = order[bounds[i] : bounds[i + 1]]
            rows_r = order[bounds[n_pairs + i] : bounds[n_pairs + i + 1]]
            rows = torch.cat([rows_c, rows_r])
            h = hidden[rows]
            y = targets[rows]
            logp = torch.log_softmax((h @ weight.t()).to(acc), dim=-1)
            ar = torch.arange(len(rows), device=hidden.device)
            tok = logp[ar, y]
            pc, pr = tok[: len(rows_c)].sum(), tok[len(rows_c) :].sum()
            logps[i], logps[n_pairs + i] = pc, pr
            nc, nr = counts[i].clamp(min=1), counts[n_pairs + i].clamp(min=1)
            avg = spec.average_log_probs
            loss_i, _ = preference_loss(
                (pc / nc if avg else pc).view(1),
                (pr / nr if avg else pr).view(1),
                ref[i].view(1),
                ref[n_pairs + i].view(1),
                spec,
                nc.view(1),
            )
            losses[i] = loss_i[0]
            if need_grad:
                d_c, d_r = _dloss_dlogp(pc, pr, ref[i], ref[n_pairs + i], nc, nr, spec)
                coef = torch.cat([d_c.expand(len(rows_c)), d_r.expand(len(rows_r))]).to(acc) / n_pairs
                # d logp[y] / d logits = onehot(y) - softmax
                g = logp.exp_().neg_()
                g[ar, y] += 1.0
                g.mul_(coef[:, None])
                g = g.to(hidden.dtype)
                grad_h[rows] = g @ weight
                if grad_w is not None:
                    grad_w.addmm_(g.t().to(acc), h.to(acc))
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
            ctx.has_grad_w = grad_w is not None
        ctx.mark_non_differentiable(logps)
        return losses.mean(), logps

    @staticmethod
    def backward(ctx, grad_out, _grad_logps):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype)
        gw = (grad_w * grad_out).to(gh.dtype) if ctx.has_grad_w else None
        return gh, gw, None, None, None, None, None, None


def completion_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states that predict a labelled token, those tokens, and the
    sequence each belongs to. ``hidden`` [S, T, H], ``labels`` [S, T]; position
    t predicts label t + 1."""
    targets = labels[:, 1:]
    seq, pos = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    return hidden[:, :-1][seq, pos], targets[seq, pos], seq


def fused_preference_loss(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ref_logps: torch.Tensor, spec: PreferenceLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean preference loss over pairs and the policy's summed sequence log-probs.

    ``hidden`` [2P, T, H] are the final hidden states of P chosen sequences
    followed by their P rejected ones; ``labels`` [2P, T] are -100 outside the
    completions; ``ref_logps`` [2P] the reference's summed log-probs."""
    n_pairs = hidden.shape[0] // 2
    h, y, seq = completion_rows(hidden, labels)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    ref = ref_logps.to(torch.promote_types(hidden.dtype, torch.float32))
    return _FusedPreference.apply(h, weight, y, seq, ref, n_pairs, spec, need_grad)


@torch.no_grad()
def sequence_logps(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs per sequence and completion token counts (no grad)."""
    h, y, seq = completion_rows(hidden, labels)
    out = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device)
    for s in range(0, h.shape[0], chunk_size):
        logp = torch.log_softmax((h[s : s + chunk_size] @ weight.t()).float(), dim=-1)
        tok = logp.gather(-1, y[s : s + chunk_size, None])[:, 0]
        out.index_add_(0, seq[s : s + chunk_size], tok)
    counts = torch.bincount(seq, minlength=labels.shape[0])
    return out, counts
