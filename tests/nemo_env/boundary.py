"""Helpers of the run-to-the-GPU-boundary checks (tests/nemo_env/test_gpu_boundary.py).

Tiny random checkpoints shaped like the paper's models, the paper recipes
shrunk onto them, the job dirs the nemo engine renders for them, and a driver
that executes a job's steps on the CPU and records where each one stops.
Imports nothing heavy at module level: the main suite may collect this file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "recipes" / "paper"
DATA = ROOT / "recipes" / "data"

# The paper's architectures at toy size. Llama-3.1: llama3 rope scaling, GQA, untied.
# Mistral-NeMo: head_dim 32 with hidden 192 / 4 heads (as 128 vs 5120 / 32), no sliding
# window, untied; its width pruning to 128 makes head_dim x heads = hidden, as 4096 does.
ARCHS = {
    "llama31": {
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 256,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
    },
    "mistral_nemo": {
        "model_type": "mistral",
        "hidden_size": 192,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 256,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
    },
}
# paper recipe -> (architecture, the prune stage's targets at toy size)
RECIPES = {
    "llama31-minitron-4b-width": ("llama31", {"target_hidden_size": 64, "target_ffn_hidden_size": 128}),
    "llama31-minitron-4b-depth": ("llama31", {"drop_layers": [1, 2], "target_num_layers": 2}),
    "mn-minitron-8b": ("mistral_nemo", {"target_hidden_size": 128, "target_ffn_hidden_size": 256}),
}
TRAIN = {"seq_len": 32, "batch_size": 2, "grad_accum": 1, "max_tokens": 128, "eval_tokens": 64}
TRAIN.update({"eval_every": 2, "checkpoint_every": 2})
ALIGN = {"seq_len": 64, "batch_size": 2, "grad_accum": 1}
SHRINK = {
    "correct": TRAIN,
    "distill": TRAIN,
    "sft": {**ALIGN, "eval_conversations": 2},
    "dpo": {**ALIGN, "eval_pairs": 2},
}


def save_checkpoint(config: dict, out: Path, seed: int = 0) -> Path:
    """A random HF checkpoint of ``config`` with the factory's byte-level tokenizer."""
    import torch  # heavy: only building checkpoints needs it
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM  # heavy: likewise

    from factory.sources.tiny import VOCAB_SIZE, byte_tokenizer

    params = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "torch_dtype", "dtype")}
    params.update(vocab_size=VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    hf_config = CONFIG_MAPPING[config["model_type"]](**params)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_config)
    model.save_pretrained(out)
    byte_tokenizer().save_pretrained(out)
    return out


def tiny_recipe(name: str, teacher: Path) -> dict:
    """The paper recipe ``name`` on a tiny teacher: the same stages, kinds, engines and
    losses, with toy sizes, one GPU per job and the project's small local data sets."""
    raw = yaml.safe_load((PAPER / f"{name}.yaml").read_text())
    _, prune = RECIPES[name]
    raw["models"] = {"teacher": {"path": str(teacher)}}
    own = "CC0-1.0 (written for this project)"
    raw["datasets"] = {
        "corpus": {"path": str(DATA / "smoke.txt"), "doc_chars": 400, "licence": own},
        "chats": {"path": str(DATA / "smoke-chat.jsonl"), "format": "chat", "licence": own},
        "preferences": {"path": str(DATA / "smoke-pairs.jsonl"), "format": "preference", "licence": own},
    }
    one = {"nodes": 1, "gpus_per_node": 1, "tensor_parallel": 1, "pipeline_parallel": 1}
    raw["nemo"] = {**raw["nemo"], **one, "workers": 1, "stages": {}}
    stages = {}
    for stage, cfg in raw["stages"].items():
        if cfg["kind"] == "evaluate":
            continue  # native under every engine; nothing of NeMo's runs
        cfg = dict(cfg, **SHRINK.get(cfg["kind"], {}))
        if cfg["kind"] == "prune":
            for key in ("target_hidden_size", "target_ffn_hidden_size", "drop_layers", "target_num_layers"):
                cfg.pop(key, None)
            cfg.update(prune)
            cfg["calibration"] = {"data": "corpus", "samples": 4, "seq_len": 32, "batch_size": 2, "heldout_samples": 2}
        stages[stage] = cfg
    raw["stages"] = stages
    return raw


def render_run(name: str, teacher: Path, root: Path) -> tuple[object, Path, dict]:
    """Render every nemo job of the tiny recipe as ``factory run --engine nemo`` does, then
    do the host's part (sources linked, data exported) and put the HF checkpoint each
    stage would produce where the next one reads it (random weights of the planned shape).
    Returns the recipe, the run dir and {stage: job dir}."""
    from factory.engines.base import SourceHashes, handles
    from factory.engines.nemo import prepare
    from factory.engines.nemo.executor import NemoExecutor
    from factory.recipe import load_recipe

    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(name, teacher), sort_keys=False))
    recipe = load_recipe(path)
    run_dir = (root / "runs" / recipe.name).resolve()
    executor, hashes = NemoExecutor(recipe), SourceHashes(recipe)
    jobs = {}
    for stage in recipe.stages:
        if not handles(NemoExecutor, recipe, stage):
            continue
        spec, job_dir = executor.render(stage, run_dir, hashes)
        prepare.materialize_sources(recipe, stage, run_dir, hashes)
        prepare.export_data(recipe, spec, run_dir)
        jobs[stage] = job_dir
    for stage in recipe.stages:
        if not (run_dir / stage / "config.json").is_file():
            save_checkpoint(executor.shapes[stage], run_dir / stage)
    return recipe, run_dir, jobs


def job_env(job_dir: Path, run_dir: Path, nemo_src: Path, aligner_src: Path) -> dict:
    """The variables run.sh sets before its steps."""
    env = dict(os.environ)
    env.update(
        JOB_DIR=str(job_dir),
        RUN_DIR=str(run_dir),
        NEMO_DIR=str(nemo_src),
        ALIGNER_DIR=str(aligner_src),
        PYTHONPATH=os.pathsep.join([str(job_dir), str(ROOT)]),
        CUDA_VISIBLE_DEVICES="",
    )
    return env


def expand(argv: list[str], env: dict) -> list[str]:
    """A step's words as bash expands them (only the job's $VARS appear in them)."""
    out = []
    for word in argv:
        for var in ("JOB_DIR", "RUN_DIR", "NEMO_DIR", "ALIGNER_DIR"):
            word = word.replace(f"${var}", env[var])
        out.append(word)
    return out


def python_argv(argv: list[str]) -> list[str] | None:
    """``python X ...`` / ``$DIST X ...`` -> [X, ...] (Slurm runs train with DIST=python);
    None for anything else."""
    if argv and argv[0] in ("python", "$DIST"):
        return argv[1:]
    return None


DRIVER = ROOT / "tests" / "nemo_env" / "run_steps.py"


def run_steps(steps: list[tuple[str, list[str], dict]], env: dict, out: Path, timeout: int = 1800) -> dict:
    """Execute ``steps`` ([(label, argv after python, env of the step)]) in one NeMo process
    (run_steps.py), each as ``python argv`` would; returns {"cpu_stack": [...], "steps": [...]}."""
    plan = out.with_suffix(".plan.json")
    plan.write_text(json.dumps(steps))
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(plan), str(out)],
        env=env,
        cwd=env["RUN_DIR"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if not out.is_file():
        raise AssertionError(f"the step driver died (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())
