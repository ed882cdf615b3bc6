"""What the nemo engine can and cannot do, checked when a recipe is loaded.

Each rule names the NVIDIA component that imposes it, so the one-line error
says why (and what to change) before a job ever reaches a cluster."""

from __future__ import annotations

import math
from pathlib import Path

from factory.pruning.arch import WIDTH_TARGETS
from factory.shapes import first_model
from factory.sources.models import peek_config
from foundation.errors import ConfigError

JOBS = ("correct", "prune", "distill", "sft", "dpo")
# Kinds that only read and write artifacts (tokenize: on the submitting host, streaming, in worker
# processes): they run natively under every engine.
NATIVE_ANYWHERE = ("evaluate", "gate", "generate", "pairs", "release", "tokenize")

# HF model_type -> (NeMo 2 model class, config class) whose "hf" importer/exporter converts it.
# The importer reads the shape from config.json; the config only has to be a complete one of the
# family (the bare LlamaConfig / Qwen2Config have zero heads and cannot be built).
NEMO2_MODELS = {
    "llama": ("LlamaModel", "Llama31Config8B"),
    "mistral": ("MistralModel", "MistralConfig7B"),
    "qwen2": ("Qwen2Model", "Qwen2Config7B"),
    "qwen3": ("Qwen3Model", "Qwen3Config8B"),
}
# HF model_type -> stem of NeMo's scripts/checkpoint_converters/convert_<stem>_{hf_to_nemo,nemo_to_hf}.py,
# which make the .nemo files NeMo-Aligner trains.
ALIGNER_CONVERTERS = {"llama": "llama", "mistral": "mistral_7b", "qwen2": "qwen2"}
# The ModelOpt that nemo-toolkit 2.7.3 pins (scripts/nemo-env.lock); containers/Dockerfile.nemo installs
# exactly it over the NGC image (nemo:26.02 itself ships 0.41).
MODELOPT_VERSION = "0.37.0"
# mcore_minitron searches hidden and MLP widths in steps of this (ModelOpt 0.37, pinned by NeMo 2.7.3).
MODELOPT_WIDTH_DIVISOR = 64
# mcore_minitron prunes query groups (together with the head count) before this ModelOpt release.
QUERY_GROUP_PRUNING_UNTIL = "0.41"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.37.0"`` -> ``(0, 37, 0)``; a pre-release suffix on a part is dropped."""
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in version.split("."))


def prunes_query_groups(modelopt_version: str = MODELOPT_VERSION) -> bool:
    """Whether that ModelOpt's mcore_minitron can change the number of query groups."""
    return version_tuple(modelopt_version) < version_tuple(QUERY_GROUP_PRUNING_UNTIL)


def input_shape(ref: str, stages: dict, models: dict, shapes: dict, base: Path) -> dict | None:
    """The config.json a stage reads for ``ref``: an earlier stage's output shape, or a source's."""
    return shapes.get(ref) if ref in stages else peek_config(models[ref], base)


def check_recipe(stage_engines: dict, settings, stages: dict, models: dict, shapes: dict, base: Path) -> None:
    for name, cfg in stages.items():
        if stage_engines[name] != "nemo" or cfg.kind in NATIVE_ANYWHERE:
            continue
        where = f"stages.{name}"
        if cfg.kind not in JOBS:
            raise ConfigError(
                f"{where}.kind",
                f"the nemo engine has no job for stage kind {cfg.kind!r} (jobs: "
                f"{', '.join(JOBS)}; {', '.join(NATIVE_ANYWHERE)} run natively); "
                f"set engines.{name}: native",
            )
        if getattr(cfg, "eval_at_tokens", None):
            raise ConfigError(
                f"{where}.eval_at_tokens",
                "NeMo's trainers validate every val_check_interval steps only (eval_every); "
                f"use eval_every, or set engines.{name}: native",
            )
        res = settings.resources(name)
        _check_parallel(res, where, name)
        if res.nodes > 1 and settings.launcher != "slurm":
            raise ConfigError(
                "nemo.launcher",
                f"{settings.launcher} starts jobs on one node, and stage {name} asks "
                f"for {res.nodes}; use nemo.launcher=slurm or nemo.nodes=1",
            )
        src = input_shape(first_model(cfg), stages, models, shapes, base)
        CHECKS[cfg.kind](cfg, src, res, where, lambda ref: input_shape(ref, stages, models, shapes, base))


