"""``generate``: a model's own answers to the prompts of a chat dataset, written as a chat dataset.

Sequence-level knowledge distillation for alignment-aware distillation: the
teacher answers instruction prompts, and those answers, rendered with the chat
template, become training text for the student (a ``tokenize`` stage over this
artifact, blended with prose in a ``distill`` stage's ``data``).

Each record of a ``chat``, ``instruction`` or ``sharegpt`` dataset gives one
prompt: its conversation up to (not including) its last assistant turn; a
record whose prompt has no user turn is skipped and counted. The prompts are
put in a seeded random order (a hash of the seed and the record's index) and
the first ``max_prompts`` are answered, ``samples_per_prompt`` times each. An
answer that ran into ``max_new_tokens`` without ending is dropped
(``drop_truncated``), as is one shorter than ``min_chars`` characters. The
artifact ``answers.jsonl`` holds one chat record per answer: the prompt turns
and the answer as the last assistant turn. Completions are logged in the work
dir as they finish, so a rerun after a crash generates only what is missing."""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from evals.api import Completion, Request, Sampling
from evals.engines import LazyEngine, check_engine_settings
from evals.engines.choice import AUTO, AUTO_CANDIDATES, resolve_engine
from factory.alignment.records import CONVERSATION_FORMATS, BadRecords, Conversation, iter_conversations
from factory.sources.produced import dataset_manifest_entry
from factory.stages.base import StageContext, StageResult, no_model, register
from foundation.configs import field, require
from foundation.device import check_device, resolve_device
from foundation.errors import ConfigError, FactoryError

ANSWERS_FILE = "answers.jsonl"
ANSWERS_FORMAT = "chat"  # factory.alignment.records reads the artifact back as conversations
COMPLETIONS_LOG = "completions.jsonl"  # in the work dir: completions kept as they finish


@dataclass
class GenerateConfig:
    kind: str = field("generate", help="stage kind")
    model: str = field(None, ref="model", help="the model that answers (e.g. the teacher): a models: entry or a stage")
    data: str = field(
        None,
        ref="dataset",
        help="the prompts: a dataset with format chat, instruction or sharegpt (each record's "
        "conversation up to its last assistant turn)",
    )
    max_prompts: int | None = field(None, help="answer at most this many prompts (after the seeded shuffle)")
    max_new_tokens: int = field(256, help="longest answer, in tokens")
    temperature: float = field(0.0, help="sampling temperature; 0: greedy")
    top_p: float = field(1.0, help="nucleus sampling (with temperature > 0)")
    samples_per_prompt: int = field(1, help="answers per prompt (more than 1 needs temperature > 0)")
    engine: Literal["hf", "vllm", "auto"] = field(
        "hf", help="generation engine: hf, vllm, or auto (vLLM where it is installed and faster, see evals.engines)"
    )
    engine_settings: dict[str, Any] = field(factory=dict, help="engine settings (e.g. dtype), as in an eval suite")
    drop_truncated: bool = field(True, help="drop an answer that reached max_new_tokens without ending")
    min_chars: int = field(1, help="drop an answer with fewer characters than this (whitespace stripped)")
    batch_size: int = field(16, help="sequences decoded together (hf max_batch, vllm max_num_seqs)", hashed=False)
    device: str = field("auto", help="auto, cpu, cuda or cuda:N (the hf engine)", hashed=False)

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        require(self.data is not None, where, "data", "missing required key")
        require(self.max_prompts is None or self.max_prompts > 0, where, "max_prompts", "must be positive")
        require(self.max_new_tokens > 0, where, "max_new_tokens", "must be positive")
        require(self.temperature >= 0, where, "temperature", "must be zero (greedy) or positive")
        require(0 < self.top_p <= 1, where, "top_p", "must be in (0, 1]")
        require(self.samples_per_prompt > 0, where, "samples_per_prompt", "must be positive")
        require(
            self.samples_per_prompt == 1 or self.temperature > 0,
            where,
            "samples_per_prompt",
            "greedy answers are all alike: set temperature > 0 for more than one per prompt",
        )
        require(self.min_chars >= 1, where, "min_chars", "must be at least 1 (an empty answer is no chat turn)")
        require(self.batch_size > 0, where, "batch_size", "must be positive")
        check_device(self.device, where)
        for name in AUTO_CANDIDATES if self.engine == AUTO else (self.engine,):
            try:
                check_engine_settings(name, self.engine_settings)
            except ConfigError as e:
                hint = f" (engine {AUTO} may run {name})" if self.engine == AUTO else ""
                key = f"{where}.engine_settings" + (f".{e.where}" if e.where else "")
                raise ConfigError(key, e.message + hint) from None


