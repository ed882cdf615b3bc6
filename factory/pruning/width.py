"""Turning importance scores and targets into a pruned model.

A ``PrunePlan`` lists what to keep (layers, hidden channels, and per kept layer
its MLP neurons, query groups and heads). ``apply`` slices a state dict by
parameter name and loads it into a fresh model built from the pruned config,
so the result is an ordinary HF model whose config matches its weights."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from factory.pruning.arch import Shape
from factory.pruning.importance import Aggregation, Importance


@dataclass
class PrunePlan:
    keep_layers: list[int]
    hidden: torch.Tensor  # kept hidden channels, ascending
    ffn: list[torch.Tensor]  # per kept layer: kept neurons, ascending
    heads: list[torch.Tensor]  # per kept layer: kept query heads, grouped by kept group
    groups: list[torch.Tensor]  # per kept layer: kept query groups (KV heads), ascending

    def shape(self, src: Shape) -> Shape:
        return Shape(
            num_layers=len(self.keep_layers),
            hidden_size=len(self.hidden),
            ffn_hidden_size=len(self.ffn[0]) if self.ffn else src.ffn_hidden_size,
            num_attention_heads=len(self.heads[0]) if self.heads else src.num_attention_heads,
            num_query_groups=len(self.groups[0]) if self.groups else src.num_query_groups,
            head_dim=src.head_dim,
            vocab_size=src.vocab_size,
            tied=src.tied,
            qkv_bias=src.qkv_bias,
            qk_norm=src.qk_norm,
        )


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ascending (stable on ties: lower index wins)."""
    if k >= scores.numel():
        return torch.arange(scores.numel())
    order = torch.argsort(-scores.double(), stable=True)
    return torch.sort(order[:k]).values


def select_heads(scores: torch.Tensor, groups: int, target_heads: int, target_groups: int):
    """GQA-aware head selection: keep whole query groups ranked by the summed
    importance of their heads, then the best heads inside each kept group."""
    heads = scores.numel()
    per_group = heads // groups
    per_group_new = target_heads // target_groups
    group_scores = scores.view(groups, per_group).sum(1)
    kept_groups = _top(group_scores, target_groups)
    kept_heads = [
        g * per_group + _top(scores[g * per_group : (g + 1) * per_group], per_group_new) for g in kept_groups.tolist()
    ]
    return torch.cat(kept_heads), kept_groups


def make_plan(
    imp: Importance,
    src: Shape,
    keep_layers: list[int],
    hidden: int,
    ffn: int,
    heads: int,
    groups: int,
    how: Aggregation = "l2",
) -> PrunePlan:
    return plan_from_scores(
        imp.ffn(how), imp.heads(how), imp.hidden(how, keep_layers), src, keep_layers, hidden, ffn, heads, groups
    )


def plan_from_scores(
    ffn_s: torch.Tensor,
    head_s: torch.Tensor,
    hidden_s: torch.Tensor,
    src: Shape,
    keep_layers: list[int],
    hidden: int,
    ffn: int,
    heads: int,
    groups: int,
) -> PrunePlan:
    """Keep the highest-scoring structures: ``ffn_s`` [L, F], ``head_s`` [L, H], ``hidden_s`` [h]."""
    hidden_idx = _top(hidden_s, hidden)
    f, hd, gr = [], [], []
    for i in keep_layers:
        f.append(_top(ffn_s[i], ffn))
        h_idx, g_idx = select_heads(head_s[i], src.num_query_groups, heads, groups)
        hd.append(h_idx)
        gr.append(g_idx)
    return PrunePlan(keep_layers=list(keep_layers), hidden=hidden_idx, ffn=f, heads=hd, groups=gr)


def _expand(idx: torch.Tensor, width: int) -> torch.Tensor:
    """Head indices -> row indices of a [heads * head_dim, ...] projection."""
    return (idx[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


def pruned_state_dict(sd: dict[str, torch.Tensor], plan: PrunePlan, src: Shape) -> dict[str, torch.Tensor]:
    hk, d = plan.hidden, src.head_dim
    out: dict[str, torch.Tensor] = {}
    new_index = {old: new for new, old in enumerate(plan.keep_layers)}
    for name, w in sd.items():
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            old = int(parts[2])
            if old not in new_index:
                continue
            j = new_index[old]
            parts[2] = str(j)
            rest = ".".join(parts[3:])
            q_rows, kv_rows, f = _expand(plan.heads[j], d), _expand(plan.groups[j], d), plan.ffn[j]
            if rest == "self_attn.q_proj.weight":
                w = w[q_rows][:, hk]
            elif rest in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
                w = w[kv_rows][:, hk]
            elif rest == "self_attn.q_proj.bias":
                w = w[q_rows]
            elif rest in ("self_attn.k_proj.bias", "self_attn.v_proj.bias"):
                w = w[kv_rows]
            elif rest == "self_attn.o_proj.weight":
                w = w[hk][:, q_rows]
            elif rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                w = w[f][:, hk]
            elif rest == "mlp.down_proj.weight":
                w = w[hk][:, f]
            elif rest in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                w = w[hk]
            elif rest in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                pass
            else:
                raise ValueError(f"pruning does not know parameter {name}")
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            w = w[:, hk]
        elif name == "model.norm.weight":
            w = w[hk]
        else:
            raise ValueError(f"pruning does not know parameter {name}")
        out[".".join(parts)] = w.contiguous().clone()
    return out


def pruned_config(config, shape: Shape):
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = shape.num_layers
    cfg.hidden_size = shape.hidden_size
    cfg.intermediate_size = shape.ffn_hidden_size
    cfg.num_attention_heads = shape.num_attention_heads
    cfg.num_key_value_heads = shape.num_query_groups
    cfg.head_dim = shape.head_dim  # no longer hidden_size / heads in general
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[: shape.num_layers]
    if getattr(cfg, "max_window_layers", None) is not None:
        cfg.max_window_layers = min(cfg.max_window_layers, shape.num_layers)
    return cfg


def apply(model, plan: PrunePlan):
    """A new model pruned by ``plan`` (the source model is left untouched)."""
    from transformers import AutoModelForCausalLM  # heavy: only building the pruned model needs it

    src = Shape.from_config(model.config.to_dict())
    if plan.keep_layers != sorted(plan.keep_layers):
        raise ValueError("keep_layers must be ascending")
    shape = plan.shape(src)
    sd = {k: v for k, v in model.state_dict().items()}
    if src.tied:
        sd.pop("lm_head.weight", None)
    new_sd = pruned_state_dict(sd, plan, src)
    cfg = pruned_config(model.config, shape)
    new = AutoModelForCausalLM.from_config(cfg, dtype=next(model.parameters()).dtype)
    missing, unexpected = new.load_state_dict(new_sd, strict=False)
    missing = [m for m in missing if not (src.tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"pruned state dict does not fit the pruned config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if src.tied:
        new.tie_weights()
    new.generation_config = copy.deepcopy(model.generation_config)
    return new
