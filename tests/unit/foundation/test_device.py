"""foundation.device: device settings checked with the YAML key in the error,
``auto`` resolved from what the machine has, fp32 matmul precision set for a
block and put back, and the peak memory a process reached."""

import pytest
import torch

from foundation.device import DTYPES, check_device, matmul_precision, peak_memory_gib, resolve_device
from foundation.errors import ConfigError


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_known_devices_pass(device):
    check_device(device, "stages.distill")


@pytest.mark.parametrize("device", ["gpu", "tpu", "CPU", "", "mps"])
def test_unknown_device_names_the_key_and_the_value(device):
    with pytest.raises(ConfigError) as e:
        check_device(device, "stages.distill")
    assert e.value.where == "stages.distill.device"
    assert str(e.value) == f"stages.distill.device: expected auto, cpu, cuda or cuda:N, got {device!r}"


def test_unknown_device_at_the_top_level_is_just_the_key():
    with pytest.raises(ConfigError) as e:
        check_device("xla", "")
    assert e.value.where == "device"


def test_explicit_devices_resolve_as_named():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_auto_is_the_cpu_without_a_gpu_and_the_gpu_with_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def _cpu_precision():
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return getattr(mkldnn, "fp32_precision", None) if mkldnn is not None else None


@pytest.fixture
def highest():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def test_matmul_precision_is_set_inside_and_restored_after(highest):
    cpu_before = _cpu_precision()
    with matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
        if cpu_before is not None:
            assert _cpu_precision() == "bf16"
    assert torch.get_float32_matmul_precision() == "highest"
    assert _cpu_precision() == cpu_before
    with matmul_precision("high"):
        assert torch.get_float32_matmul_precision() == "high"
        if cpu_before is not None:
            assert _cpu_precision() == "ieee"  # only "medium" lets oneDNN use bf16
    assert torch.get_float32_matmul_precision() == "highest"


def test_matmul_precision_is_restored_when_the_block_raises(highest):
    cpu_before = _cpu_precision()
    with pytest.raises(RuntimeError, match="boom"):
        with matmul_precision("medium"):
            raise RuntimeError("boom")
    assert torch.get_float32_matmul_precision() == "highest"
    assert _cpu_precision() == cpu_before


def _proc_status_gib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (kB), in GiB."""
    with open("/proc/self/status") as f:
        (line,) = [x for x in f if x.startswith(field + ":")]
    return int(line.split()[1]) / 2**20


def test_peak_memory_on_cpu_is_the_peak_resident_size_in_gib():
    cpu = torch.device("cpu")
    before = peak_memory_gib(cpu)
    assert before > 0
    assert abs(before - _proc_status_gib("VmHWM")) < 0.05  # the kernel's own peak, same unit
    resident = _proc_status_gib("VmRSS")
    block = torch.ones(256 * 2**20 // 4)  # 256 MiB, touched
    assert block.sum().item() == block.numel()
    after = peak_memory_gib(cpu)
    assert after >= resident + 0.25 * 0.95  # the peak now holds what was resident plus the block
    del block


def test_dtype_names():
    assert DTYPES == {"float32": torch.float32, "bfloat16": torch.bfloat16}
