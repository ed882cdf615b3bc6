"""Job specs: what each stage computes on NVIDIA's stack, as plain data.

A spec names the NeMo / ModelOpt / NeMo-Aligner objects and keys a job builds
(``PruningConfig`` fields, ``OptimizerConfig`` fields, Hydra overrides) with
the recipe's values mapped onto them, plus the shell steps around them: data
preparation and HF -> NeMo import before, NeMo -> HF export and the manifest
after. Paths are relative to ``$RUN_DIR`` (the recipe's run directory, as the
job sees it), so a spec is the same on every machine; the golden tests pin
them. ``render`` writes a spec to disk; ``launchers`` start it."""

from __future__ import annotations

import math

from factory.corpus.artifact import CORPUS_FORMAT
from factory.corpus.blend import Blend
from factory.corpus.feed import corpus_dir
from factory.engines.nemo.capabilities import ALIGNER_CONVERTERS, input_shape
from factory.pruning.arch import WIDTH_TARGETS
from factory.recipe import Recipe
from factory.shapes import first_model
from foundation.errors import FactoryError

NEMO_SCRIPTS = "$NEMO_DIR/scripts"
ALIGNER_SCRIPTS = "$ALIGNER_DIR/examples/nlp/gpt"
JOB = "$JOB_DIR/job.py"  # the rendered copy of factory/engines/nemo/scripts/nemo2_job.py
CHAT = "$JOB_DIR/render_chat.py"  # the rendered copy of factory/engines/nemo/scripts/render_chat.py
TOOLS = "$JOB_DIR/job_tools.py"  # the rendered copy of factory/engines/nemo/scripts/job_tools.py
FINALIZE = ["python", "-m", "factory.engines.nemo.finalize", "$JOB_DIR/manifest.template.json"]


def model_dir(recipe: Recipe, ref: str) -> str:
    """Where an input model's HF checkpoint lies, relative to the run dir."""
    return ref if ref in recipe.stages else f".sources/{ref}"


def work_dir(stage: str) -> str:
    return f".nemo/{stage}"


def _base(recipe: Recipe, stage: str, backend: str) -> dict:
    cfg = recipe.stages[stage]
    settings = recipe.engine_settings["nemo"]
    res = settings.resources(stage)
    return {
        "stage": stage,
        "kind": cfg.kind,
        "recipe": recipe.name,
        "engine": "nemo",
        "backend": backend,
        "image": settings.aligner_image if backend == "aligner" else settings.image,
        "resources": res.as_dict(),
        "seed": recipe.seed,
        "precision": settings.precision,
        "inputs": {f: model_dir(recipe, t) for f, (k, t) in recipe.stage_inputs(stage).items() if k == "model"},
        "work": work_dir(stage),
        "output": stage,
    }


def _data(recipe: Recipe, stage: str, field: str, fmt: str, eval_amount: dict) -> dict:
    """Chat or preference records a NeMo-Aligner job reads: exported by the host to jsonl before launch."""
    _, name = recipe.stage_inputs(stage)[field]
    work = work_dir(stage)
    return {
        "field": field,
        "dataset": name,
        "format": fmt,
        "train": f"{work}/data/train.jsonl",
        "valid": f"{work}/data/valid.jsonl",
        **eval_amount,
    }


def _field_value(cfg, field: str):
    """A (possibly nested, ``calibration.data``) config field's value."""
    for part in field.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _corpus_path(recipe: Recipe, name: str) -> str | None:
    """Where the tokenized corpus ``name`` lies (a ``tokenize`` stage's artifact, relative
    to the run dir, or a datasets: entry pointing at one, absolute), or None for a plain dataset."""
    if name in recipe.stages:
        return name if recipe.stages[name].kind == "tokenize" else None
    found = corpus_dir(recipe.datasets[name], recipe.base)
    return None if found is None else str(found.resolve())


def _corpora(recipe: Recipe, stage: str, field: str) -> list[dict] | None:
    """The tokenized corpora a stage's ``field`` names, each ``{name, weight, path}``, or
    None for a plain dataset (which the host prepare step tokenizes). A blend must name
    tokenized corpora only: a member that is not one is refused in one line."""
    value = _field_value(recipe.stages[stage], field)
    if not isinstance(value, Blend):
        path = _corpus_path(recipe, value)
        return None if path is None else [{"name": value, "weight": 1.0, "path": path}]
    out = []
    for i, (name, weight) in enumerate(zip(value.corpora, value.weights(), strict=True)):
        path = _corpus_path(recipe, name)
        if path is None:
            raise FactoryError(
                f"stages.{stage}.{field}.blend[{i}]: {name!r} is not a tokenized corpus "
                "(a blend reads `tokenize` stages or datasets: entries pointing at one)"
            )
        out.append({"name": name, "weight": weight, "path": path})
    return out


