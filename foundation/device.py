"""Devices and numeric precision: which device a setting names, fp32 matmul
precision for a block of work, and the peak memory a run reached."""

from __future__ import annotations

import resource
from contextlib import contextmanager

import torch

from foundation.configs import require

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_device(device: str, where: str) -> None:
    require(
        device in ("auto", "cpu", "cuda") or device.startswith("cuda:"),
        where,
        "device",
        f"expected auto, cpu, cuda or cuda:N, got {device!r}",
    )


def resolve_device(device: str) -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def matmul_precision(mode: str):
    """Set torch's fp32 matmul precision (CPU oneDNN and CUDA) for the duration."""
    old = torch.get_float32_matmul_precision()
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    old_cpu = getattr(mkldnn, "fp32_precision", None) if mkldnn is not None else None
    torch.set_float32_matmul_precision(mode)
    if old_cpu is not None:
        mkldnn.fp32_precision = "bf16" if mode == "medium" else "ieee"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)
        if old_cpu is not None:
            mkldnn.fp32_precision = old_cpu


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
