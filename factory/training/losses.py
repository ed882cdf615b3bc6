"""Memory-lean language-model loss: LM head and cross entropy fused, in chunks.

The plain path materialises [tokens, vocab] fp32 logits, their softmax and
their gradient (three tensors of 200 MB for 1024 tokens of a 49k vocabulary).
Here the gradient with respect to the hidden states and the head weight is
computed chunk by chunk during the forward pass, so only one chunk of logits
ever exists; backward just scales the stored gradients."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size: int, need_grad: bool):
        # hidden: [N, H], weight: [V, H], labels: [N] (IGNORE_INDEX = masked)
        n_valid = (labels != IGNORE_INDEX).sum()
        denom = n_valid.clamp(min=1).to(hidden.dtype)
        # Softmax and accumulations in at least fp32 whatever the model dtype.
        acc = torch.promote_types(hidden.dtype, torch.float32)
        total = hidden.new_zeros((), dtype=acc)
        grad_h = torch.empty_like(hidden) if need_grad else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_grad and weight.requires_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            y = labels[start : start + chunk_size]
            # log_softmax is one fused pass; its exp is the softmax we need for the gradient.
            logp = torch.log_softmax((h @ weight.t()).to(acc), dim=-1)
            valid = y != IGNORE_INDEX
            safe_y = torch.where(valid, y, torch.zeros_like(y))
            rows = torch.arange(logp.shape[0], device=logp.device)
            total -= (logp[rows, safe_y] * valid).sum()
            if need_grad:
                # d(loss)/d(logits) = (softmax - onehot) / n_valid on valid rows; the
                # 1/n_valid is applied in backward, to the small results, not here.
                g = logp.exp_()
                g[rows, safe_y] -= 1.0
                if not bool(valid.all()):
                    g[~valid] = 0.0
                g = g.to(hidden.dtype)
                grad_h[start : start + chunk_size] = g @ weight
                if grad_w is not None:
                    grad_w.addmm_(g.t().to(acc), h.to(acc))
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0), denom)
            ctx.has_grad_w = grad_w is not None
        return total / denom.to(acc)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, denom = ctx.saved_tensors
        scale = grad_out / denom
        gh = grad_h * scale.to(grad_h.dtype)
        gw = (grad_w * scale).to(gh.dtype) if ctx.has_grad_w else None
        return gh, gw, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Mean cross entropy of ``hidden @ weight.T`` against ``labels`` over unmasked tokens.

    ``hidden`` [..., H] and ``labels`` [...] are flattened; labels equal to -100
    are ignored. Equals ``F.cross_entropy(hidden @ weight.T, labels)``."""
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _FusedLinearCE.apply(h, weight, y, chunk_size, need_grad)


def causal_lm_loss(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, int]:
    """Next-token loss of an HF causal LM without materialising full logits.

    Returns (mean loss, number of predicted tokens). ``labels`` default to the
    inputs; position t predicts token t+1."""
    labels = input_ids if labels is None else labels
    out = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
    valid = targets != IGNORE_INDEX
    if not bool(valid.all()):
        # Only predicted positions meet the LM head (in SFT the prompt and padding are a
        # third or more of the tokens, and the head is a fifth of a small model's FLOPs).
        hidden, targets = hidden[valid], targets[valid]
    loss = fused_linear_cross_entropy(hidden, model.lm_head.weight, targets, chunk_size)
    return loss, int(valid.sum())
