"""The nemo engine's jobs against the real NVIDIA code, without a GPU.

Runs only in the separate NeMo environment (``bash scripts/nemo-env.sh``, then
``make nemo-check``); in the project's own environment it is skipped. It reads
the golden job specs (tests/golden/nemo/, which the default suite keeps equal
to what the recipes generate) and

- builds every config object a NeMo 2 job builds (PruningConfig,
  DistillationConfig, OptimizerConfig, CosineAnnealingScheduler, Trainer,
  MegatronStrategy, PreTrainingDataModule, NeMoLogger, AutoResume) from them;
- checks every keyword the job script passes to llm.import_ckpt / llm.prune /
  llm.distill / llm.train / llm.export_ckpt against the real signatures;
- checks every NeMo-Aligner Hydra override against the code that reads it:
  Aligner's own sources for Aligner's keys (its wheel, unpacked by
  scripts/nemo-env.sh), NeMo's config dataclasses for exp_manager and
  optimiser keys, Lightning's Trainer for trainer keys.

So a renamed key or argument fails here, not on a cluster. The YAML files of
NeMo-Aligner's examples ship in neither its wheel nor its sdist: the Hydra
composition against them runs in the NGC image (containers/gpu-check.sh)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import sys
from pathlib import Path

import pytest
import yaml

llm = pytest.importorskip("nemo.collections.llm", reason="needs the NeMo environment (scripts/nemo-env.sh)")

from factory.engines.nemo import capabilities  # noqa: E402
from factory.engines.nemo.scripts import nemo2_job  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "tests" / "golden" / "nemo").glob("*/*.config.yaml"))
ALIGNER_VERSION = os.environ.get("ALIGNER_VERSION", "0.7.0")
ALIGNER_SRC = Path(os.environ.get("ALIGNER_SRC", Path(sys.prefix) / "share" / f"nemo-aligner-{ALIGNER_VERSION}"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


NEMO2 = [p for p in SPECS if load(p)["backend"] == "nemo2"]
ALIGNER = [p for p in SPECS if load(p)["backend"] == "aligner"]


def ids(p: Path) -> str:
    return f"{p.parent.name}/{p.name.split('.')[0]}"


def test_there_is_something_to_check():
    assert len(NEMO2) >= 9 and len(ALIGNER) >= 4, SPECS


class Tokenizer:
    """Stands in for the model's tokenizer: the data module only stores it until setup."""

    vocab_size = 128256
    eos_id = 0


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    return tmp_path


def _touch_tokens(data: dict, run_dir: Path) -> None:
    """Empty Megatron .bin/.idx files where the job's preprocessing step will write them."""
    for split in data["paths"].values():
        for prefix in split:
            if isinstance(prefix, str):
                path = Path(prefix.replace("$RUN_DIR", str(run_dir)))
                path.parent.mkdir(parents=True, exist_ok=True)
                for ext in (".bin", ".idx"):
                    path.with_suffix(ext).touch()


@pytest.mark.parametrize("path", NEMO2, ids=ids)
def test_nemo2_job_objects_build(path, run_dir):
    spec = load(path)
    n = spec["nemo2"]
    if "data" in n:
        _touch_tokens(n["data"], run_dir)
    objs = nemo2_job.build(spec, tokenizer=Tokenizer(), accelerator="cpu")
    if n["api"] == "llm.prune":
        from nemo.collections.llm.modelopt.prune.pruner import SUPPORTED_PRUNING_HPARAMS

        pc = objs["pruning_config"]
        assert {k: getattr(pc, k) for k in n["pruning_config"]} == n["pruning_config"]
        export = {k for k in SUPPORTED_PRUNING_HPARAMS if getattr(pc, f"target_{k}", None) is not None}
        import modelopt.torch.prune.plugins.mcore_minitron as minitron

        assert export <= minitron.SUPPORTED_HPARAMS
        if "data" in objs:
            assert objs["data"].global_batch_size == objs["data"].micro_batch_size  # llm.prune asserts it
        return
    t, o, s = n["trainer"], objs["optim"].config, objs["optim"].lr_scheduler
    assert objs["trainer"].max_steps == t["max_steps"] == s.max_steps
    assert (o.lr, o.min_lr, o.weight_decay, o.adam_beta2, o.clip_grad) == (
        n["optimizer"]["lr"],
        n["optimizer"]["min_lr"],
        n["optimizer"]["weight_decay"],
        n["optimizer"]["adam_beta2"],
        n["optimizer"]["clip_grad"],
    )
    assert (s.warmup_steps, s.min_lr, s.constant_steps) == (n["scheduler"]["warmup_steps"], n["scheduler"]["min_lr"], 0)
    strategy = objs["trainer"].strategy
    assert strategy.tensor_model_parallel_size == t["tensor_model_parallel_size"]
    data = objs["data"]
    assert (data.seq_length, data.global_batch_size, data.micro_batch_size) == (
        n["data"]["seq_length"],
        n["data"]["global_batch_size"],
        n["data"]["micro_batch_size"],
    )
    if n["api"] == "llm.distill":
        kd = objs["distillation"]
        assert (kd.skip_lm_loss, kd.kd_loss_scale, tuple(kd.logit_layers)) == (
            n["distillation"]["skip_lm_loss"],
            n["distillation"]["kd_loss_scale"],
            ("output_layer", "output_layer"),
        )


def _llm_calls() -> dict[str, set[str]]:
    """llm.<api>(keyword=...) calls of functions in the job script: api -> keywords."""
    tree = ast.parse(Path(nemo2_job.__file__).read_text())
    calls: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "llm"
            and node.func.attr[0].islower()
        ):  # classes are built for real by build()
            calls.setdefault(node.func.attr, set()).update(k.arg for k in node.keywords)
    return calls