def _check_parallel(res, where: str, stage: str) -> None:
    if res.world % (res.tensor_parallel * res.pipeline_parallel):
        raise ConfigError(
            f"nemo.stages.{stage}",
            f"{res.world} GPUs do not split into tensor_parallel "
            f"{res.tensor_parallel} x pipeline_parallel {res.pipeline_parallel}",
        )


def _check_batch(cfg, res, where: str, stage_label: str) -> None:
    """The recipe's batch_size x grad_accum is the global batch; Megatron needs it
    to be a whole number of micro-batches on every data-parallel rank."""
    gbs = cfg.batch_size * cfg.grad_accum
    per_step = res.micro_batch_size * res.data_parallel
    if gbs % per_step:
        raise ConfigError(
            f"{where}.batch_size",
            f"global batch {gbs} (batch_size x grad_accum) is not a multiple of "
            f"micro_batch_size {res.micro_batch_size} x {res.data_parallel} "
            f"data-parallel ranks, as {stage_label} requires",
        )


def _model_type(src: dict | None, where: str, table: dict, what: str, key: str = "model") -> None:
    if src is None:
        return  # unknown offline (a hub model outside the known table): the job checks at run time
    mt = src.get("model_type")
    if mt not in table:
        raise ConfigError(
            f"{where}.{key}", f"{what} has no converter for model_type {mt!r} (supported: {', '.join(table)})"
        )


def check_correct(cfg, src, res, where, shape_of) -> None:
    _model_type(src, where, NEMO2_MODELS, "NeMo 2's HF importer")
    _check_batch(cfg, res, where, "NeMo's Megatron trainer")


def check_query_groups(cfg, src, where: str, modelopt_version: str = MODELOPT_VERSION) -> None:
    """A query-group target is refused only where that ModelOpt cannot prune groups (recipe
    validation has already checked that the heads split into the groups)."""
    groups = src.get("num_key_value_heads") or src.get("num_attention_heads") if src else None
    want = cfg.target_num_query_groups
    if want is None or want == groups:
        return
    if not prunes_query_groups(modelopt_version):
        raise ConfigError(
            f"{where}.target_num_query_groups",
            f"ModelOpt {modelopt_version}'s mcore_minitron does not prune query groups (it did before "
            f"{QUERY_GROUP_PRUNING_UNTIL}); keep the source's {groups if groups is not None else 'count'} "
            "or use engine native for this stage",
        )


def check_prune(cfg, src, res, where, shape_of) -> None:
    _model_type(src, where, NEMO2_MODELS, "NeMo 2's HF importer")
    if cfg.target_params is not None:
        raise ConfigError(
            f"{where}.target_params",
            "the nemo engine prunes to explicit targets (ModelOpt "
            "mcore_minitron's export_config); run the budget search "
            "natively or set target_* keys",
        )
    if cfg.importance_aggregation != "l2":
        raise ConfigError(
            f"{where}.importance_aggregation",
            "ModelOpt mcore_minitron aggregates importance with the L2 norm over the batch only; use l2",
        )
    check_query_groups(cfg, src, where)
    width = [k for k in WIDTH_TARGETS if getattr(cfg, k) is not None]
    if cfg.drop_layers is not None and width:
        raise ConfigError(
            f"{where}.drop_layers",
            f"NeMo's PruningConfig takes drop_layers alone, not with {width[0]}; "
            "split width and depth into two prune stages",
        )
    for key in ("target_hidden_size", "target_ffn_hidden_size"):
        v = getattr(cfg, key)
        if v is not None and v % MODELOPT_WIDTH_DIVISOR:
            raise ConfigError(
                f"{where}.{key}",
                f"{v} is not a multiple of {MODELOPT_WIDTH_DIVISOR}, the width step "
                "of ModelOpt mcore_minitron's search space",
            )
    if cfg.target_num_layers is not None and cfg.drop_layers is None:
        if cfg.depth_criterion == "lm_loss":
            raise ConfigError(
                f"{where}.depth_criterion",
                "ModelOpt ranks single layers, not contiguous blocks by "
                "held-out loss: give drop_layers, or depth_criterion "
                "block_influence or last",
            )
        if cfg.depth_criterion == "last" and src is None:
            raise ConfigError(
                f"{where}.depth_criterion", "last needs the source's layer count, unknown offline; give drop_layers"
            )
    if res.tensor_parallel != 1 or res.data_parallel != 1:
        raise ConfigError(
            f"nemo.stages.{where.split('.', 1)[1]}",
            "NeMo's llm.prune needs tensor_parallel 1 and "
            f"one data-parallel rank: set pipeline_parallel to the GPU count ({res.world})",
        )


