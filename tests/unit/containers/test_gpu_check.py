"""containers/gpu_check.py without a GPU: the versions come first, then one line per stage kind,
built from real runs of the NVIDIA scripts a job spec calls (here: small stand-ins on disk)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
ANSWERS = "import argparse\nargparse.ArgumentParser().parse_args()\n"
GONE = "from nemo.collections.nlp.data import indexed_dataset\n"


def nemo_tree(root: Path) -> Path:
    """A NeMo checkout whose tokenizer script imports a collection that is gone, and a converter that works."""
    (root / "scripts/nlp_language_modeling").mkdir(parents=True)
    (root / "scripts/checkpoint_converters").mkdir(parents=True)
    (root / "scripts/nlp_language_modeling/preprocess_data_for_megatron.py").write_text(GONE)
    (root / "scripts/checkpoint_converters/convert_llama_nemo_to_hf.py").write_text(ANSWERS)
    return root


def spec(kind: str, backend: str, prepare: list, finish: list) -> dict:
    return {
        "kind": kind,
        "backend": backend,
        "steps": {"prepare": prepare, "train": ["$DIST", "$JOB_DIR/job.py", "run"], "finish": finish},
    }


TOKENIZE = ["python", "$NEMO_DIR/scripts/nlp_language_modeling/preprocess_data_for_megatron.py", "--input", "x"]
IMPORT = ["python", "$JOB_DIR/job.py", "import", "$JOB_DIR/config.yaml"]
EXPORT = ["python", "$NEMO_DIR/scripts/checkpoint_converters/convert_llama_nemo_to_hf.py", "--input_name_or_path", "y"]
FINALIZE = ["python", "-m", "factory.engines.nemo.finalize", "$JOB_DIR/manifest.template.json"]


def test_only_nvidia_scripts_are_taken_from_a_spec(gpu_check, tmp_path):
    s = spec("sft", "aligner", [TOKENIZE, IMPORT], [EXPORT, FINALIZE])
    s["steps"]["train"] = ["$DIST", "$ALIGNER_DIR/examples/nlp/gpt/train_gpt_sft.py", "trainer.devices=8"]
    found = gpu_check.nvidia_scripts(s, tmp_path / "NeMo", tmp_path / "Aligner")
    assert found == [
        tmp_path / "NeMo/scripts/nlp_language_modeling/preprocess_data_for_megatron.py",
        tmp_path / "Aligner/examples/nlp/gpt/train_gpt_sft.py",
        tmp_path / "NeMo/scripts/checkpoint_converters/convert_llama_nemo_to_hf.py",
    ]


def test_a_script_answers_help_or_says_why_not(gpu_check, tmp_path):
    nemo = nemo_tree(tmp_path)
    assert gpu_check.script_answers(nemo / "scripts/checkpoint_converters/convert_llama_nemo_to_hf.py") is None
    why = gpu_check.script_answers(nemo / "scripts/nlp_language_modeling/preprocess_data_for_megatron.py")
    assert why == "preprocess_data_for_megatron.py --help: exit 1: ModuleNotFoundError: No module named 'nemo'"
    assert gpu_check.script_answers(nemo / "scripts/absent.py") == f"{nemo / 'scripts/absent.py'} missing"


def test_one_line_per_stage_kind_of_the_image(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "NEMO_DIR", nemo_tree(tmp_path / "NeMo"))
    specs = [
        (tmp_path / "correct.yaml", spec("correct", "nemo2", [TOKENIZE, IMPORT], [FINALIZE])),
        (tmp_path / "prune.yaml", spec("prune", "nemo2", [IMPORT], [EXPORT, FINALIZE])),
        (tmp_path / "sft.yaml", spec("sft", "aligner", [], [EXPORT])),  # another image's job: not counted here
    ]
    lines = [r.line() for r in gpu_check.run_checks("nemo", specs, tiny=False)]
    assert lines == [
        "FAIL  correct  preprocess_data_for_megatron.py --help: exit 1: ModuleNotFoundError: No module named 'nemo'",
        "ok    prune    convert_llama_nemo_to_hf.py --help ok",
        "skip  distill  nothing checked (give its job spec: runs/*/.nemo/*/config.yaml)",
    ]


def test_the_command_prints_versions_first_then_a_line_per_stage(tmp_path):
    nemo = nemo_tree(tmp_path / "NeMo")
    specs = []
    for name, s in {
        "correct": spec("correct", "nemo2", [TOKENIZE, IMPORT], [FINALIZE]),
        "prune": spec("prune", "nemo2", [IMPORT], [EXPORT, FINALIZE]),
        "dpo": spec("dpo", "aligner", [], [EXPORT]),
    }.items():
        path = tmp_path / f"{name}.config.yaml"
        path.write_text(yaml.safe_dump(s))
        specs.append(str(path))
    env = {**os.environ, "NEMO_DIR": str(nemo), "FACTORY_NEMO_STACK": "nemo", "GPU_CHECK_TINY": "0"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "containers/gpu_check.py"), *specs], capture_output=True, text=True, env=env
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stderr
    assert lines[0] == "image: nemo (stage kinds correct, prune, distill)"
    assert [ln.split()[0] for ln in lines[1:4]] == ["nemo-toolkit", "nvidia-modelopt", "megatron-core"]
    verdict = next(i for i, ln in enumerate(lines) if " nemo image: " in ln)
    assert lines[verdict].startswith("FAIL  nemo image: nemo-toolkit not installed (pinned 2.7.3)")
    stages = [ln.split()[:2] for ln in lines[verdict + 1 :]]
    assert stages == [["FAIL", "correct"], ["ok", "prune"], ["skip", "distill"], ["skip", "dpo"]]
    assert lines[-1] == f"skip  dpo      {tmp_path / 'dpo.config.yaml'}: runs in the aligner image"
