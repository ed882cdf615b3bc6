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
All are means over unmasked tokens.

``KDSettings``, ``KDStudent`` and ``kd_terms`` are the KD objective a stage
trains with: the loss terms of one batch, for a student wrapped together with
the projections of its intermediate-state losses."""

from __future__ import annotations

from dataclasses import dataclass
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


def _chunk_kd(h_s, w_s, h_t, w_t, acc: torch.dtype, T: float, kind: str, top_k: int | None):
    """One chunk of tokens: (student logits, per-token KL, d KL / d student logits times T)."""
    with torch.no_grad():
        t_logits = (h_t @ w_t.t()).to(acc)
    s_logits = (h_s @ w_s.t()).to(acc)
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
        return s_logits, kl, g
    p, logp = _teacher_target(t_logits, T, top_k)
    del t_logits
    logq = torch.log_softmax(s_logits / T, dim=-1)
    q = logq.exp()
    if kind == "forward_kl":  # top-k target: 0 * -inf terms are 0
        kl = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)
        return s_logits, kl, q - p
    diff = logq - logp
    kl = (q * diff).sum(-1)
    return s_logits, kl, q * (diff - kl[:, None])  # d KL(q||p) / d z = q (log q - log p - KL) / T


def _lm_term(
    g: torch.Tensor, s_logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, acc: torch.dtype, lm_weight: float
) -> torch.Tensor:
    """The chunk's summed next-token NLL at T = 1; adds ``lm_weight`` times its gradient to ``g``."""
    valid = ((y != IGNORE_INDEX) & mask).to(acc)
    safe = torch.where(y != IGNORE_INDEX, y, torch.zeros_like(y))
    lp = torch.log_softmax(s_logits, dim=-1)
    rows = torch.arange(lp.shape[0], device=lp.device)
    nll = -(lp[rows, safe] * valid).sum()
    glm = lp.exp_()
    glm[rows, safe] -= 1.0
    g.add_(glm.mul_((valid * lm_weight)[:, None]))
    return nll


class _FusedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, labels, mask, temperature, kind, top_k, kd_scale, lm_weight, chunk, need_grad):
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
            s_logits, kl, g = _chunk_kd(h_s[s:e], w_s, h_t[s:e], w_t, acc, T, kind, top_k)
            m = None if all_valid else mask[s:e].to(acc)
            kd_total += (kl if m is None else kl * m).sum() * (T * T)
            g.mul_(T * kd_scale)  # T^2 scale times the 1/T of the softmax
            if m is not None:
                g.mul_(m[:, None])
            if lm_weight > 0:
                lm_total += _lm_term(g, s_logits, labels[s:e], mask[s:e], acc, lm_weight)
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


def fused_kd_loss(
    h_s: torch.Tensor,
    w_s: torch.Tensor,
    h_t: torch.Tensor,
    w_t: torch.Tensor,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    kind: KDKind = "forward_kl",
    top_k: int | None = None,
    kd_scale: float = 1.0,
    lm_weight: float = 0.0,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kd, lm) over tokens: ``h_s`` [..., Hs] with head ``w_s`` [V, Hs] (student),
    ``h_t`` [..., Ht] with head ``w_t`` [V, Ht] (teacher, no gradient), ``labels`` [...]
    for the optional LM term, ``mask`` [...] of tokens that count."""
    hs = h_s.reshape(-1, h_s.shape[-1])
    ht = h_t.reshape(-1, h_t.shape[-1])
    y = (
        labels.reshape(-1)
        if labels is not None
        else torch.full((hs.shape[0],), IGNORE_INDEX, dtype=torch.long, device=hs.device)
    )
    m = mask.reshape(-1).bool() if mask is not None else torch.ones(hs.shape[0], dtype=torch.bool, device=hs.device)
    if lm_weight > 0 and labels is None:
        raise ValueError("lm_weight > 0 needs labels")
    need_grad = torch.is_grad_enabled() and (h_s.requires_grad or w_s.requires_grad)
    return _FusedKD.apply(
        hs, w_s, ht, w_t.detach(), y, m, temperature, kind, top_k, kd_scale, lm_weight, chunk, need_grad
    )


@dataclass(frozen=True)
class KDSettings:
    """The knobs of the KD objective (defaults: the Minitron recipe, forward KL at T = 1, no LM loss)."""

    kind: KDKind = "forward_kl"
    temperature: float = 1.0
    top_k: int | None = None  # distil only the teacher's top-k tokens (renormalised)
    kd_scale: float = 1.0  # weight of the logit KD loss
    lm_weight: float = 0.0  # weight of the student's own next-token loss (0: off)
    intermediate_scale: float = 1.0  # weight of the intermediate-state losses
    chunk: int = 256  # tokens per chunk of the fused KD loss


class KDStudent(torch.nn.Module):
    """The student plus the projections of intermediate-state losses (trained with it, not released).

    ``pairs`` are ``(student_layer, teacher_layer)``: the cosine loss aligns those
    layers' outputs, through a learned projection when the widths differ."""

    def __init__(self, student, pairs, s_width: int, t_width: int):
        super().__init__()
        self.student = student
        self.pairs = [tuple(p) for p in (pairs or [])]
        self.proj = torch.nn.ModuleList(
            torch.nn.Linear(s_width, t_width, bias=False) if s_width != t_width else torch.nn.Identity()
            for _ in self.pairs
        )


def kd_terms(wrapper: KDStudent, teacher, batch: torch.Tensor, kd: KDSettings):
    """The training loss of one batch [rows, seq] of token ids, as the training loop's
    ``loss_fn`` returns it: (loss, tokens, {"kd_loss", ["lm_loss"], ["intermediate_loss"]})."""
    pairs = wrapper.pairs
    with torch.inference_mode():
        t_out = teacher.model(input_ids=batch, use_cache=False, output_hidden_states=bool(pairs))
        t_hidden = t_out.last_hidden_state[:, :-1].clone()
        t_states = [t_out.hidden_states[t + 1].clone() for _, t in pairs] if pairs else []
    t_hidden = t_hidden.clone()  # leave inference mode: a normal tensor from here on
    s_out = wrapper.student.model(input_ids=batch, use_cache=False, output_hidden_states=bool(pairs))
    h_s = s_out.last_hidden_state[:, :-1]
    total, kd_loss, lm = fused_kd_loss(
        h_s,
        wrapper.student.lm_head.weight,
        t_hidden,
        teacher.lm_head.weight,
        labels=batch[:, 1:],
        temperature=kd.temperature,
        kind=kd.kind,
        top_k=kd.top_k,
        kd_scale=kd.kd_scale,
        lm_weight=kd.lm_weight,
        chunk=kd.chunk,
    )
    extras = {"kd_loss": kd_loss.item()}
    if kd.lm_weight:
        extras["lm_loss"] = lm.item()
    if pairs:
        cosine = torch.nn.functional.cosine_similarity
        inter = sum(
            1 - cosine(proj(s_out.hidden_states[s + 1]), t.clone(), dim=-1).mean()
            for (s, _), proj, t in zip(pairs, wrapper.proj, t_states)
        ) / len(pairs)
        total = total + kd.intermediate_scale * inter
        extras["intermediate_loss"] = inter.item()
    return total, int(h_s.shape[0] * h_s.shape[1]), extras
