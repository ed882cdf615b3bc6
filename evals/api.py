"""The small interfaces the suite is built from: requests go to an engine,
completions come back, a task turns samples into requests and scores outputs.

Engines (``evals.engines``) know nothing about tasks; tasks (``evals.tasks``)
know nothing about engines; ``evals.runner`` joins them and aggregates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Sampling:
    """How to sample; recorded in results.json."""

    max_tokens: int = 512
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    n: int = 1  # completions per request (pass@k needs n >= k)
    seed: int = 0
    stop: list[str] | None = None


@dataclass
class Request:
    """One chat request: messages (OpenAI format), optional tools (JSON schema
    function definitions passed through the chat template's ``tools``), or a raw
    ``prompt`` string for completion-style tasks (few-shot, code continuation)."""

    messages: list[dict] | None = None
    tools: list[dict] | None = None
    prompt: str | None = None
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self):
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request has exactly one of messages or prompt")


@dataclass
class Completion:
    """What an engine returns for one request: ``n`` texts."""

    texts: list[str]
    tokens: list[int] = field(default_factory=list)  # generated tokens per text
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length"


class Engine(Protocol):
    """Chat requests in, completions out, batched by the engine as it likes.

    An engine whose ``streams`` is true calls ``on_done(i, completion)`` as each
    request ``i`` finishes (in any order), so a caller can keep completions as
    they are made; it still returns them all, in order."""

    name: str
    streams: bool

    def generate(
        self, requests: list[Request], progress: bool = True, on_done: Callable[[int, Completion], None] | None = None
    ) -> list[Completion]: ...

    def describe(self) -> dict[str, Any]:
        """Engine name, model path and hash, settings: recorded in results.json."""
        ...

    def close(self) -> None: ...


@dataclass
class Sample:
    """One item of a task: a stable id, the request, and what scoring needs."""

    id: str
    request: Request
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """A sample's verdict. ``metrics`` maps metric name -> value for this sample
    (usually 0/1); ``weights`` (default 1 each) make a metric a ratio of sums,
    e.g. IFEval's instruction-level accuracy counts instructions, not prompts.
    ``reason`` says why a sample failed (None when it passed)."""

    metrics: dict[str, float]
    reason: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """A generation task. ``samples`` loads data (fetched at run time, see
    docs/data-and-models.md) and builds requests; ``score`` judges the outputs."""

    name: str
    metrics: tuple[str, ...]  # the first one is the headline
    licence: str

    def samples(self, limit: int | None = None) -> list[Sample]: ...

    def score(self, sample: Sample, outputs: list[str]) -> Score: ...


class ModelTask(Protocol):
    """A task that needs the model itself rather than a chat engine, e.g.
    log-likelihood multiple choice through lm-evaluation-harness. Returns one
    record per sample: the sample, what the model chose (as text), its score."""

    name: str
    metrics: tuple[str, ...]
    licence: str

    def evaluate_model(
        self, model_path: str, limit: int | None = None, progress: bool = True, store: Any = None
    ) -> list[tuple[Sample, list[str], Score]]: ...
