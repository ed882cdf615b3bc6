"""Logit distillation losses, fused with both LM heads and chunked over tokens.

Per chunk of tokens the teacher and student logits are formed, the loss is
accumulated and the gradient with respect to the student's hidden states and
head weight is computed at once, so at most one chunk of [tokens x vocab]
logits of each model exists at a time (vocab 49k for SmolLM2, 128k for
Llama 3). The teacher side carries no autograd state.

Losses (``T`` = temperature, ``p`` = teacher, ``q`` = student softmax at ``T``):
- ``forward_kl``: T^2 * KL(p || q), the Minitron paper's choice (T = 1);
- ``reverse_kl``: T^2 * KL(q || p);
- ``top_k``: forward KL against the teacher's top-k tokens, renormalised;
- optionally the student's own next-token cross entropy (``lm_weight`` > 0).
All are means over unmasked tokens."""

from __future__ import annotations

from typing import Literal

import torch

from factory.training.losses import IGNORE_INDEX

KDKind = Literal["forward_kl", "reverse_kl"]


def _teacher_target(t_logits: torch.Tensor, temperature: float, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher probabilities and log-probabilities at ``temperature`` (top-k renormalised: zero elsewhere)."""
    z = t_logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        vals, idx = z.topk(top_k, dim=-1)
        logp_k = torch.log_softmax(vals, dim=-1)
        p = torch.zeros_like(z).scatter_(-1, idx, logp_k.exp())
        logp = torch.full_like(z, float("-inf")).scatter_(-1, idx, logp_k)
        return p, logp
    logp = torch.log_softmax(z, dim=-1)
    return logp.exp(), logp


class _FusedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, labels, mask, temperature, kind, top_k, kd_scale, lm_weight, chunk,
                need_grad):
        acc = torch.promote_types(h_s.dtype, torch.float32)
        n = mask.sum().clamp(min=1).to(acc)
        kd_total = torch.zeros((), dtype=acc, device=h_s.device)
        lm_total = torch.zeros((), dtype=acc, device=h_s.device)
        grad_h = torch.empty_like(h_s) if need_grad else None
        grad_w = torch.zeros_like(w_s, dtype=acc) if need_grad and w_s.requires_grad else None
        T = float(temperature)
        all_valid = bool(mask.all())
        for s in range(0, h_s.shape[0], chunk):
            e = s + chunk
            with torch.no_grad():
                t_logits = (h_t[s:e] @ w_t.t()).to(acc)
            s_logits = (h_s[s:e] @ w_s.t()).to(acc)
            # Every [chunk, vocab] pass costs memory bandwidth: the common case
            # (forward KL, full vocabulary) is done in place with few passes.
            if kind == "forward_kl" and top_k is None:
                logp = torch.log_softmax(t_logits if T == 1 else t_logits / T, dim=-1)
                del t_logits
                logq = torch.log_softmax(s_logits if T == 1 else s_logits / T, dim=-1)
                p = logp.exp()
                kl = torch.linalg.vecdot(p, logp.sub_(logq))  # sum_v p (log p - log q)
                del logp
                g = logq.exp_().sub_(p)  # d KL / d z = (q - p) / T
                del p
            else:
                p, logp = _teacher_target(t_logits, T, top_k)
                del t_logits
                logq = torch.log_softmax(s_logits / T, dim=-1)
                q = logq.exp()
                if kind == "forward_kl":  # top-k target: 0 * -inf terms are 0
                    kl = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)
                    g = q - p
                else:
                    diff = logq - logp
                    kl = (q * diff).sum(-1)
                    g = q * (diff - kl[:, None])  # d KL(q||p) / d z = q (log q - log p - KL) / T
            m = None if all_valid else mask[s:e].to(acc)
            kd_total += (kl if m is None else kl * m).sum() * (T * T)
            g.mul_(T * kd_scale)  # T^2 scale times the 1/T of the softmax
            if m is not None:
                g.mul_(m[:, None])
            if lm_weight > 0:
                y = labels[s:e]
                valid = ((y != IGNORE_INDEX) & mask[s:e]).to(acc)
                safe = torch.where(y != IGNORE_INDEX, y, torch.zeros_like(y))
                lp = torch.log_softmax(s_logits, dim=-1)  # the LM term is at T = 1
                rows = torch.arange(lp.shape[0], device=lp.device)
                lm_total += -(lp[rows, safe] * valid).sum()
                glm = lp.exp_()
                glm[rows, safe] -= 1.0
                g.add_(glm.mul_((valid * lm_weight)[:, None]))
            if need_grad:
                g = g.to(h_s.dtype)
                grad_h[s:e] = g @ w_s
                if grad_w is not None:
                    grad_w.addmm_(g.t().to(acc), h_s[s:e].to(acc))
        kd = kd_total / n
        lm = lm_total / n
        loss = kd_scale * kd + lm_weight * lm
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0), n)
            ctx.has_w = grad_w is not None
        ctx.mark_non_differentiable(kd, lm)
        return loss, kd, lm

    @staticmethod
    def backward(ctx, grad_loss, _gkd, _glm):
        grad_h, grad_w, n = ctx.saved_tensors
        scale = grad_loss / n
        gh = grad_h * scale.to(grad_h.dtype)
        gw = (grad_w * scale).to(gh.dtype) if ctx.has_w else None
        return gh, gw, None, None, None, None, None, None, None, None, None, None, None


def fused_kd_loss(h_s: torch.Tensor, w_s: torch.Tensor, h_t: torch.Tensor, w_t: torch.Tensor,
                  labels: torch.Tensor | None = None, mask: torch.Tensor | None = None, temperature: float = 1.0,
                  kind: KDKind = "forward_kl", top_k: int | None = None, kd_scale: float = 1.0,
                  lm_weight: float = 0.0, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kd, lm) over tokens: ``h_s`` [..., Hs] with head ``w_s`` [V, Hs] (student),
    ``h_t`` [..., Ht] with head ``w_t`` [V, Ht] (teacher, no gradient), ``labels`` [...]
    for the optional LM term, ``mask`` [...] of tokens that count."""
    hs = h_s.reshape(-1, h_s.shape[-1])
    ht = h_t.reshape(-1, h_t.shape[-1])
    y = (labels.reshape(-1) if labels is not None
         else torch.full((hs.shape[0],), IGNORE_INDEX, dtype=torch.long, device=hs.device))
    m = mask.reshape(-1).bool() if mask is not None else torch.ones(hs.shape[0], dtype=torch.bool, device=hs.device)
    if lm_weight > 0 and labels is None:
        raise ValueError("lm_weight > 0 needs labels")
    need_grad = torch.is_grad_enabled() and (h_s.requires_grad or w_s.requires_grad)
    return _FusedKD.apply(hs, w_s, ht, w_t.detach(), y, m, temperature, kind, top_k, kd_scale, lm_weight, chunk,
                          need_grad)
