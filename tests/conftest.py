import os
from pathlib import Path

import pytest

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
def runs(tmp_path):
    return tmp_path / "runs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
