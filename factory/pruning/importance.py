"""Activation importance from forward passes only (Minitron, section 2.1; ModelOpt's hooks).

For every calibration sample the activation is reduced over the sequence
(mean of |a|, or of the per-head L2 norm for attention heads); the per-sample
values are then aggregated over the batch. We keep the running sum and sum of
squares of the per-sample values, so every batch aggregation (L2 as in the
paper, mean, variance) comes from one calibration pass, and the raw statistics
are saved with the artifact for reuse when only the pruning targets change."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from factory.pruning.arch import layers
from foundation import storage

Aggregation = Literal["l2", "mean", "variance"]


@dataclass
class Importance:
    ffn_sum: torch.Tensor  # [L, F]
    ffn_sumsq: torch.Tensor
    heads_sum: torch.Tensor  # [L, H]
    heads_sumsq: torch.Tensor
    hidden_sum: torch.Tensor  # [2L + 1, h]: input_layernorm, post_attention_layernorm per layer, final norm
    hidden_sumsq: torch.Tensor
    bi_sum: torch.Tensor  # [L]: sum over tokens of 1 - cos(block input, block output)
    tokens: int
    samples: int

    @staticmethod
    def _agg(s: torch.Tensor, ss: torch.Tensor, n: int, how: Aggregation) -> torch.Tensor:
        if how == "l2":
            return ss.sqrt()
        mean = s / n
        if how == "mean":
            return mean
        return (ss / n - mean * mean).clamp(min=0)

    def ffn(self, how: Aggregation = "l2") -> torch.Tensor:
        return self._agg(self.ffn_sum, self.ffn_sumsq, self.samples, how)

    def heads(self, how: Aggregation = "l2") -> torch.Tensor:
        return self._agg(self.heads_sum, self.heads_sumsq, self.samples, how)

    def hidden(self, how: Aggregation = "l2", keep_layers: list[int] | None = None) -> torch.Tensor:
        """Channel importance summed over the norm outputs of the kept layers and the final norm."""
        per_norm = self._agg(self.hidden_sum, self.hidden_sumsq, self.samples, how)
        n_layers = self.ffn_sum.shape[0]
        keep = range(n_layers) if keep_layers is None else keep_layers
        rows = [2 * i for i in keep] + [2 * i + 1 for i in keep] + [2 * n_layers]
        return per_norm[rows].sum(0)

    def block_influence(self) -> torch.Tensor:
        return self.bi_sum / max(self.tokens, 1)

    def save(self, path: Path, meta: dict[str, str], what: str = "importance scores", checked: bool = False) -> None:
        """Write the statistics to ``path`` (safetensors, atomically): identical statistics and
        ``meta`` give identical bytes. ``checked``: record its sha256 for ``storage.load_checked``."""
        tensors = {
            k: getattr(self, k).contiguous()
            for k in ("ffn_sum", "ffn_sumsq", "heads_sum", "heads_sumsq", "hidden_sum", "hidden_sumsq", "bi_sum")
        }
        storage.write_safetensors(
            path, tensors, {**meta, "tokens": str(self.tokens), "samples": str(self.samples)}, what, checked
        )

    @classmethod
    def load(cls, path: Path) -> tuple[Importance, dict[str, str]]:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(**tensors, tokens=int(meta.pop("tokens")), samples=int(meta.pop("samples"))), meta


class _Collector:
    def __init__(self, model, device: torch.device):
        self.blocks = layers(model)
        n = len(self.blocks)
        cfg = model.config
        heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        f64 = dict(dtype=torch.float64, device=device)  # accumulate where the activations are
        self.ffn = [torch.zeros(2, cfg.intermediate_size, **f64) for _ in range(n)]
        self.heads = [torch.zeros(2, heads, **f64) for _ in range(n)]
        self.hidden = [torch.zeros(2, cfg.hidden_size, **f64) for _ in range(2 * n + 1)]
        self.bi = torch.zeros(n, **f64)
        self.handles = []
        for i, block in enumerate(self.blocks):
            self.handles += [
                block.mlp.down_proj.register_forward_pre_hook(self._seq_abs_mean_pre(self.ffn[i])),
                block.self_attn.o_proj.register_forward_pre_hook(self._heads_pre(self.heads[i])),
                block.input_layernorm.register_forward_hook(self._seq_abs_mean_out(self.hidden[2 * i])),
                block.post_attention_layernorm.register_forward_hook(self._seq_abs_mean_out(self.hidden[2 * i + 1])),
                block.register_forward_hook(self._block_influence(i), with_kwargs=True),
            ]
        self.handles.append(model.model.norm.register_forward_hook(self._seq_abs_mean_out(self.hidden[2 * n])))

    @staticmethod
    def _add(acc: torch.Tensor, per_sample: torch.Tensor) -> None:
        per_sample = per_sample.double()
        acc[0] += per_sample.sum(0)
        acc[1] += (per_sample * per_sample).sum(0)

    def _seq_abs_mean_pre(self, acc):
        def hook(module, args):
            self._add(acc, args[0].abs().mean(1))

        return hook

    def _seq_abs_mean_out(self, acc):
        def hook(module, args, out):
            self._add(acc, out.abs().mean(1))

        return hook

    def _heads_pre(self, acc):
        def hook(module, args):
            x = args[0]
            b, s, _ = x.shape
            self._add(acc, x.view(b, s, -1, self.head_dim).norm(dim=-1).mean(1))

        return hook

    def _block_influence(self, i):
        def hook(module, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            self.bi[i] += (1.0 - cos).double().sum()

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def collect(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True) -> Importance:
    """Run the calibration ``blocks`` [N, seq] through the model and gather importance."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    col = _Collector(model, device)
    try:
        for start in tqdm(
            range(0, blocks.shape[0], batch_size),
            desc="calibration",
            unit="batch",
            disable=not progress,
            file=sys.stderr,
        ):
            model.model(input_ids=blocks[start : start + batch_size].to(device), use_cache=False)
    finally:
        col.close()
        model.train(was_training)
    stack = lambda accs, j: torch.stack([a[j] for a in accs]).cpu()  # noqa: E731
    return Importance(
        ffn_sum=stack(col.ffn, 0),
        ffn_sumsq=stack(col.ffn, 1),
        heads_sum=stack(col.heads, 0),
        heads_sumsq=stack(col.heads, 1),
        hidden_sum=stack(col.hidden, 0),
        hidden_sumsq=stack(col.hidden, 1),
        bi_sum=col.bi.cpu(),
        tokens=int(blocks.numel()),
        samples=int(blocks.shape[0]),
    )
