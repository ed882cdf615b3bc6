"""Data-parallel training across processes started by ``torchrun``.

Each rank takes its share of the rows of every micro-batch, gradients are
averaged with one all-reduce per step over a flattened buffer, and only rank 0
writes anything (checkpoints, metrics, artifacts). The global batch is the
recipe's ``batch_size x grad_accum``, whatever the number of processes, so a
run on N processes follows the same loss trajectory as one on a single process
(up to float summation order). CPUs use gloo, GPUs NCCL.

``parallel: fsdp`` shards instead of replicating (torch FSDP2, ``fully_shard``):
every decoder layer's weights, gradients and optimizer state are split across
the ranks and gathered one layer at a time for its forward and backward; the
embeddings, final norm and LM head (which the fused losses read directly) stay
replicated and are all-reduced like DDP. Checkpoints and the released model are
gathered to full tensors, so a checkpoint looks the same whatever the layout."""

from __future__ import annotations

import os

import torch

from foundation.errors import FactoryError


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
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:
            raise FactoryError(
                f"torchrun: local rank {local_rank} has no GPU of its own ({gpus} visible on this "
                f"node); start at most {gpus} processes per node (--nproc_per_node), or hide the "
                "GPUs (CUDA_VISIBLE_DEVICES=) to run on the CPU over gloo"
            )
        torch.cuda.set_device(local_rank)
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


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor  # optional: torch.distributed is only needed under torchrun

    return isinstance(t, DTensor)


def shard_layers(model: torch.nn.Module) -> int:
    """FSDP2-shard every decoder layer (each module of a ``ModuleList`` named ``layers``)
    across all ranks; returns how many layers were sharded (0 outside torchrun)."""
    _, size = world()
    if size == 1:
        return 0
    from torch.distributed.device_mesh import init_device_mesh  # optional: only FSDP under torchrun needs it
    from torch.distributed.fsdp import fully_shard  # likewise

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (size,))
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers"
    ]
    for name, layers in stacks:
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        # The module holding the stack (e.g. LlamaModel) becomes the FSDP root, owning
        # none of its own parameters (embeddings and final norm stay replicated). With a
        # root, each layer frees its gathered weights right after its forward; a layer
        # that is its own root would keep them until backward.
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        inside = {id(p) for p in layers.parameters()}
        fully_shard(parent, mesh=mesh, ignored_params={p for p in parent.parameters() if id(p) not in inside})
    return sum(len(layers) for _, layers in stacks)


def is_sharded(model: torch.nn.Module) -> bool:
    return any(_is_dtensor(p) for p in model.parameters())


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the replicated parameters' gradients; FSDP-sharded ones
    arrive already averaged by their reduce-scatter."""
    _, size = world()
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None and not _is_dtensor(p.grad)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def mean_across(value: float) -> float:
    _, size = world()
    if size == 1:
        return value
    # NCCL reduces only GPU tensors (on this rank's device, set by init_from_env)
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item() / size)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also understands a mix of FSDP-sharded and replicated
    gradients: the sharded part of the squared norm is summed across ranks, the
    replicated part (identical everywhere after averaging) counted once."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(_is_dtensor(g) for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    sharded = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    replicated = torch.zeros_like(sharded)
    for g in grads:
        if _is_dtensor(g):
            sharded += g.to_local().double().pow(2).sum()
        else:
            replicated += g.double().pow(2).sum()
    torch.distributed.all_reduce(sharded)
    norm = (sharded + replicated).sqrt()
    coef = min(1.0, max_norm / (float(norm) + 1e-6))
    for g in grads:
        g.mul_(coef)
    return norm.float()


def full_state(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """Model and optimizer state to checkpoint: plain ``state_dict()``s, or under FSDP
    full tensors gathered to rank 0's CPU (a collective: every rank must call it;
    the others get empty dicts)."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # optional: sharded only

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, optimizer, model_state: dict, optim_state: dict) -> None:
    """Inverse of ``full_state``: every rank passes the full dicts and keeps its shards."""
    if not is_sharded(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict  # optional: sharded only

    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optim_state,
        options=StateDictOptions(full_state_dict=True),
    )


def full_model_state(model: torch.nn.Module) -> dict | None:
    """A sharded model's full weights on rank 0's CPU (collective; {} on other ranks),
    or None when the model is not sharded."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import (  # optional: sharded models only
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
