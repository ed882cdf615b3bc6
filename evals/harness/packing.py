"""Pack log-likelihood requests that share a context into one sequence.

A multiple-choice document asks for log p(choice | context) for every choice,
with the same context each time. Instead of running the context once per
choice, a row holds the context once followed by every choice, and an attention
mask lets each choice see the context and itself but not the other choices;
position ids restart after the context for each choice. Each choice then sees
exactly the keys and positions it would see on its own, so its log-likelihood
is the same, for one pass over the context.

The last token of a choice is only ever a target, never an input, so it is not
put in the row at all: a one-token choice (MMLU's " A") costs nothing but its
log-softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Row:
    """One packed sequence and what to read out of it."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)  # 0: shared context, k >= 1: continuation k
    # (request indices that ask for this continuation, columns whose output predicts
    # each target token, the target tokens)
    reads: list[tuple[list[int], list[int], list[int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def split_request(context: list[int], continuation: list[int], max_length: int) -> tuple[tuple, tuple]:
    """(prefix, continuation) as a causal LM sees them: context and continuation
    joined, cut from the left to ``max_length + 1`` tokens (the last is a target
    only), continuation scored on the rest."""
    if not continuation:
        raise ValueError("a log-likelihood request needs a non-empty continuation")
    if len(continuation) > max_length:
        raise ValueError(f"continuation of {len(continuation)} tokens exceeds the model's {max_length}")
    whole = (context + continuation)[-(max_length + 1) :]
    return tuple(whole[: len(whole) - len(continuation)]), tuple(continuation)


def plan_rows(requests: list[tuple[list[int], list[int]]], max_length: int, row_tokens: int) -> list[Row]:
    """Rows for ``requests`` [(context tokens, continuation tokens)]: one per
    distinct prefix, or more when its continuations exceed ``row_tokens``."""
    groups: dict[tuple, dict[tuple, list[int]]] = {}
    for i, (context, continuation) in enumerate(requests):
        prefix, cont = split_request(context, continuation, max_length)
        groups.setdefault(prefix, {}).setdefault(cont, []).append(i)
    rows = []
    for prefix, conts in groups.items():
        row = _new_row(prefix)
        for cont, owners in conts.items():
            if len(row.reads) and len(row) + len(cont) - 1 > row_tokens:
                rows.append(row)
                row = _new_row(prefix)
            _append(row, len(prefix), cont, owners)
        rows.append(row)
    return rows


def _new_row(prefix: tuple) -> Row:
    return Row(tokens=list(prefix), positions=list(range(len(prefix))), segments=[0] * len(prefix))


def _append(row: Row, n_prefix: int, cont: tuple, owners: list[int]) -> None:
    segment = len(row.reads) + 1
    start = len(row.tokens)
    inputs = cont[:-1]
    row.tokens += inputs
    row.positions += range(n_prefix, n_prefix + len(inputs))
    row.segments += [segment] * len(inputs)
    # The first target is predicted by the context's last token, the others by
    # the continuation's own previous token.
    cols = [n_prefix - 1] + list(range(start, start + len(inputs)))
    row.reads.append((owners, cols, list(cont)))


def batches(rows: list[Row], max_rows: int, max_tokens: int, min_fill: float = 0.75) -> list[list[Row]]:
    """Rows longest first (the largest batch comes first, so an out-of-memory
    error comes at once), grouped while rows x longest fits ``max_tokens`` and
    no row is shorter than ``min_fill`` of the longest: padding is compute
    thrown away, and on a CPU a few hundred tokens already fill the matmuls."""
    out: list[list[Row]] = []
    for row in sorted(rows, key=len, reverse=True):
        cur = out[-1] if out else None
        if (
            cur
            and len(cur) < max_rows
            and (len(cur) + 1) * len(cur[0]) <= max_tokens
            and len(row) >= min_fill * len(cur[0])
        ):
            cur.append(row)
        else:
            out.append([row])
    return out


def collate(batch: list[Row], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ids and positions, and segments (-1 on padding)."""
    width = len(batch[0])
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(batch), width), dtype=torch.long)
    seg = torch.full((len(batch), width), -1, dtype=torch.long)
    for b, row in enumerate(batch):
        n = len(row)
        ids[b, :n] = torch.tensor(row.tokens)
        pos[b, :n] = torch.tensor(row.positions)
        seg[b, :n] = torch.tensor(row.segments)
    return {"input_ids": ids.to(device), "position_ids": pos.to(device), "segments": seg.to(device)}


def attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """[batch, 1, query, key] booleans (True: may attend): causal, and a
    continuation sees the context and its own earlier tokens only. Padding
    attends to itself so no row of the mask is empty (an empty row is NaN)."""
    n = segments.shape[1]
    idx = torch.arange(n, device=segments.device)
    causal = idx[None, :] <= idx[:, None]
    q, k = segments[:, :, None], segments[:, None, :]
    allowed = causal & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(n, dtype=torch.bool, device=segments.device)
    return allowed[:, None]
