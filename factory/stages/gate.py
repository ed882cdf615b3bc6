"""``gate``: compare two models of an ``evaluate`` stage and stop on a regression.

A metric regresses when the candidate is lower than the baseline by more than
its allowed drop and the paired bootstrap finds the drop significant
(evals.gate). With ``on_regression: fail`` the stage fails with one line
naming the regressed metrics, so nothing downstream (a release) runs; with
``record`` it writes the verdict and lets the pipeline go on. Two results not
run alike (task options, sampling, sample ids or prompts differ: see
evals.gate) fail the stage in one line whatever ``on_regression`` says, unless
``allow_mismatch``; then each difference is written to gate.txt, gate.json and
the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from evals import gate
from evals import results as res
from factory.stages.base import StageContext, StageResult, register
from foundation.configs import field, require
from foundation.errors import ConfigError, FactoryError


@dataclass
class GateConfig:
    kind: str = field("gate", help="stage kind")
    results: str = field(None, ref="model", help="the evaluate stage whose results are compared")
    candidate: str = field(None, help="label of the candidate model in that stage")
    baseline: str = field(None, help="label of the baseline model in that stage")
    max_drop: dict[str, float] = field(factory=dict, help="allowed absolute drop per task/metric (or per task)")
    default_max_drop: float = field(0.0, help="allowed drop for metrics not in max_drop")
    alpha: float = field(0.05, help="significance level of the paired bootstrap")
    on_regression: Literal["fail", "record"] = field("fail", help="fail the stage, or record the verdict and go on")
    allow_mismatch: bool = field(
        False,
        help="compare even when the two results were not run alike (task options, "
        "sampling, sample ids or prompts differ); the differences are recorded",
    )

    def check(self, where: str) -> None:
        for key in ("results", "candidate", "baseline"):
            require(getattr(self, key) is not None, where, key, "missing required key")
        require(self.candidate != self.baseline, where, "candidate", "must differ from baseline")
        require(self.default_max_drop >= 0, where, "default_max_drop", "must be >= 0")
        require(0 < self.alpha < 1, where, "alpha", "must be between 0 and 1")
        for key, drop in self.max_drop.items():
            require(drop >= 0, f"{where}.max_drop", key, "must be >= 0")


def needs_results(cfg: Any, model_config: dict, where: str) -> None:
    # called only when the input is a model whose shape is known: not an evaluate stage
    raise ConfigError(f"{where}.results", f"{cfg.results!r} is a model; name an evaluate stage")


@register(
    "gate",
    GateConfig,
    "compare a candidate with a baseline from an evaluate stage; fail on a regression",
    shape=needs_results,
)
def run(ctx: StageContext) -> StageResult:
    cfg: GateConfig = ctx.config
    where = f"stages.{ctx.name}"
    found = {}
    for role in ("candidate", "baseline"):
        label = getattr(cfg, role)
        path = ctx.models["results"] / f"results-{label}.json"
        if not path.is_file():
            have = sorted(p.stem[len("results-") :] for p in ctx.models["results"].glob("results-*.json"))
            raise FactoryError(
                f"{where}.{role}: no model labelled {label!r} in stage {cfg.results} "
                f"(labels: {', '.join(have) or 'none'})"
            )
        found[role] = res.load_verified(path)  # a verdict only on numbers the samples give
    gate.check_max_drop(found["baseline"], cfg.max_drop, prefix=f"{where}.max_drop.")
    mismatched = gate.check_comparable(
        found["candidate"],
        found["baseline"],
        cfg.allow_mismatch,
        subject=f"{where}: {cfg.candidate} and {cfg.baseline}",
        hint=f"set {where}.allow_mismatch=true to compare anyway",
    )
    rows = gate.compare(
        found["candidate"], found["baseline"], cfg.max_drop, cfg.default_max_drop, cfg.alpha, allow_mismatch=True
    )
    text = "".join(f"compared anyway, they differ in {m}\n" for m in mismatched)
    text += gate.table(rows) + "\n" + gate.summary(rows) + "\n"
    (ctx.out_dir / "gate.txt").write_text(text)
    verdict = gate.as_json(rows, cfg.alpha, mismatched)
    (ctx.out_dir / "gate.json").write_text(json.dumps(verdict, indent=1) + "\n")
    if ctx.progress:
        print(text, end="")
    failed = [r for r in rows if r.failed]
    if failed and cfg.on_regression == "fail":
        raise FactoryError(f"{where}: {cfg.candidate} vs {cfg.baseline}: {gate.summary(rows)}")
    metrics = {
        "passed": not failed,
        "metrics_gated": len(rows),
        "metrics_failed": len(failed),
        **{f"delta/{r.key}": r.delta for r in rows},
    }
    return StageResult(
        metrics=metrics,
        extra={
            "candidate": cfg.candidate,
            "baseline": cfg.baseline,
            "failed": [r.key for r in failed],
            "mismatches": [str(m) for m in mismatched],
        },
    )
