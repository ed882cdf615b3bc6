import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


@pytest.fixture(autouse=True, scope="session")
def _tiny_cache(tmp_path_factory):
    """Tiny models are built into a per-session cache; packaged downloads keep the
    user's cache (set FACTORY_CACHE to move it) so slow tests fetch once."""
    if "FACTORY_CACHE" not in os.environ:
        os.environ["FACTORY_CACHE"] = str(Path.home() / ".cache" / "factory")
    yield


@pytest.fixture
def cpu_only(monkeypatch):
    """Keep a test, and the processes it starts, on the CPU. For bitwise claims (a resumed
    run ends with the uninterrupted run's weights; two ranks follow one) and for gloo:
    CUDA's attention backward accumulates with atomics, so two GPU runs differ in the last bits."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