def _text_data(recipe: Recipe, stage: str, field: str, tokenizer: str, heldout_tokens: int, tokens: int) -> dict:
    """The corpus a NeMo 2 job reads, as Megatron indexed shards: the tokenized corpora
    the stage's ``field`` names, read as they are, or else the dataset, which the host
    prepare step tokenizes (streaming, in worker processes, resumable) into the job's
    ``tokens/`` dir, the first documents up to ``heldout_tokens`` held out as the
    ``tokenize`` stage does it, reading about ``tokens`` plus those held-out tokens of
    it. Either way the shards must have the ``tokenizer`` input's tokenizer."""
    corpora = _corpora(recipe, stage, field)
    data = {"field": field, "tokenizer": tokenizer, "heldout": heldout_tokens > 0}
    if corpora is not None:
        return {**data, "format": CORPUS_FORMAT, "corpora": corpora}
    _, name = recipe.stage_inputs(stage)[field]
    out = f"{work_dir(stage)}/tokens"
    return {
        **data,
        "format": "text",
        "dataset": name,
        "tokens": out,
        "heldout_tokens": heldout_tokens,
        "max_tokens": tokens + heldout_tokens,
        "corpora": [{"name": name, "weight": 1.0, "path": out}],
    }


def megatron_paths(data: dict) -> dict:
    """llm.PreTrainingDataModule ``paths``: per split a Megatron blend list
    ``[w1, corpus1, w2, corpus2, ...]`` with the weights normalised. Each entry is a
    tokenized-corpus dir; the job (``job_tools.megatron_blend``) replaces it with its
    shards, train shards for ``train`` and held-out shards for ``validation`` and
    ``test``, each weighted by its share of the corpus's tokens."""
    total = sum(c["weight"] for c in data["corpora"])

    def blend() -> list:
        out: list = []
        for c in data["corpora"]:
            path = c["path"] if c["path"].startswith("/") else f"$RUN_DIR/{c['path']}"
            out += [round(c["weight"] / total, 12), path]
        return out

    return {"train": blend(), "validation": blend(), "test": blend()}  # three lists: no YAML aliases


# -- NeMo 2 (correct, distill: Megatron training; prune: ModelOpt) -----------------------------------


def _schedule(cfg) -> dict:
    steps = cfg.total_steps
    return {
        "max_steps": steps,
        "warmup_steps": int(cfg.warmup_ratio * steps),
        "lr": cfg.lr,
        "min_lr": cfg.lr * cfg.min_lr_ratio,
    }


def _trainer(cfg, res, precision: str) -> dict:
    gbs = cfg.batch_size * cfg.grad_accum
    steps = cfg.total_steps
    return {
        "devices": res.gpus_per_node,
        "num_nodes": res.nodes,
        "max_steps": steps,
        "val_check_interval": cfg.eval_every or steps,
        "limit_val_batches": max(1, math.ceil(cfg.eval_tokens / (cfg.seq_len * gbs))),
        "log_every_n_steps": cfg.log_every,
        "precision": precision,
        "tensor_model_parallel_size": res.tensor_parallel,
        "pipeline_model_parallel_size": res.pipeline_parallel,
        "sequence_parallel": res.tensor_parallel > 1,
        "checkpoint_every_n_steps": cfg.checkpoint_every or steps,
    }


def _optimizer(cfg, precision: str) -> dict:
    """megatron.core.optimizer.OptimizerConfig fields (Adam with decoupled weight decay = AdamW)."""
    sched = _schedule(cfg)
    return {
        "optimizer": "adam",
        "lr": cfg.lr,
        "min_lr": sched["min_lr"],
        "weight_decay": cfg.weight_decay,
        "adam_beta1": cfg.adam_beta1,
        "adam_beta2": cfg.adam_beta2,
        "adam_eps": cfg.adam_eps,
        "clip_grad": cfg.grad_clip,
        "bf16": precision == "bf16-mixed",
        "fp16": precision == "16-mixed",
        "use_distributed_optimizer": True,
    }


