"""What a stage ran on, so that its wall time can be read against another machine's.

Two "2-core" CPU hosts can differ by 2-3x in fp32 throughput (AVX2 vs AVX-512 parts,
shared or dedicated cores), which makes a bare "took 40 minutes" meaningless. Each
manifest therefore carries the CPU, the threads torch used, the accelerators, and
a fraction-of-a-second fp32 matmul probe measured once per process.
"""

from __future__ import annotations

import functools
import os
import platform
import time


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 1024, seconds: float = 0.3) -> float:
    """fp32 matmul throughput of this process's torch threads, best of repeated [n, n] products
    within about ``seconds`` (after one warm-up product)."""
    import torch  # heavy: a manifest writer has it loaded already, `factory validate` never does

    g = torch.Generator().manual_seed(0)  # never the global RNG: stages' randomness must not depend on the probe
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        t = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return 2 * n**3 / best / 1e9


@functools.cache
def describe() -> dict:
    import torch  # heavy: see matmul_gflops

    info = {
        "cpu": _cpu_model(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "fp32_matmul_gflops": round(matmul_gflops(), 1),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def one_line(info: dict) -> str:
    gpus = f", {len(info['gpus'])}x {info['gpus'][0]}" if info.get("gpus") else ""
    return (
        f"{info.get('cpu', '?')}, {info.get('torch_threads', '?')} torch threads of {info.get('cpus', '?')} CPUs"
        f"{gpus}; fp32 matmul probe {info.get('fp32_matmul_gflops', '?')} GFLOP/s"
    )