def check_distill(cfg, src, res, where, shape_of) -> None:
    _model_type(src, where, NEMO2_MODELS, "NeMo 2's HF importer", key="student")
    rules = (
        ("kd_loss", cfg.kd_loss == "forward_kl", "NeMo's LogitsKLLoss is the forward KL"),
        ("temperature", cfg.temperature == 1.0, "NeMo's distillation config has no temperature (it uses 1)"),
        ("top_k", cfg.top_k is None, "NeMo distils the full vocabulary"),
        (
            "lm_loss_scale",
            cfg.skip_lm_loss or cfg.lm_loss_scale == 1.0,
            "NeMo weighs the LM loss 1 and scales the KD loss to it",
        ),
        (
            "intermediate_loss_scale",
            not cfg.intermediate_layer_pairs or cfg.intermediate_loss_scale == 1.0,
            "NeMo scales intermediate losses to the logit loss dynamically",
        ),
    )
    for key, ok, why in rules:
        if not ok:
            raise ConfigError(f"{where}.{key}", f"{getattr(cfg, key)!r} is not available on the nemo engine: {why}")
    teacher = shape_of(cfg.teacher)
    if src is not None and teacher is not None and src.get("vocab_size") != teacher.get("vocab_size"):
        raise ConfigError(
            f"{where}.teacher",
            f"vocabulary {teacher.get('vocab_size')} differs from the student's "
            f"{src.get('vocab_size')}; logit distillation needs one tokenizer",
        )
    _check_batch(cfg, res, where, "NeMo's Megatron trainer")


def _check_aligner_model(src, where: str) -> None:
    _model_type(src, where, ALIGNER_CONVERTERS, "NeMo's .nemo checkpoint converter for NeMo-Aligner")
    if src is None:
        return
    heads, hidden = src["num_attention_heads"], src["hidden_size"]
    head_dim = src.get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        raise ConfigError(
            f"{where}.model",
            f"NeMo's .nemo converters for NeMo-Aligner derive head_dim from "
            f"hidden_size / num_attention_heads ({hidden} / {heads}), but this model "
            f"has head_dim {head_dim}; set engines.{where.split('.')[-1]}: native",
        )


def check_sft(cfg, src, res, where, shape_of) -> None:
    _check_aligner_model(src, where)
    _check_batch(cfg, res, where, "NeMo-Aligner")


def check_dpo(cfg, src, res, where, shape_of) -> None:
    _check_aligner_model(src, where)
    if cfg.label_smoothing:
        raise ConfigError(f"{where}.label_smoothing", "NeMo-Aligner's DPO has no label smoothing; use 0")
    if cfg.epochs > 1 and cfg.epochs != math.floor(cfg.epochs):
        raise ConfigError(f"{where}.epochs", f"{cfg.epochs}: NeMo-Aligner runs whole epochs (or a fraction of one)")
    _check_batch(cfg, res, where, "NeMo-Aligner")


CHECKS = {"correct": check_correct, "prune": check_prune, "distill": check_distill, "sft": check_sft, "dpo": check_dpo}