def _scheduler(cfg) -> dict:
    """nemo.lightning.pytorch.optim.CosineAnnealingScheduler arguments: linear warmup, cosine to min_lr."""
    s = _schedule(cfg)
    return {"max_steps": s["max_steps"], "warmup_steps": s["warmup_steps"], "constant_steps": 0, "min_lr": s["min_lr"]}


def _pretraining_data(cfg, res, seed: int, data: dict, work: str) -> dict:
    """llm.PreTrainingDataModule arguments over the train and held-out shards of the corpora."""
    return {
        "paths": megatron_paths(data),
        "split": None,  # the three splits are given: no split of one blend
        "seq_length": cfg.seq_len,
        "micro_batch_size": res.micro_batch_size,
        "global_batch_size": cfg.batch_size * cfg.grad_accum,
        "seed": seed,
        "index_mapping_dir": f"$RUN_DIR/{work}/index",
    }


def _nemo2_steps(spec: dict, tokenize: list) -> dict:
    """prepare and finish run once; train runs under the launcher's distributed
    prefix ($DIST: torchrun on one node, one task per GPU under srun)."""
    return {
        "prepare": tokenize + [["python", JOB, "import", "$JOB_DIR/config.yaml"]],
        "train": ["$DIST", JOB, "run", "$JOB_DIR/config.yaml"],
        "finish": [["python", JOB, "export", "$JOB_DIR/config.yaml"], FINALIZE],
    }


def _imports(spec: dict) -> dict:
    """HF dir -> NeMo 2 checkpoint (llm.import_ckpt) for every input model."""
    return {field: f"{spec['work']}/nemo/{field}" for field in spec["inputs"]}


def correct_spec(recipe: Recipe, stage: str) -> dict:
    cfg = recipe.stages[stage]
    spec = _base(recipe, stage, "nemo2")
    spec["data"] = _training_data(recipe, stage, cfg, tokenizer="model")
    spec["nemo2"] = {"api": "llm.train", "imports": _imports(spec), "model": "model"}
    return _nemo2_training(spec, recipe, stage)


def distill_spec(recipe: Recipe, stage: str) -> dict:
    cfg = recipe.stages[stage]
    spec = _base(recipe, stage, "nemo2")
    spec["data"] = _training_data(recipe, stage, cfg, tokenizer="teacher")
    pairs = [[f"decoder.layers.{s}", f"decoder.layers.{t}"] for s, t in (cfg.intermediate_layer_pairs or [])]
    spec["nemo2"] = {
        "api": "llm.distill",
        "imports": _imports(spec),
        "student": "student",
        "teacher": "teacher",
        # nemo.collections.llm.modelopt.distill.utils.DistillationConfig, read from distillation_config_path
        "distillation": {
            "logit_layers": ["output_layer", "output_layer"],
            "intermediate_layer_pairs": pairs,
            "skip_lm_loss": cfg.skip_lm_loss,
            "kd_loss_scale": cfg.kd_loss_scale,
        },
    }
    return _nemo2_training(spec, recipe, stage)


def _training_data(recipe: Recipe, stage: str, cfg, tokenizer: str) -> dict:
    """The corpus of a NeMo 2 training job (correct, distill): held-out tokens as the
    native engine holds them out (whole ``seq_len`` blocks covering ``eval_tokens``)."""
    heldout = max(1, math.ceil(cfg.eval_tokens / cfg.seq_len)) * cfg.seq_len
    return _text_data(recipe, stage, "data", tokenizer, heldout, cfg.total_steps * cfg.tokens_per_step)


def _nemo2_training(spec: dict, recipe: Recipe, stage: str) -> dict:
    """What every NeMo 2 training job (llm.train, llm.distill) adds after its own keys:
    trainer, optimizer, schedule, the data module over the corpus's shards, checkpoints
    and the token budget."""
    cfg = recipe.stages[stage]
    settings = recipe.engine_settings["nemo"]
    res = settings.resources(stage)
    spec["nemo2"].update(
        {
            "trainer": _trainer(cfg, res, settings.precision),
            "optimizer": _optimizer(cfg, settings.precision),
            "scheduler": _scheduler(cfg),
            "data": _pretraining_data(cfg, res, recipe.seed, spec["data"], spec["work"]),
            "checkpoints": f"{spec['work']}/train",
        }
    )
    spec["tokens"] = cfg.total_steps * cfg.tokens_per_step
    spec["steps"] = _nemo2_steps(spec, [])  # the data is tokenized before the job starts
    return spec


