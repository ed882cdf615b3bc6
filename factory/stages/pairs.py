"""``pairs``: verifier-built preference pairs sampled from a model.

For each verifiable prompt (``factory.alignment.verifiers``) the model samples
``samples_per_prompt`` answers; each is scored by the prompt's verifier. A
prompt with at least one passing (score >= ``pass_threshold``) and one failing
(score < ``fail_threshold``) answer gives a pair: the shortest passing answer
chosen, a failing one rejected. The artifact is a preference dataset
(``pairs.jsonl``) that a ``dpo`` stage names as its ``data``; the pass rate
per source is in the manifest, a measure of the model's skill on its own."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Literal

from evals.api import Request, Sampling
from evals.engines import make_engine
from evals.sandbox import runtime_access
from factory.alignment import verifiers
from factory.sources.produced import dataset_manifest_entry
from factory.stages.base import StageContext, StageResult, register
from foundation.configs import field, require
from foundation.device import check_device, resolve_device
from foundation.errors import FactoryError

SOURCE_LICENCE = {
    "reasoning-gym": "Apache-2.0 (reasoning-gym generators)",
    "constraints": "Apache-2.0 (lm-eval instruction checkers); topics written for this project",
}


@dataclass
class PairsConfig:
    kind: str = field("pairs", help="stage kind")
    model: str = field(None, ref="model", help="the model that samples answers")
    source: Literal["reasoning-gym", "constraints"] = field(
        "reasoning-gym", help="verifiable prompts: reasoning-gym generators or IFEval-style format constraints"
    )
    tasks: list[str] = field(factory=lambda: ["basic_arithmetic"], help="reasoning-gym task names")
    prompts: int = field(64, help="verifiable prompts to sample from")
    samples_per_prompt: int = field(4, help="answers sampled per prompt")
    temperature: float = field(0.8, help="sampling temperature")
    top_p: float = field(0.95, help="nucleus sampling")
    max_new_tokens: int = field(128, help="longest answer")
    pass_threshold: float = field(1.0, help="verifier score that counts as a pass")
    fail_threshold: float = field(0.5, help="verifier score below which an answer counts as a failure")
    batch_size: int = field(16, help="prompts per generation batch", hashed=False)
    device: str = field("auto", help="auto, cpu, cuda or cuda:N", hashed=False)

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        require(self.prompts > 0, where, "prompts", "must be positive")
        require(self.samples_per_prompt >= 2, where, "samples_per_prompt", "need at least 2 to compare")
        require(self.temperature > 0, where, "temperature", "must be positive: greedy samples are all alike")
        require(
            0 < self.fail_threshold <= self.pass_threshold <= 1,
            where,
            "fail_threshold",
            "need 0 < fail_threshold <= pass_threshold <= 1",
        )
        require(self.source != "reasoning-gym" or len(self.tasks) > 0, where, "tasks", "name at least one task")
        check_device(self.device, where)


def _items(cfg: PairsConfig, seed: int):
    if cfg.source == "reasoning-gym":
        return list(verifiers.reasoning_gym_items([str(t) for t in cfg.tasks], cfg.prompts, seed))[: cfg.prompts]
    return list(verifiers.constraint_items(cfg.prompts, seed))


def choose_pair(answers: list[str], scores: list[float], cfg: PairsConfig, rng: random.Random):
    """(chosen, rejected) or None: the shortest passing answer vs a random failing one."""
    passing = sorted((a for a, s in zip(answers, scores) if s >= cfg.pass_threshold), key=len)
    failing = [a for a, s in zip(answers, scores) if s < cfg.fail_threshold and a.strip()]
    passing = [a for a in passing if a.strip()]
    if not passing or not failing:
        return None
    rejected = rng.choice(failing)
    return (passing[0], rejected) if passing[0] != rejected else None


def trusted_scores(item: verifiers.Verifiable, answers: list[str], scores: list[float]) -> list[float]:
    """``scores``, except that an answer to a code task (an item whose check
    runs the answer) that touches os, sys, builtins, gc, /proc or the like
    (``evals.sandbox.runtime_access``) scores NaN, neither passing nor failing:
    such a program can change its own verdict from inside its process, and a
    pair built on that verdict would teach the model to do so."""
    if not item.runs_code:
        return scores
    return [float("nan") if runtime_access(a) else s for a, s in zip(answers, scores)]


@register("pairs", PairsConfig, "preference pairs from a model's own samples, judged by verifiers")
def run(ctx: StageContext) -> StageResult:
    cfg: PairsConfig = ctx.config
    items = _items(cfg, ctx.seed)
    engine = make_engine(
        "hf", str(ctx.models["model"]), device=str(resolve_device(cfg.device)), max_batch=cfg.batch_size
    )
    sampling = Sampling(
        max_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        n=cfg.samples_per_prompt,
        seed=ctx.seed,
    )
    try:
        completions = engine.generate(
            [Request(messages=it.messages, sampling=sampling) for it in items], progress=ctx.progress
        )
    finally:
        engine.close()
    rng = random.Random(ctx.seed)
    lines, passed, total, both = [], 0, 0, 0
    for it, comp in zip(items, completions):
        scores = trusted_scores(it, comp.texts, [it.check(t) for t in comp.texts])
        passed += sum(s >= cfg.pass_threshold for s in scores)
        total += len(scores)
        pair = choose_pair(comp.texts, scores, cfg, rng)
        if pair is None:
            continue
        both += 1
        lines.append(json.dumps({"id": it.id, "messages": it.messages, "chosen": pair[0], "rejected": pair[1]}))
    if not lines:  # an empty dataset would only fail later, in the stage that reads it
        raise FactoryError(
            f"stages.{ctx.name}: no prompt got both a passing and a failing answer ({passed} of {total} "
            f"samples passed): raise max_new_tokens, samples_per_prompt or temperature, or change the source"
        )
    (ctx.out_dir / "pairs.jsonl").write_text("".join(x + "\n" for x in lines))
    metrics = {
        "prompts": len(items),
        "pairs": len(lines),
        "sample_pass_rate": passed / max(total, 1),
        "prompts_with_pair": both / max(len(items), 1),
    }
    extra = {
        **dataset_manifest_entry("pairs.jsonl", "preference", SOURCE_LICENCE[cfg.source], len(lines)),
        "generator": {"source": cfg.source, "tasks": list(cfg.tasks), "engine": engine.describe()},
    }
    return StageResult(metrics=metrics, tokens=None, extra=extra)
