"""Architectures that fit a parameter budget (``target_params``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from factory.pruning.arch import Shape


@dataclass(frozen=True)
class Candidate:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int

    def shape(self, src: Shape) -> Shape:
        return replace(
            src,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
        )

    def label(self) -> str:
        return (
            f"L{self.num_layers} h{self.hidden_size} ffn{self.ffn_hidden_size} "
            f"heads{self.num_attention_heads}/{self.num_query_groups}"
        )


def head_options(src: Shape) -> list[tuple[int, int]]:
    """(heads, groups) pairs reachable by GQA-aware pruning, largest first."""
    per_group = src.num_attention_heads // src.num_query_groups
    out = {(g * r, g) for g in range(1, src.num_query_groups + 1) for r in range(1, per_group + 1)}
    return sorted(out, reverse=True)


def enumerate_candidates(
    src: Shape, target: int, multiple: int = 32, slack: float = 0.05, max_candidates: int = 8
) -> list[Candidate]:
    """Width-only and depth-only candidates with ``(1 - slack) * target <= params <= target``.

    Width candidates fix the heads and the hidden size and take the largest MLP
    width that fits; they are thinned to ``max_candidates`` evenly across hidden
    sizes. The depth-only candidate keeps as many whole layers as fit."""
    found: list[Candidate] = []
    for heads, groups in head_options(src)[:3]:  # the paper keeps heads; allow a little head pruning
        for hidden in range(src.hidden_size, 0, -multiple):
            if hidden % heads:
                continue
            base = Candidate(src.num_layers, hidden, 0, heads, groups)
            per_ffn = 3 * hidden * src.num_layers
            room = target - base.shape(src).params()
            ffn = min(src.ffn_hidden_size, (room // per_ffn) // multiple * multiple)
            if ffn < multiple:
                continue
            cand = replace(base, ffn_hidden_size=ffn)
            if cand.shape(src).params() >= (1 - slack) * target:
                found.append(cand)
    found.sort(key=lambda c: (-c.hidden_size, -c.num_attention_heads))
    if len(found) > max_candidates - 1:
        step = (len(found) - 1) / max(1, max_candidates - 2)
        found = [found[round(i * step)] for i in range(max_candidates - 1)]
    full_width = Candidate(
        src.num_layers, src.hidden_size, src.ffn_hidden_size, src.num_attention_heads, src.num_query_groups
    )
    for layers in range(src.num_layers - 1, 0, -1):
        depth = replace(full_width, num_layers=layers)
        if depth.shape(src).params() <= target:
            found.append(depth)
            break
    return list(dict.fromkeys(found))
