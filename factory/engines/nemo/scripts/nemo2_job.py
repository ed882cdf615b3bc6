"""One stage of a recipe as a NeMo 2 job (copied into the job dir as job.py).

    python job.py import CONFIG    # every input HF checkpoint -> NeMo 2 (llm.import_ckpt)
    torchrun ... job.py run CONFIG # the stage: llm.train (correct), llm.distill, llm.prune
    python job.py export CONFIG    # the result -> HF (llm.export_ckpt), tokenizer files carried over

CONFIG is the job spec written by the factory (config.yaml next to this file);
paths in it are relative to $RUN_DIR. ``build`` constructs every NeMo /
ModelOpt / Megatron config object of the job without touching a GPU, which is
what the separate NeMo environment's tests call (tests/nemo_env)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import yaml

try:  # in the job dir, job_tools.py lies next to this file
    from job_tools import carry_over
except ImportError:  # imported from the installed package (tests)
    from factory.engines.nemo.scripts.job_tools import carry_over
try:  # likewise walltime.py, the stop-and-resume protocol with the Slurm batch script
    import walltime
except ImportError:
    from factory.engines.nemo.scripts import walltime


def run_dir() -> Path:
    return Path(os.environ["RUN_DIR"])


def expand(value):
    """$RUN_DIR in every string of a spec -> the run directory as this job sees it."""
    if isinstance(value, str):
        return value.replace("$RUN_DIR", str(run_dir()))
    if isinstance(value, list):
        return [expand(v) for v in value]
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    return value


def at(rel: str) -> Path:
    return run_dir() / rel


def model_classes(hf_dir: Path):
    """The NeMo 2 model and config class whose "hf" connector converts this checkpoint."""
    from nemo.collections import llm  # only inside the NeMo container

    from factory.engines.nemo.capabilities import NEMO2_MODELS  # after nemo: the job fails on a missing NeMo first

    model_type = json.loads((hf_dir / "config.json").read_text())["model_type"]
    if model_type not in NEMO2_MODELS:
        sys.exit(f"{hf_dir}: NeMo 2 has no HF importer for model_type {model_type!r}")
    model_cls, config_cls = NEMO2_MODELS[model_type]
    return getattr(llm, model_cls), getattr(llm, config_cls)


def cmd_import(spec: dict) -> None:
    from nemo.collections import llm  # only inside the NeMo container

    for field, out in spec["nemo2"]["imports"].items():
        hf, target = at(spec["inputs"][field]), at(out)
        if (target / "context").is_dir() and (target / "weights").is_dir():
            print(f"[job] {field}: {target} already imported", file=sys.stderr)
            continue
        model_cls, config_cls = model_classes(hf)
        # the importer reads the shape from config.json; the config class only picks the family
        llm.import_ckpt(model=model_cls(config_cls()), source=f"hf://{hf}", output_path=target, overwrite=True)


def data_module(spec: dict, args: dict, tokenizer=None):
    from nemo.collections import llm  # only inside the NeMo container

    if tokenizer is None:
        from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import (
            AutoTokenizer,
        )  # only inside the NeMo container

        tokenizer = AutoTokenizer(str(at(spec["inputs"][spec["nemo2"].get("tokenizer_from", _first_input(spec))])))
    args = expand(args)
    args["paths"] = {split: megatron_blend(entries, split) for split, entries in args["paths"].items()}
    return llm.PreTrainingDataModule(tokenizer=tokenizer, **args)


CORPUS_FILE = "corpus.json"  # a tokenized corpus's index (factory.corpus.artifact.CORPUS_FILE)


def megatron_blend(entries: list, split: str) -> list:
    """A Megatron blend list ``[w1, prefix1, w2, prefix2, ...]`` in which every entry that
    is a tokenized-corpus dir (one holding ``corpus.json``) becomes its shards: the train
    shards for ``train``, the held-out shards for ``validation`` and ``test`` (the train
    shards of a corpus without any: calibration data), each weighted by its share of the
    corpus's tokens, so the corpus keeps its weight. Shard prefixes stay as they are."""
    if not entries or isinstance(entries[0], str):
        return entries  # unweighted prefixes: Megatron weighs them by size
    out: list = []
    for weight, path in zip(entries[::2], entries[1::2], strict=True):
        index = Path(path) / CORPUS_FILE
        if not index.is_file():
            out += [weight, path]
            continue
        meta = json.loads(index.read_text())
        shards = meta["train"] if split == "train" else (meta["heldout"] or meta["train"])
        total = sum(s["tokens"] for s in shards)
        for s in shards:
            out += [weight * s["tokens"] / total, str(Path(path) / s["prefix"])]
    return out


def _first_input(spec: dict) -> str:
    return "teacher" if "teacher" in spec["inputs"] else next(iter(spec["inputs"]))


def build(spec: dict, tokenizer=None, accelerator: str = "gpu") -> dict:
    """Every config object of the job, built from the spec (no GPU, no training;
    the tests of tests/nemo_env build them with accelerator="cpu")."""
    n = spec["nemo2"]
    if n["api"] == "llm.prune":
        return _prune_objects(spec, tokenizer)
    objs = {
        "trainer": _trainer(n["trainer"], accelerator),
        "optim": _optim(n),
        "log": _logger(spec["stage"], n),
        # a rerun resumes from the last checkpoint of this job; the first run starts from the import
        "resume": _auto_resume(n),
        "data": data_module(spec, n["data"], tokenizer),
    }
    if n["api"] == "llm.distill":
        from nemo.collections.llm.modelopt.distill.utils import DistillationConfig  # only inside the NeMo container

        objs["distillation"] = DistillationConfig(**n["distillation"])
    return objs