@dataclass
class Prompt:
    """One prompt to answer: the record's index in the dataset (its id), the turns before its
    last assistant turn, and the record's tools."""

    index: int
    messages: list[dict]
    tools: list[dict] | None


def prompt_turns(messages: list[dict]) -> list[dict] | None:
    """The conversation up to (not including) its last assistant turn; None when that holds no user turn."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    prompt = messages[:last]
    return prompt if any(m["role"] == "user" for m in prompt) else None


def order_key(seed: int, index: int) -> int:
    """Where prompt ``index`` falls in the seeded random order: a hash of both, so that the
    order is a permutation fixed by the seed and the first ``n`` can be kept in one pass."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "big")


def select_prompts(
    conversations: Iterable[Conversation], seed: int, limit: int | None, counts: Counter
) -> list[Prompt]:
    """The prompts of ``conversations`` in the seeded order (``order_key``), the first ``limit``
    of them (all for None); only ``limit`` are held at a time. ``counts`` gets ``records`` and
    ``no_user_turn`` (records skipped)."""

    def prompts() -> Iterator[Prompt]:
        for i, c in enumerate(conversations):
            counts["records"] += 1
            turns = prompt_turns(c.messages)
            if turns is None:
                counts["no_user_turn"] += 1
                continue
            yield Prompt(i, turns, c.tools)

    key = lambda p: order_key(seed, p.index)  # noqa: E731
    return sorted(prompts(), key=key) if limit is None else heapq.nsmallest(limit, prompts(), key=key)


def answer_ids(prompt: Prompt, n: int) -> list[str]:
    """The ids of a prompt's answers: the record's index, with the sample's after a dot when there are several."""
    return [str(prompt.index)] if n == 1 else [f"{prompt.index}.{j}" for j in range(n)]