def pruning_config(recipe: Recipe, stage: str, src: dict | None) -> dict:
    """nemo.collections.llm.modelopt.prune.PruningConfig fields (only those set)."""
    cfg = recipe.stages[stage]
    out = {}
    for key in sorted(WIDTH_TARGETS):  # the order of the rendered job (ffn, hidden, heads), kept stable
        if getattr(cfg, key) is not None:
            out[key] = getattr(cfg, key)
    if (cfg.target_num_query_groups is not None or "target_num_attention_heads" in out) and src is not None:
        # ModelOpt 0.37 takes heads and groups together: the one not pruned keeps the source's count
        out["target_num_query_groups"] = (
            cfg.target_num_query_groups or src.get("num_key_value_heads") or src["num_attention_heads"]
        )
        out.setdefault("target_num_attention_heads", src["num_attention_heads"])
        out = dict(sorted(out.items()))
    drop = cfg.drop_layers
    if drop is None and cfg.target_num_layers is not None and cfg.depth_criterion == "last":
        n = src["num_hidden_layers"]
        drop = list(range(cfg.target_num_layers, n))
    if drop is not None:
        out = {"drop_layers": [i + 1 for i in sorted(drop)]}  # NeMo / ModelOpt count layers from 1
    elif cfg.target_num_layers is not None:
        out["target_num_layers"] = cfg.target_num_layers
    return out


def prune_spec(recipe: Recipe, stage: str, src: dict | None) -> dict:
    cfg = recipe.stages[stage]
    settings = recipe.engine_settings["nemo"]
    res = settings.resources(stage)
    spec = _base(recipe, stage, "nemo2")
    pc = pruning_config(recipe, stage, src)
    c = cfg.calibration
    needs_data = "drop_layers" not in pc
    nemo2 = {
        "api": "llm.prune",
        "imports": _imports(spec),
        "model": "model",
        "pruning_config": pc,
        "devices": res.gpus_per_node,
        "num_nodes": res.nodes,
        "tp_size": res.tensor_parallel,
        "pp_size": res.pipeline_parallel,
        "num_train_samples": c.samples,
        "save_path": f"{spec['work']}/pruned",
    }
    if needs_data:
        # calibration reads training shards only: no held-out split (validation falls back to train shards)
        spec["data"] = _text_data(recipe, stage, "calibration.data", "model", 0, c.samples * c.seq_len)
        nemo2["data"] = {
            "paths": megatron_paths(spec["data"]),
            "split": None,
            "seq_length": c.seq_len,
            "micro_batch_size": c.batch_size,
            "global_batch_size": c.batch_size,
            "seed": recipe.seed,
            "index_mapping_dir": f"$RUN_DIR/{spec['work']}/index",
        }
    spec["nemo2"] = nemo2
    spec["tokens"] = c.samples * c.seq_len if needs_data else 0
    spec["steps"] = _nemo2_steps(spec, [])
    return spec


# -- NeMo-Aligner (sft, dpo) ---------------------------------------------------------------------------


def _aligner_common(cfg, res, spec: dict, trainer_key: str, settings) -> list[str]:
    work = spec["work"]
    return [
        f"trainer.num_nodes={res.nodes}",
        f"trainer.devices={res.gpus_per_node}",
        f"trainer.precision={'bf16' if settings.precision == 'bf16-mixed' else settings.precision}",
        f"trainer.{trainer_key}.gradient_clip_val={cfg.grad_clip}",
        f"trainer.{trainer_key}.save_interval={cfg.checkpoint_every or 1000000}",
        f"exp_manager.explicit_log_dir=$RUN_DIR/{work}/aligner",
        "exp_manager.create_wandb_logger=False",
        "exp_manager.checkpoint_callback_params.save_nemo_on_train_end=True",
        f"model.optim.lr={cfg.lr}",
        f"model.optim.weight_decay={cfg.weight_decay}",
        f"model.optim.betas=[{cfg.adam_beta1},{cfg.adam_beta2}]",
        f"model.optim.sched.min_lr={cfg.lr * cfg.min_lr_ratio}",
        "model.optim.sched.constant_steps=0",
        # NeMo's WarmupPolicy takes a ratio of max_steps instead of a step count (not both)
        "model.optim.sched.warmup_steps=null",
        f"++model.optim.sched.warmup_ratio={cfg.warmup_ratio}",
    ]


