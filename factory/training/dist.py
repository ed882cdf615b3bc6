"""Data-parallel training across processes started by ``torchrun``.

Each rank takes its share of the rows of every micro-batch, gradients are
averaged with one all-reduce per step over a flattened buffer, and only rank 0
writes anything (checkpoints, metrics, artifacts). The global batch is the
recipe's ``batch_size x grad_accum``, whatever the number of processes, so a
run on N processes follows the same loss trajectory as one on a single process
(up to float summation order). CPUs use gloo, GPUs NCCL."""

from __future__ import annotations

import os

import torch


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env() -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend)


def barrier() -> None:
    if world()[1] > 1:
        torch.distributed.barrier()


def shard_rows(batch):
    """This rank's rows of a batch (a tensor, or a dict of tensors with the same rows)."""
    rank, size = world()
    if size == 1:
        return batch
    if isinstance(batch, dict):
        return {k: v[rank::size] for k, v in batch.items()}
    return batch[rank::size]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    _, size = world()
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def mean_across(value: float) -> float:
    _, size = world()
    if size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.item() / size)
