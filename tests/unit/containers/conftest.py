"""containers/ is a folder of files run inside the NGC images, not a package: its
modules are loaded from their paths, as gpu-check.sh and the Dockerfile run them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CONTAINERS = Path(__file__).resolve().parents[3] / "containers"


def _load(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CONTAINERS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def nemo_stack():
    return _load("nemo_stack")


@pytest.fixture
def gpu_check():
    return _load("gpu_check")