def _aligner_steps(spec: dict, converter: str, script: str, overrides: list[str], render: list[str]) -> dict:
    work = spec["work"]
    src = spec["inputs"]["model"]
    return {
        "prepare": [
            [
                "python",
                f"{NEMO_SCRIPTS}/checkpoint_converters/convert_{converter}_hf_to_nemo.py",
                "--input_name_or_path",
                f"$RUN_DIR/{src}",
                "--output_path",
                f"$RUN_DIR/{work}/model.nemo",
                "--precision",
                "bf16",
            ],
            render,
        ],
        "train": ["$DIST", f"{ALIGNER_SCRIPTS}/{script}", *overrides],
        "finish": [
            ["python", TOOLS, "find-nemo", f"$RUN_DIR/{work}/aligner", f"$RUN_DIR/{work}/trained.nemo"],
            export_argv(converter, f"$RUN_DIR/{work}", f"$RUN_DIR/{src}"),
            ["python", TOOLS, "carry-tokenizer", f"$RUN_DIR/{src}", f"$RUN_DIR/{work}/hf"],
            FINALIZE,
        ],
    }


def export_argv(converter: str, work: str, src: str) -> list[str]:
    """NeMo's ``convert_<converter>_nemo_to_hf.py`` call that writes the trained model to ``work/hf``.

    The converters do not share one command line. Llama's and Qwen2's write the
    state dict to ``--output_path`` and, given ``--hf_input_path`` (the input's HF
    directory, for config and tokenizer) and ``--hf_output_path``, a full HF
    directory. Mistral-7B's (used for every Mistral) accepts only
    ``--input_name_or_path --output_path --hf_model_name --precision``, saves a full
    HF directory at ``--output_path`` and reads config and tokenizer from
    ``--hf_model_name``, which defaults to a hub id: it gets the input's directory
    so nothing is fetched."""
    script = f"{NEMO_SCRIPTS}/checkpoint_converters/convert_{converter}_nemo_to_hf.py"
    head = ["python", script, "--input_name_or_path", f"{work}/trained.nemo"]
    if converter == "mistral_7b":
        return [*head, "--output_path", f"{work}/hf", "--hf_model_name", src, "--precision", "bf16"]
    weights = f"{work}/hf-weights/pytorch_model.bin"
    return [*head, "--output_path", weights, "--hf_input_path", src, "--hf_output_path", f"{work}/hf"]


def _converter(src: dict | None) -> str:
    return ALIGNER_CONVERTERS.get((src or {}).get("model_type", "llama"), "llama")


def sft_spec(recipe: Recipe, stage: str, src: dict | None) -> dict:
    cfg = recipe.stages[stage]
    settings = recipe.engine_settings["nemo"]
    res = settings.resources(stage)
    spec = _base(recipe, stage, "aligner")
    work = spec["work"]
    spec["data"] = _data(recipe, stage, "data", "chat", {"eval_records": cfg.eval_conversations})
    gbs = cfg.batch_size * cfg.grad_accum
    epochs = getattr(cfg, "epochs", None)
    # a token budget becomes a step budget over padded sequences (an upper bound on tokens seen)
    steps = -1 if epochs else cfg.total_steps
    overrides = _aligner_common(cfg, res, spec, "sft", settings) + [
        f"trainer.sft.max_epochs={math.ceil(epochs) if epochs else 1000}",
        f"trainer.sft.max_steps={steps}",
        f"trainer.sft.val_check_interval={cfg.eval_every or (steps if steps > 0 else 1000000)}",
        "trainer.sft.limit_val_batches=1.0",
        f"model.restore_from_path=$RUN_DIR/{work}/model.nemo",
        f"model.tensor_model_parallel_size={res.tensor_parallel}",
        f"model.pipeline_model_parallel_size={res.pipeline_parallel}",
        f"model.seed={recipe.seed}",
        "model.data.chat=False",
        f"model.data.train_ds.file_path=$RUN_DIR/{work}/data/train.aligner.jsonl",
        f"model.data.validation_ds.file_path=$RUN_DIR/{work}/data/valid.aligner.jsonl",
        f"model.data.train_ds.global_batch_size={gbs}",
        f"model.data.train_ds.micro_batch_size={res.micro_batch_size}",
        f"model.data.train_ds.max_seq_length={cfg.seq_len}",
        "model.data.train_ds.prompt_template='{input}{output}'",
        "model.data.train_ds.label_key=output",
        "model.data.train_ds.truncation_field=input",
        "model.data.train_ds.add_eos=False",
        "model.data.train_ds.add_bos=False",
    ]
    render = ["python", CHAT, "sft", f"$RUN_DIR/{spec['inputs']['model']}", f"$RUN_DIR/{work}/data"]
    spec["aligner"] = {"script": "train_gpt_sft.py", "config": "gpt_sft.yaml"}
    spec["tokens"] = steps * gbs * cfg.seq_len if steps > 0 else None
    spec["steps"] = _aligner_steps(spec, _converter(src), "train_gpt_sft.py", overrides, render)
    return spec