def _prune_objects(spec: dict, tokenizer) -> dict:
    """The objects of an llm.prune job: its pruning config and, when it calibrates on data, the data module."""
    from nemo.collections.llm.modelopt.prune import PruningConfig  # only inside the NeMo container

    n = spec["nemo2"]
    objs = {"pruning_config": PruningConfig(**n["pruning_config"])}
    if "data" in n:
        objs["data"] = data_module(spec, n["data"], tokenizer)
    return objs


def _trainer(t: dict, accelerator: str):
    """The Lightning trainer of a training job, with Megatron's parallelism and mixed precision."""
    from nemo import lightning as nl  # only inside the NeMo container

    strategy = nl.MegatronStrategy(
        tensor_model_parallel_size=t["tensor_model_parallel_size"],
        pipeline_model_parallel_size=t["pipeline_model_parallel_size"],
        sequence_parallel=t["sequence_parallel"],
        ckpt_async_save=False,
    )
    return nl.Trainer(
        devices=t["devices"],
        num_nodes=t["num_nodes"],
        max_steps=t["max_steps"],
        accelerator=accelerator,
        strategy=strategy,
        plugins=nl.MegatronMixedPrecision(precision=t["precision"]),
        val_check_interval=t["val_check_interval"],
        limit_val_batches=t["limit_val_batches"],
        log_every_n_steps=t["log_every_n_steps"],
        num_sanity_val_steps=0,
        callbacks=[walltime.lightning_callback()],  # progress.json; saves and stops when the batch script asks
    )


def _optim(n: dict):
    """The Megatron optimizer with its cosine learning-rate schedule."""
    from megatron.core.optimizer import OptimizerConfig  # only inside the NeMo container
    from nemo.lightning.pytorch.optim import (
        CosineAnnealingScheduler,
        MegatronOptimizerModule,
    )  # only inside the NeMo container

    return MegatronOptimizerModule(
        config=OptimizerConfig(**n["optimizer"]), lr_scheduler=CosineAnnealingScheduler(**n["scheduler"])
    )


def _logger(stage: str, n: dict):
    """Where the job logs and checkpoints: the last and the best (by training loss) are kept."""
    from nemo import lightning as nl  # only inside the NeMo container

    return nl.NeMoLogger(
        name=stage,
        log_dir=str(at(n["checkpoints"])),
        use_datetime_version=False,
        ckpt=nl.ModelCheckpoint(
            save_last=True,
            save_top_k=1,
            monitor="reduced_train_loss",
            every_n_train_steps=n["trainer"]["checkpoint_every_n_steps"],
        ),
    )


def _auto_resume(n: dict):
    """Resume from this job's last checkpoint when there is one, else start from the imported model."""
    from nemo import lightning as nl  # only inside the NeMo container

    return nl.AutoResume(
        resume_if_exists=True,
        resume_ignore_no_checkpoint=True,
        restore_config=nl.RestoreConfig(path=str(at(n["imports"][_trained(n)]))),
    )


def _trained(n: dict) -> str:
    return n.get("student") or n["model"]


def cmd_run(spec: dict) -> None:
    from nemo.collections import llm  # only inside the NeMo container

    n = spec["nemo2"]
    objs = build(spec)
    if n["api"] == "llm.prune":
        llm.prune(
            nemo_checkpoint=str(at(n["imports"]["model"])),
            save_path=str(at(n["save_path"])),
            pruning_config=objs["pruning_config"],
            devices=n["devices"],
            num_nodes=n["num_nodes"],
            tp_size=n["tp_size"],
            pp_size=n["pp_size"],
            num_train_samples=n["num_train_samples"],
            data=objs.get("data"),
        )
    elif n["api"] == "llm.distill":
        kd_yaml = at(spec["work"]) / "distillation.yaml"
        kd_yaml.write_text(yaml.safe_dump(n["distillation"], sort_keys=False))
        llm.distill(
            student_model_path=str(at(n["imports"]["student"])),
            teacher_model_path=str(at(n["imports"]["teacher"])),
            data=objs["data"],
            trainer=objs["trainer"],
            distillation_config_path=str(kd_yaml),
            log=objs["log"],
            resume=objs["resume"],
            optim=objs["optim"],
        )
    else:  # llm.train: full-parameter causal-LM fine-tuning (teacher correction)
        llm.train(
            model=str(at(n["imports"]["model"])),
            data=objs["data"],
            trainer=objs["trainer"],
            log=objs["log"],
            resume=objs["resume"],
            optim=objs["optim"],
            tokenizer="model",
        )


def last_checkpoint(root: Path) -> Path:
    """The newest complete NeMo 2 checkpoint (context + weights) under ``root``."""
    found = [p.parent for p in root.rglob("context") if (p.parent / "weights").is_dir()]
    if not found:
        sys.exit(f"no NeMo 2 checkpoint under {root}")
    last = [p for p in found if p.name.endswith("-last")]
    return max(last or found, key=lambda p: p.stat().st_mtime)


def cmd_export(spec: dict) -> None:
    from nemo.collections import llm  # only inside the NeMo container

    n = spec["nemo2"]
    source = at(n["save_path"]) if n["api"] == "llm.prune" else last_checkpoint(at(n["checkpoints"]))
    out = at(spec["work"]) / "hf"
    if out.exists():
        shutil.rmtree(out)
    llm.export_ckpt(path=source, target="hf", output_path=out, overwrite=True)
    carry_over(at(spec["inputs"][_trained(n)]), out)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("import", "run", "export"):
        sys.exit("usage: job.py import|run|export CONFIG")
    spec = yaml.safe_load(Path(argv[1]).read_text())
    {"import": cmd_import, "run": cmd_run, "export": cmd_export}[argv[0]](spec)


if __name__ == "__main__":
    main(sys.argv[1:])
