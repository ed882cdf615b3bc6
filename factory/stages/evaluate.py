"""``evaluate``: run an evaluation suite on one or more models.

The artifact is a results directory, not a checkpoint: ``results-<label>.json``
per model (every sample, metrics with bootstrap intervals; see evals.results)
and a comparison report (``report.md``, ``report.html``, ``report.png``). The
manifest's metrics hold each task's headline metric per model as
``<label>/<task>/<metric>``. A ``gate`` stage reads this directory."""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from evals import report
from evals import results as res
from evals.engines import ENGINES, check_engine_settings
from evals.engines.choice import AUTO, AUTO_CANDIDATES
from evals.runner import run_suite
from evals.suite import check_suite, is_file_ref, parse_sampling, parse_suite
from evals.suite import load_suite as load_file
from factory.stages.base import StageContext, StageResult, no_model, register
from factory.training import dist
from foundation.configs import field, require
from foundation.errors import ConfigError, FactoryError
from foundation.hashing import sha256_json

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class EvaluateConfig:
    kind: str = field("evaluate", help="stage kind")
    models: str | list[str] | dict[str, str] = field(
        None,
        ref="model",
        help="models to evaluate: a models: entry or earlier stage, a list of them, "
        "or a mapping label -> reference (labels name the results files)",
    )
    suite: str | dict[str, Any] = field(
        "quick",
        help="a shipped suite (quick, full), a suite YAML file relative to the recipe, or a suite written inline",
    )
    engine: Literal[ENGINES] | None = field(None, help="override the suite's engine")
    engine_settings: dict[str, Any] = field(
        factory=dict, help="engine settings over the suite's (e.g. max_batch for hf)"
    )
    limit: int | None = field(None, help="cap every task at this many samples")
    sampling: dict[str, Any] = field(
        factory=dict, help="sampling overrides for every task (max_tokens, temperature...)"
    )
    # derived in check(), hashed with the config: labels name the outputs, and a
    # shipped or inline suite's content decides the results
    labels: dict[str, str] = dataclasses.field(
        init=False, default_factory=dict, metadata={"help": "derived: label -> model reference"}
    )
    suite_hash: str = dataclasses.field(
        init=False, default="", metadata={"help": "derived: content hash of a shipped or inline suite"}
    )

    def check(self, where: str) -> None:
        require(self.models is not None and self.models not in ([], {}), where, "models", "missing required key")
        self.labels = _labels(self.models, f"{where}.models")
        require(self.limit is None or self.limit > 0, where, "limit", "must be positive")
        self.sampling = parse_sampling(self.sampling, f"{where}.sampling")
        if isinstance(self.suite, dict) or not is_file_ref(self.suite):  # a file is read in check_files
            suite = load_suite(self.suite, None, f"{where}.suite")
            self.suite_hash = suite.hash
            self.check_engine(suite, where)

    def check_files(self, where: str, base: Path) -> None:
        """A suite file (relative to the recipe's directory ``base``) checked as
        ``check`` checks a shipped or inline suite; its content is hashed at run time."""
        if isinstance(self.suite, str) and is_file_ref(self.suite):
            self.check_engine(load_suite(self.suite, base, f"{where}.suite"), where)

    def check_engine(self, suite, where: str) -> None:
        """The settings of the engine that will run (this stage's or the suite's),
        this stage's ``engine_settings`` over the suite's, as building it would check them."""
        engine = self.engine or suite.engine
        # auto runs hf or vllm (decided at run time): the settings must suit either
        for name in AUTO_CANDIDATES if engine == AUTO else (engine,):
            try:
                check_engine_settings(name, {**suite.settings_for(name), **self.engine_settings})
            except ConfigError as e:
                key = f"{where}.engine_settings" + (f".{e.where}" if e.where else "")
                hint = f" (the suite's engine is {AUTO}, which may run {name}: set engine)" if engine == AUTO else ""
                raise ConfigError(key, e.message + hint) from None

    def model_fields(self) -> dict[str, str]:
        """Label -> the StageContext.models key of that model."""
        if isinstance(self.models, str):
            return {self.models: "models"}
        if isinstance(self.models, list):
            return {ref: f"models[{i}]" for i, ref in enumerate(self.models)}
        return {label: f"models.{label}" for label in self.models}


def _labels(models, where: str) -> dict[str, str]:
    if isinstance(models, str):
        return {models: models}
    if isinstance(models, list):
        dup = next((m for i, m in enumerate(models) if m in models[:i]), None)
        if dup is not None:
            raise ConfigError(where, f"{dup!r} is listed twice")
        return {m: m for m in models}
    for label in models:
        if not _LABEL.match(label):
            raise ConfigError(f"{where}.{label}", "labels may hold letters, digits, '.', '_' and '-' only")
    return dict(models)