_PREFERENCE_LOSS = {"dpo": "dpo", "ipo": "ipo", "rpo": "dpo"}  # rpo: dpo plus sft_loss_weight x NLL(chosen)


def dpo_spec(recipe: Recipe, stage: str, src: dict | None) -> dict:
    cfg = recipe.stages[stage]
    settings = recipe.engine_settings["nemo"]
    res = settings.resources(stage)
    spec = _base(recipe, stage, "aligner")
    work = spec["work"]
    spec["data"] = _data(
        recipe, stage, "data", "preference", {"eval_records": cfg.eval_pairs, "max_records": cfg.max_pairs}
    )
    epochs = cfg.epochs
    overrides = _aligner_common(cfg, res, spec, "dpo", settings) + [
        f"trainer.dpo.max_epochs={max(1, math.ceil(epochs))}",
        "trainer.dpo.max_steps=-1",
        f"trainer.dpo.limit_train_batches={epochs if epochs < 1 else 1.0}",
        f"trainer.dpo.val_check_interval={cfg.eval_every or 1.0}",
        f"pretrained_checkpoint.restore_from_path=$RUN_DIR/{work}/model.nemo",
        f"++model.tensor_model_parallel_size={res.tensor_parallel}",
        f"++model.pipeline_model_parallel_size={res.pipeline_parallel}",
        f"model.seed={recipe.seed}",
        f"model.global_batch_size={cfg.batch_size * cfg.grad_accum}",
        f"model.micro_batch_size={res.micro_batch_size}",
        f"model.dpo.ref_policy_kl_penalty={cfg.ref_policy_kl_penalty}",
        f"model.dpo.preference_loss={_PREFERENCE_LOSS[cfg.preference_loss]}",
        f"model.dpo.sft_loss_weight={cfg.sft_loss_weight if cfg.preference_loss == 'rpo' else 0}",
        "model.dpo.preference_loss_weight=1",
        f"model.dpo.preference_average_log_probs={cfg.preference_average_log_probs}",
        "model.data.data_impl=jsonl",
        f"model.data.seq_length={cfg.seq_len}",
        f"model.data.data_prefix={{train:[$RUN_DIR/{work}/data/train.aligner.jsonl],"
        f"validation:[$RUN_DIR/{work}/data/valid.aligner.jsonl],test:[$RUN_DIR/{work}/data/valid.aligner.jsonl]}}",
    ]
    render = ["python", CHAT, "dpo", f"$RUN_DIR/{spec['inputs']['model']}", f"$RUN_DIR/{work}/data"]
    spec["aligner"] = {"script": "train_gpt_dpo.py", "config": "gpt_dpo.yaml"}
    spec["tokens"] = None  # pairs, not a token budget: the manifest records the pairs seen
    spec["steps"] = _aligner_steps(spec, _converter(src), "train_gpt_dpo.py", overrides, render)
    return spec


def job_spec(recipe: Recipe, stage: str, shapes: dict) -> dict:
    """The spec of one nemo stage; ``shapes`` is factory.recipe.stage_shapes()."""

    cfg = recipe.stages[stage]
    src = input_shape(first_model(cfg), recipe.stages, recipe.models, shapes, recipe.base)
    builders = {
        "correct": lambda: correct_spec(recipe, stage),
        "distill": lambda: distill_spec(recipe, stage),
        "prune": lambda: prune_spec(recipe, stage, src),
        "sft": lambda: sft_spec(recipe, stage, src),
        "dpo": lambda: dpo_spec(recipe, stage, src),
    }
    return builders[cfg.kind]()