def _read_log(path: Path) -> dict[int, Completion]:
    """Completions a killed run kept (by prompt index); a line cut short by the kill is ignored."""
    done: dict[int, Completion] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                done[rec["index"]] = Completion(rec["texts"], rec["tokens"], rec["finish_reasons"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def _engine(cfg: GenerateConfig, model: Path, seed: int, tokens: int) -> LazyEngine:
    """The engine to generate with (``auto`` resolved for ``tokens`` generated at most), built
    when first asked to generate: a rerun whose completions are all logged loads no model."""
    name, chosen, _ = resolve_engine(cfg.engine, cfg.engine_settings, tokens)
    if name == "hf":
        own = {"device": str(resolve_device(cfg.device)), "max_batch": cfg.batch_size}
    else:
        own = {"max_num_seqs": cfg.batch_size, "seed": seed}
    return LazyEngine(name, str(model), {**chosen, **own, **cfg.engine_settings}, where=f"engine {name}")


def generate_all(ctx: StageContext, prompts: list[Prompt]) -> tuple[list[Completion], dict]:
    """One completion per prompt, those a killed run logged in the work dir reused and the rest
    generated (each logged as it finishes); with the engine's description."""
    cfg: GenerateConfig = ctx.config
    log_path = ctx.work_dir / COMPLETIONS_LOG
    done = _read_log(log_path)
    todo = [p for p in prompts if p.index not in done]
    sampling = Sampling(
        max_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        n=cfg.samples_per_prompt,
        seed=ctx.seed,
    )
    engine = _engine(cfg, ctx.models["model"], ctx.seed, len(todo) * cfg.samples_per_prompt * cfg.max_new_tokens)
    try:
        with open(log_path, "a", encoding="utf-8") as log:

            def keep(i: int, comp: Completion) -> None:
                done[todo[i].index] = comp
                rec = {"index": todo[i].index, "texts": comp.texts, "tokens": comp.tokens}
                log.write(json.dumps({**rec, "finish_reasons": comp.finish_reasons}) + "\n")
                log.flush()

            if todo:
                requests = [Request(messages=p.messages, tools=p.tools, sampling=sampling) for p in todo]
                got = engine.generate(requests, progress=ctx.progress, on_done=keep)
                for i, comp in enumerate(got):
                    if todo[i].index not in done:  # an engine that does not stream hands them over at the end
                        keep(i, comp)
        described = engine.describe()
    finally:
        engine.close()
    return [done[p.index] for p in prompts], described


def truncated(comp: Completion, j: int, max_new_tokens: int) -> bool:
    """Whether answer ``j`` stopped at the token limit rather than ending: the engine's finish
    reason, or (an engine that gives none) a token count at the limit."""
    if comp.finish_reasons:
        return comp.finish_reasons[j] == "length"
    return bool(comp.tokens) and comp.tokens[j] >= max_new_tokens


def answer_records(prompts: list[Prompt], completions: list[Completion], cfg: GenerateConfig, counts: Counter):
    """The chat records of the answers kept; ``counts`` gets ``dropped_truncated``,
    ``dropped_empty``, and the kept answers' ``answer_tokens`` and ``answer_chars``."""
    for p, comp in zip(prompts, completions, strict=True):
        for j, (rid, text) in enumerate(zip(answer_ids(p, cfg.samples_per_prompt), comp.texts, strict=True)):
            if cfg.drop_truncated and truncated(comp, j, cfg.max_new_tokens):
                counts["dropped_truncated"] += 1
                continue
            if len(text.strip()) < cfg.min_chars:
                counts["dropped_empty"] += 1
                continue
            counts["answer_tokens"] += comp.tokens[j] if comp.tokens else 0
            counts["answer_chars"] += len(text)
            rec = {"id": rid, "messages": [*p.messages, {"role": "assistant", "content": text}]}
            yield {**rec, "tools": p.tools} if p.tools else rec


def _prompts(ctx: StageContext, counts: Counter, bad: BadRecords) -> list[Prompt]:
    cfg: GenerateConfig = ctx.config
    spec = ctx.datasets["data"]
    where = f"stages.{ctx.name}.data"
    if spec.format not in CONVERSATION_FORMATS:
        hint = (
            " (documents by file extension; records with messages need format: chat)" if spec.format == "auto" else ""
        )
        raise FactoryError(
            f"{where}: generate needs a dataset with format {', '.join(CONVERSATION_FORMATS)}, got "
            f"{spec.format}{hint}: its prompts are the turns before each record's last assistant turn"
        )
    prompts = select_prompts(iter_conversations(spec, ctx.base, bad), ctx.seed, cfg.max_prompts, counts)
    if not prompts:
        raise FactoryError(f"{where}: no record has a user turn before its last assistant turn: nothing to answer")
    return prompts


@register(
    "generate",
    GenerateConfig,
    "a model's own answers to the prompts of a chat dataset, as a chat dataset (sequence-level KD data)",
    shape=no_model,
)
def run(ctx: StageContext) -> StageResult:
    """Answer the selected prompts and write ``answers.jsonl`` with the counts in the manifest."""
    cfg: GenerateConfig = ctx.config
    counts: Counter = Counter()
    bad = BadRecords()
    prompts = _prompts(ctx, counts, bad)
    completions, described = generate_all(ctx, prompts)
    records = list(answer_records(prompts, completions, cfg, counts))
    if not records:  # an empty dataset would only fail later, in the stage that reads it
        raise FactoryError(
            f"stages.{ctx.name}: every answer was dropped ({counts['dropped_truncated']} truncated at "
            f"max_new_tokens {cfg.max_new_tokens}, {counts['dropped_empty']} shorter than min_chars): "
            "raise max_new_tokens or set drop_truncated: false"
        )
    (ctx.out_dir / ANSWERS_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    n = len(records)
    metrics = {
        "records": counts["records"],
        "skipped_no_user_turn": counts["no_user_turn"],
        "prompts": len(prompts),
        "answers": n,
        "dropped_truncated": counts["dropped_truncated"],
        "dropped_empty": counts["dropped_empty"],
        "mean_answer_tokens": counts["answer_tokens"] / n,
        "mean_answer_chars": counts["answer_chars"] / n,
    }
    source = ctx.datasets["data"].licence_of()
    licence = f"answers generated by model {cfg.model} to the prompts of dataset {cfg.data} (prompts: {source})"
    extra = {
        **dataset_manifest_entry(ANSWERS_FILE, ANSWERS_FORMAT, licence, n),
        "generator": described,
        "source_records": bad.as_dict(),
    }
    return StageResult(metrics=metrics, tokens=None, extra=extra)