def load_suite(suite, base: Path | None, where: str):
    """The suite as evals.suite.Suite, its own settings checked (evals.suite.check_suite);
    errors become ConfigErrors at ``where``."""
    try:
        loaded = parse_suite(suite, "inline") if isinstance(suite, dict) else load_file(suite, base)
        check_suite(loaded)
        return loaded
    except ConfigError as e:
        if isinstance(suite, dict):  # name the recipe path, the recipe names its file
            raise ConfigError(f"{where}.{e.where}" if e.where else where, e.message) from None
        raise
    except FactoryError as e:
        raise ConfigError(where, str(e)) from None


def _engine_used(results: dict) -> dict:
    """Which engine made a model's results, in which dtype, and why when the suite's
    ``engine: auto`` chose it (evals.engines.choice)."""
    described = results.get("engine") or {}
    keep = ("engine", "dtype", "chosen_by")
    return {k: described[k] for k in keep if described.get(k) is not None}


def _cached_results(ctx: StageContext, cfg: EvaluateConfig, suite, key: str) -> Path | None:
    """Where results of this model (by content hash) on this suite, engine and
    settings, scored by this version of the eval code, are kept across runs of the
    stage: a rerun after, say, only the dpo stage changed evaluates only the new model.
    None when the model's hash is unknown."""
    digest = ctx.input_hashes.get(key)
    if not digest or ctx.cache_dir is None:
        return None
    k = sha256_json(
        {
            "model": digest,
            "suite": suite.hash,
            "engine": cfg.engine,
            "settings": cfg.engine_settings,
            "limit": cfg.limit,
            "sampling": cfg.sampling,
            "code": res.code_hash(),
        }
    )
    return ctx.cache_dir / f"results-{k[:24]}.json"


def _reuse(ctx: StageContext, label: str, cached: Path | None, out: Path) -> dict | None:
    """The kept results at ``cached``, published as ``out`` under ``label``; None when
    there are none, or when they fail their checks (evals.results.load_kept: reported
    in one line and removed, so the model is evaluated again)."""
    if cached is None:
        return None
    results = res.load_kept(cached, f"evaluating {label} again", owner=dist.is_main())
    if results is None:
        return None
    results["model"]["label"] = label
    res.write(results, out)
    print(
        f"[factory] {ctx.name}: {label}: reusing results of the same model, suite and settings ({cached.name})",
        file=sys.stderr,
    )
    return results


def _sweep(cache_dir: Path | None) -> None:
    """Remove what a kill left of kept results being written (their temporary files):
    the run lock means no other process writes here, and under torchrun only rank 0 does."""
    if cache_dir is None or not dist.is_main():
        return
    for tmp in cache_dir.glob(".results-*.json.*.tmp"):
        tmp.unlink(missing_ok=True)


@register(
    "evaluate", EvaluateConfig, "run an evaluation suite on models; results, report, headline metrics", shape=no_model
)
def run(ctx: StageContext) -> StageResult:
    cfg: EvaluateConfig = ctx.config
    suite = load_suite(cfg.suite, ctx.base, f"stages.{ctx.name}.suite")
    _sweep(ctx.cache_dir)
    runs, metrics, reused = [], {}, []
    for label, key in cfg.model_fields().items():
        out = ctx.out_dir / f"results-{label}.json"
        cached = _cached_results(ctx, cfg, suite, key)
        results = _reuse(ctx, label, cached, out)
        if results is not None:
            reused.append(label)
        else:
            # completions land in the work dir as they are made: a killed run resumes mid-model
            completions = ctx.work_dir / f"completions-{label}.jsonl" if dist.is_main() else None
            results = run_suite(
                str(ctx.models[key]),
                suite,
                engine=cfg.engine,
                engine_settings=cfg.engine_settings,
                limit=cfg.limit,
                sampling=cfg.sampling,
                out=out,
                label=label,
                progress=ctx.progress,
                cache=completions,
            )
            if cached is not None and dist.is_main():  # under torchrun every rank evaluates; one writes
                res.write_kept(results, cached)
        runs.append((label, results))
        for task, (metric, entry) in res.headline(results).items():
            metrics[f"{label}/{task}/{metric}"] = entry["value"]
    files = report.write_report(runs, ctx.out_dir)
    extra = {
        "suite": {"name": suite.name, "hash": suite.hash, "file": suite.file},
        "labels": {label: str(ctx.models[key]) for label, key in cfg.model_fields().items()},
        "report": sorted(p.name for p in files.values()),
        "samples": sum(len(r["samples"]) for _, r in runs),
        "reused": reused,
        "engines": {label: _engine_used(r) for label, r in runs},
    }
    return StageResult(metrics=metrics, extra=extra)
