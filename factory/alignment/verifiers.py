"""Verifiable prompts for building preference pairs from a model's own samples.

A source yields ``Verifiable`` items: a chat prompt and a ``check(answer) ->
score in [0, 1]``. Sources never draw from evaluation sets (no IFEval, GSM8K
or MBPP test items), so pairs built here do not leak into the eval suite:

- ``reasoning-gym``: procedural tasks (arithmetic, gsm_symbolic, ...) scored
  by the generator's own verifier;
- ``constraints``: IFEval-style format constraints (lowercase, word counts,
  keywords, JSON, ...) drawn from lm-eval's instruction registry with seeded
  random arguments on top of our own writing topics, checked by its checkers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from foundation.errors import FactoryError


@dataclass
class Verifiable:
    id: str
    messages: list[dict]
    check: Callable[[str], float]
    runs_code: bool = False  # check() runs the answer as a program (a sandbox verdict)


ANSWER_HINT = "Think briefly, then give the final answer on the last line as 'Answer: <answer>'."


def final_answer(text: str) -> str:
    """The text after the last 'Answer:' (or the last non-empty line)."""
    hits = re.findall(r"answer\s*(?:is)?\s*[:=]\s*(.+)", text, flags=re.IGNORECASE)
    if hits:
        return hits[-1].strip().strip("*$ .")
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else ""


def reasoning_gym_items(tasks: list[str], n: int, seed: int) -> Iterator[Verifiable]:
    import reasoning_gym  # heavy: only verifier-built pairs need its generators

    per_task = -(-n // len(tasks))
    for t, name in enumerate(tasks):
        try:
            ds = reasoning_gym.create_dataset(name, size=per_task, seed=seed + t)
        except Exception as e:  # the registry raises plain errors on unknown names
            raise FactoryError(f"reasoning-gym has no task {name!r} ({e})") from None
        for i, entry in enumerate(ds):
            messages = [{"role": "user", "content": f"{entry['question']}\n\n{ANSWER_HINT}"}]

            def check(text: str, entry=entry, ds=ds) -> float:
                return float(ds.score_answer(answer=final_answer(text), entry=entry) or 0.0)

            yield Verifiable(f"{name}-{i}", messages, check)


TOPICS = (
    "a rainy afternoon in a small town",
    "how bees find flowers",
    "learning to ride a bicycle",
    "the history of the printing press",
    "why the sky is blue",
    "a recipe for vegetable soup",
    "the life of a lighthouse keeper",
    "how to plan a weekend hike",
    "the water cycle",
    "a letter to a friend who moved away",
    "what makes a good teacher",
    "the planets of the solar system",
    "caring for a houseplant",
    "a day at a busy train station",
    "how a library organises its books",
    "the first snow of winter",
)
FORMS = (
    "Write a short paragraph about {}.",
    "Write a brief story about {}.",
    "Explain {} to a child.",
    "Write a short note about {}.",
)
# Instruction ids whose random arguments need nothing but the response to check.
CONSTRAINTS = (
    "change_case:english_lowercase",
    "change_case:english_capital",
    "punctuation:no_comma",
    "length_constraints:number_words",
    "length_constraints:number_sentences",
    "detectable_format:number_bullet_lists",
    "detectable_format:title",
    "keywords:existence",
    "keywords:forbidden_words",
    "startend:end_checker",
    "startend:quotation",
    "detectable_format:json_format",
    "detectable_content:postscript",
    "keywords:letter_frequency",
)


def constraint_items(n: int, seed: int, per_prompt: int = 1) -> Iterator[Verifiable]:
    from evals.tasks.ifeval import registry as ifeval_registry  # lm-eval's checkers, offline punkt, seeded

    registry = ifeval_registry()
    rng = random.Random(seed)
    for i in range(n):
        topic = rng.choice(TOPICS)
        ids = rng.sample(CONSTRAINTS, per_prompt)
        checkers, texts = [], []
        for cid in ids:
            checker = registry[cid](cid)
            random.seed(rng.random())  # lm-eval draws its random arguments from the global generator
            texts.append(checker.build_description())
            checkers.append(checker)
        prompt = rng.choice(FORMS).format(topic) + " " + " ".join(texts)

        def check(text: str, checkers=checkers) -> float:
            return float(all(bool(text.strip()) and c.check_following(text) for c in checkers))

        yield Verifiable(f"constraints-{i}", [{"role": "user", "content": prompt}], check)