def test_job_script_calls_match_the_nemo_api():
    calls = _llm_calls()
    assert set(calls) == {"import_ckpt", "prune", "distill", "train", "export_ckpt"}
    for api, keywords in calls.items():
        params = set(inspect.signature(getattr(llm, api)).parameters)
        assert keywords <= params, f"llm.{api} has no parameter {sorted(keywords - params)}"


@pytest.mark.parametrize("model_type", sorted(capabilities.NEMO2_MODELS))
def test_model_families_have_hf_connectors(model_type):
    from nemo.lightning.io.mixin import ConnectorMixin

    model_name, config_name = capabilities.NEMO2_MODELS[model_type]
    model_cls, config_cls = getattr(llm, model_name), getattr(llm, config_name)
    assert issubclass(model_cls, llm.GPTModel) and dataclasses.is_dataclass(config_cls)
    # the job builds model_cls(config_cls()); without Transformer Engine (this CPU env) rope fusion is off
    assert isinstance(model_cls(config_cls(apply_rope_fusion=False)), llm.GPTModel)
    assert str(model_cls) + "hf" in ConnectorMixin._IMPORTERS, f"no HF importer for {model_name}"
    assert str(model_cls) + "hf" in ConnectorMixin._EXPORTERS, f"no HF exporter for {model_name}"


def test_width_divisor_matches_modelopt():
    import modelopt.torch.prune.plugins.mcore_minitron as minitron

    rules = minitron.MCoreMinitronConfig().model_dump()["megatron.core.models.gpt.GPTModel"]["*"]
    assert rules["hidden_size_divisor"] == rules["ffn_hidden_size_divisor"] == capabilities.MODELOPT_WIDTH_DIVISOR


# -- NeMo-Aligner ------------------------------------------------------------------------------------

# Read by the example scripts (examples/nlp/gpt/train_gpt_*.py), which the wheel does not ship.
SCRIPT_KEYS = {"model.data.chat": "train_gpt_sft.py chooses the chat or the prompt-template dataset by it"}


def _aligner_names() -> tuple[set[str], dict[str, set[str]]]:
    """Every attribute name and string key read in NeMo-Aligner's sources, and per file
    the strings its code compares with (for the accepted values of a key)."""
    if not (ALIGNER_SRC / "nemo_aligner").is_dir():
        pytest.skip(f"NeMo-Aligner sources not at {ALIGNER_SRC} (run scripts/nemo-env.sh or set ALIGNER_SRC)")
    names, compared = set(), {}
    for path in (ALIGNER_SRC / "nemo_aligner").rglob("*.py"):
        strings = compared.setdefault(path.name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                names.add(str(node.slice.value))
            elif isinstance(node, ast.Compare):
                strings.update(
                    c.value for c in node.comparators if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
    return names, compared


def _authority(key: str, aligner: set[str]) -> tuple[set[str], str]:
    """The names a key's last part must be among, and where they come from."""
    from nemo.core.config import optimizers, schedulers
    from nemo.utils.exp_manager import CallbackParams, ExpManagerConfig

    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    if key.startswith("exp_manager.checkpoint_callback_params."):
        return fields(CallbackParams), "nemo.utils.exp_manager.CallbackParams"
    if key.startswith("exp_manager."):
        return fields(ExpManagerConfig), "nemo.utils.exp_manager.ExpManagerConfig"
    if key.startswith("model.optim.sched."):
        return fields(schedulers.CosineAnnealingParams), "nemo.core.config.schedulers.CosineAnnealingParams"
    if key.startswith("model.optim."):
        import torch

        return (
            fields(optimizers.AdamParams) | set(inspect.signature(torch.optim.AdamW).parameters),
            "NeMo's AdamParams / torch.optim.AdamW",
        )
    if key.count(".") == 1 and key.startswith("trainer."):
        import lightning.pytorch as pl

        return set(inspect.signature(pl.Trainer.__init__).parameters), "lightning Trainer"
    return aligner, f"NeMo-Aligner {ALIGNER_VERSION} sources"


def _override_keys(spec: dict) -> list[tuple[str, str]]:
    return [tuple(o.lstrip("+").split("=", 1)) for o in spec["steps"]["train"][2:]]


def unknown_keys(spec: dict, aligner: set[str]) -> list[str]:
    bad = []
    for key, _ in _override_keys(spec):
        if key in SCRIPT_KEYS:
            continue
        allowed, source = _authority(key, aligner)
        if key.rsplit(".", 1)[-1] not in allowed:
            bad.append(f"{key} (not in {source})")
    return bad


@pytest.mark.parametrize("path", ALIGNER, ids=ids)
def test_aligner_overrides_are_read_by_the_real_code(path):
    names, compared = _aligner_names()
    spec = load(path)
    assert spec["steps"]["train"][1].endswith(spec["aligner"]["script"])
    assert unknown_keys(spec, names) == []
    values = dict(_override_keys(spec))
    if "model.dpo.preference_loss" in values:
        assert values["model.dpo.preference_loss"] in compared["megatron_gpt_dpo_model.py"]


def test_a_renamed_key_is_caught():
    names, _ = _aligner_names()
    spec = load(ALIGNER[0])
    spec["steps"]["train"] = spec["steps"]["train"] + [
        "model.dpo.beta=0.1",
        "exp_manager.log_dir=/x",
        "model.optim.sched.warmup_fraction=0.1",
    ]
    assert unknown_keys(spec, names) == [
        "model.dpo.beta (not in NeMo-Aligner 0.7.0 sources)",
        "exp_manager.log_dir (not in nemo.utils.exp_manager.ExpManagerConfig)",
        "model.optim.sched.warmup_fraction (not in nemo.core.config.schedulers.CosineAnnealingParams)",
    ]
