"""Run a suite on one model: load every task's samples first (bad data fails
before any generation), build the engine once, generate every task's requests
in one batched call, score, then run the tasks that need the model itself
(log-likelihood through lm-eval) after the engine has released its memory.
Everything lands in one results.json (see evals.results). With a completion
cache (evals.completion_cache), the engine is wrapped in a CachedEngine
(evals.engines.cached): completions are on disk as soon as they are made, and a
rerun generates only what is missing. With ``cached_only``, no engine is built:
the tasks whose every completion (or whole log-likelihood record) is in the
cache are scored, the others are listed under ``missing``; the cache is only
read, so this is safe beside a running eval."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from evals import results as res
from evals import stats
from evals.api import Completion, Request, Sample
from evals.completion_cache import CompletionCache, LoglikStore, writer_lock
from evals.engines import LazyEngine
from evals.engines.cached import CHUNK, CachedEngine
from evals.engines.choice import AUTO, resolve_engine
from evals.engines.common import model_hash
from evals.suite import Suite, TaskEntry
from evals.tasks import get_task
from foundation.errors import FactoryError


@dataclass
class Planned:
    entry: TaskEntry
    task: Any
    limit: int | None
    sampling: dict[str, Any]  # explicit keys applied on top of the task's own
    samples: list[Sample] | None = None  # None: a model task (evaluate_model)

    @property
    def needs_model(self) -> bool:
        return self.samples is None


def effective_limit(entry_limit: int | None, cap: int | None) -> int | None:
    limits = [x for x in (entry_limit, cap) if x is not None]
    return min(limits) if limits else None


def with_sampling(request: Request, explicit: dict) -> Request:
    if not explicit:
        return request
    return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, **explicit))


def plan(suite: Suite, limit: int | None = None, sampling: dict | None = None, progress: bool = True) -> list[Planned]:
    """Build every task and load its samples (fetching data as needed)."""
    out = []
    bar = tqdm(suite.entries, desc="loading tasks", unit="task", disable=not progress, file=sys.stderr)
    for i, entry in enumerate(bar):
        bar.set_postfix_str(entry.name)
        where = f"{suite.file}: tasks[{i}]"
        try:
            task = get_task(entry.task, where=where, **entry.options)
        except FactoryError as e:  # a task's own check of its options: say which entry
            raise FactoryError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
        p = Planned(entry, task, effective_limit(entry.limit, limit), suite.sampling_for(entry, sampling))
        if not hasattr(task, "evaluate_model"):
            p.samples = [
                dataclasses.replace(s, request=with_sampling(s.request, p.sampling)) for s in task.samples(p.limit)
            ]
            ids = [str(s.id) for s in p.samples]
            if len(set(ids)) != len(ids):
                raise FactoryError(f"{suite.file}: task {entry.name}: sample ids are not unique")
        out.append(p)
    return out


def model_identity(model: str, described: dict) -> dict:
    """Where the model is and its content hash (the engine's, when it computed one)."""
    digest = described.get("model_hash") or model_hash(model)
    if Path(model).is_dir():
        return {"path": str(Path(model).resolve()), "hash": digest}
    return {"name": model, "hash": digest}


def _score(p: Planned, completions: list, progress: bool) -> list[dict]:
    records = []
    pairs = zip(p.samples, completions)
    for s, c in tqdm(
        pairs,
        total=len(p.samples),
        desc=f"scoring {p.entry.name}",
        unit="sample",
        disable=not progress,
        file=sys.stderr,
    ):
        score = p.task.score(s, c.texts)
        records.append(res.sample_record(p.entry.name, s, c.texts, score, c.finish_reasons, c.tokens))
    return records


def _check_model_tasks(planned: list[Planned], model: str) -> None:
    """Before any generation: log-likelihood tasks read the checkpoint itself."""
    for p in planned:
        if p.needs_model and not Path(model).is_dir():
            raise FactoryError(
                f"task {p.entry.name} scores log-likelihoods and needs a local HF checkpoint; "
                f"{model!r} is not a directory"
            )


def model_task_key(p: Planned, digest: str | None) -> str:
    """A model task's records are keyed by the model's content and the code they depend
    on (the task's own ``code_hash`` when it has one, else all of evals)."""
    code = getattr(p.task, "code_hash", res.code_hash)()
    return CompletionCache.task_key(
        {"model": digest, "code": code},
        {"task": p.entry.task, "name": p.entry.name, "options": p.entry.options, "limit": p.limit},
    )


def _model_task(
    p: Planned, model: str, digest: str | None, progress: bool, cache: CompletionCache | None
) -> list[dict]:
    """Records of a log-likelihood task; ``digest`` is the model's content hash (keys the cache)."""
    if cache is not None:
        key = model_task_key(p, digest)
        kept = cache.records(key)
        if kept is not None:
            print(f"[evals] {p.entry.name}: {len(kept)} records from {cache.path}", file=sys.stderr)
            return kept
    store = None
    if cache is not None:  # answers kept as computed: an interrupted task resumes inside itself
        from evals.harness.fast_lm import numerics_hash  # heavy: torch and lm-eval, only for these tasks

        store = LoglikStore(cache, {"model": digest, "code": numerics_hash()})
    triples = p.task.evaluate_model(str(model), limit=p.limit, progress=progress, store=store)
    records = [res.sample_record(p.entry.name, s, outs, score) for s, outs, score in triples]
    if cache is not None:
        cache.add_records(key, records)
    return records


def _task_entry(p: Planned, records: list[dict], wall: float, boot: dict) -> dict:
    metrics = tuple(getattr(p.task, "metrics", ()))
    # a model task scores log-likelihoods: no sampling to record
    sampling = dataclasses.asdict(p.samples[0].request.sampling) if p.samples else None
    return {
        "task": p.entry.task,
        "options": p.entry.options,
        "limit": p.limit,
        "sampling": sampling,
        "licence": getattr(p.task, "licence", None),
        "headline": metrics[0] if metrics else None,
        "n": len(records),
        "wall_s": round(wall, 3),
        "metrics": res.summarize(records, metrics, boot["resamples"], boot["seed"], boot["level"]),
    }


def _engine(
    model: str,
    suite: Suite,
    engine: Any,
    settings: dict | None,
    cache: CompletionCache | None,
    cached_only: bool,
    tokens: int | None = None,
) -> tuple[Any, bool, str | None]:
    """The engine generation goes through, whether the run owns (so closes) it, and
    why ``auto`` chose it (None: not chosen; ``tokens``: what the run may generate).

    ``engine``: an engine object the caller built, or a name (None: the suite's),
    built on first use with the suite's settings and the caller's on top. With a
    cache, a CachedEngine stands in front of it; with ``cached_only``, a
    CachedEngine with nothing behind it."""
    if cached_only:
        return CachedEngine(None, cache, model=model, engine=engine if isinstance(engine, str) else None), True, None
    owned = engine is None or isinstance(engine, str)
    inner, reason = engine, None
    if owned:
        # auto: hf or vllm, whichever is faster here for this much generation
        name, chosen, reason = resolve_engine(
            engine or suite.engine, {**suite.settings_for("vllm"), **(settings or {})}, tokens
        )
        inner = LazyEngine(
            name,
            model,
            {**chosen, **suite.settings_for(name), **(settings or {})},
            where=f"{suite.file}: engine_settings.{name}",
        )
    return (CachedEngine(inner, cache, chunk=CHUNK) if cache is not None else inner), owned, reason


def _run_generation(
    planned: list[Planned], eng: Any, cached_only: bool, progress: bool, records: dict, walls: dict, missing: dict
) -> dict:
    """Generate and score every generation task; returns the engine's description
    with what generation took. A task some of whose completions the engine could
    not give (a cache read alone) is not scored but listed in ``missing``."""
    if not planned:  # no generation task: no engine is started
        return {"name": getattr(eng, "name", "custom"), **({"cached_only": True} if cached_only else {})}
    # Every task's requests go to the engine in one call, so a batching engine keeps
    # its batch full across tasks (a task of 20 prompts alone would leave most of a
    # 64-row batch idle). Each task is charged the share of generation time its
    # generated tokens took, plus its own scoring time.
    requests = [s.request for p in planned for s in p.samples]
    if isinstance(eng, LazyEngine):
        eng.start()  # loading the model is not generation time
    t = time.perf_counter()
    completions = eng.generate(requests, progress=progress)
    spent, reused = time.perf_counter() - t, 0
    if isinstance(eng, CachedEngine):  # it knows what the cache gave and how long its engine took
        spent, reused = eng.wall_s, eng.reused
    if len(completions) != len(requests):
        raise FactoryError(f"engine {eng.name} returned {len(completions)} completions for {len(requests)} requests")
    complete, start = [], 0
    for p in planned:
        part = completions[start : start + len(p.samples)]
        start += len(p.samples)
        have = sum(c is not None for c in part)
        if have < len(part):
            missing[p.entry.name] = {"have": have, "of": len(part)}
        else:
            complete.append((p, part))
    tokens = _score_all(
        [p for p, _ in complete], [c for _, part in complete for c in part], spent, progress, records, walls
    )
    return {
        **eng.describe(),
        "generation": {"requests": len(requests), "tokens": tokens, "wall_s": round(spent, 3), "reused": reused},
    }


def _score_all(
    planned: list[Planned], completions: list[Completion], spent: float, progress: bool, records: dict, walls: dict
) -> int:
    """Score each task's slice of ``completions``; ``spent`` seconds of generation are
    charged to the tasks by their share of the generated tokens. Returns the tokens."""
    counts = [sum(c.tokens) for c in completions]
    tokens = sum(counts)
    start = 0
    for p in planned:
        end = start + len(p.samples)
        # share by generated tokens; by requests if the engine counted none
        share = sum(counts[start:end]) / tokens if tokens else (end - start) / max(len(completions), 1)
        t = time.perf_counter()
        records[p.entry.name] = _score(p, completions[start:end], progress)
        walls[p.entry.name] = time.perf_counter() - t + spent * share
        start = end
    return tokens


def run_suite(
    model: str,
    suite: Suite,
    engine: Any = None,
    engine_settings: dict | None = None,
    limit: int | None = None,
    sampling: dict | None = None,
    out: Path | None = None,
    label: str | None = None,
    progress: bool = True,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
    cache: Path | None = None,
    cached_only: bool = False,
) -> dict:
    """Evaluate ``model`` (an HF dir, or a served model's name for openai) on ``suite``.

    ``engine``: None (the suite's), an engine name, or an engine object the
    caller built and will close itself. Generation tasks run first; tasks that
    need the model itself run after the engine is closed and its memory freed.
    ``cache``: a JSONL file of completions (and log-likelihood task records) to
    reuse and extend, so an interrupted run resumes; None: keep nothing. Only one
    run may write a cache at a time. ``cached_only``: build no engine and compute
    nothing; score what ``cache`` holds and list the incomplete tasks under
    ``missing`` (``engine``, if a name, picks among the engines the cache holds)."""
    t0 = time.perf_counter()
    if cached_only and cache is None:
        raise FactoryError("scoring only cached completions needs a completions file")
    if cached_only and not Path(cache).is_file():
        raise FactoryError(f"{cache}: no such completions file to score")
    with contextlib.ExitStack() as stack:
        if cache is not None and not cached_only:
            stack.enter_context(writer_lock(Path(cache)))
        return _run_suite(
            t0,
            model,
            suite,
            engine,
            engine_settings,
            limit,
            sampling,
            out,
            label,
            progress,
            {"resamples": resamples, "seed": seed, "level": stats.LEVEL},
            cache,
            cached_only,
        )


def _run_suite(
    t0: float,
    model: str,
    suite: Suite,
    engine: Any,
    engine_settings: dict | None,
    limit: int | None,
    sampling: dict | None,
    out: Path | None,
    label: str | None,
    progress: bool,
    boot: dict,
    cache: Path | None,
    cached_only: bool,
) -> dict:
    planned = plan(suite, limit, sampling, progress)
    if not cached_only:
        _check_model_tasks(planned, model)
    kept = CompletionCache(cache, readonly=cached_only) if cache is not None else None
    records: dict[str, list[dict]] = {}
    walls: dict[str, float] = {}
    missing: dict[str, dict] = {}
    generated = [p for p in planned if not p.needs_model]
    tokens = sum(s.request.sampling.max_tokens * s.request.sampling.n for p in generated for s in p.samples)
    eng, owned, chosen = _engine(model, suite, engine, engine_settings, kept, cached_only, tokens)
    try:
        described = _run_generation(generated, eng, cached_only, progress, records, walls, missing)
    finally:
        if owned:  # before the model tasks, which load the model again
            eng.close()
    if chosen:
        described = {**described, "chosen_by": f"{AUTO}: {chosen}"}
    identity = {**model_identity(model, described), "label": label or Path(model).name or model}
    _run_model_tasks(planned, model, identity["hash"], progress, kept, cached_only, records, walls, missing)
    planned = [p for p in planned if p.entry.name in records]
    if cached_only and not planned:
        raise FactoryError(
            f"{cache}: no task of suite {suite.name} has all it needs in this file "
            f"(the model or engine differ, or it is too early)"
        )
    results = _results(identity, described, suite, limit, sampling, boot, planned, records, walls)
    if missing:
        results["missing"] = missing
    results["wall_s"] = round(time.perf_counter() - t0, 3)
    if out is not None:
        res.write(results, Path(out))
    return results


def _run_model_tasks(
    planned: list[Planned],
    model: str,
    digest: str | None,
    progress: bool,
    kept: CompletionCache | None,
    cached_only: bool,
    records: dict,
    walls: dict,
    missing: dict,
) -> None:
    """Run (or, with ``cached_only``, read back from the cache) every task that
    needs the model itself; one the cache does not hold whole goes to ``missing``."""
    for p in planned:
        if p.needs_model and cached_only:
            found = kept.records(model_task_key(p, digest))
            if found is None:
                missing[p.entry.name] = {"have": 0, "of": p.limit}
            else:
                records[p.entry.name], walls[p.entry.name] = found, 0.0
        elif p.needs_model:
            t = time.perf_counter()
            records[p.entry.name] = _model_task(p, model, digest, progress, kept)
            walls[p.entry.name] = time.perf_counter() - t


def _results(
    identity: dict,
    described: dict,
    suite: Suite,
    limit: int | None,
    sampling: dict | None,
    boot: dict,
    planned: list[Planned],
    records: dict,
    walls: dict,
) -> dict:
    """The results document of the scored tasks (see evals.results), before
    ``missing`` and the total wall time are added."""
    return {
        "format": res.FORMAT,
        "model": identity,
        "engine": described,
        "suite": {"name": suite.name, "hash": suite.hash, "file": suite.file},
        "limit": limit,
        "sampling_overrides": sampling or {},
        "bootstrap": boot,
        "versions": res.versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": {p.entry.name: _task_entry(p, records[p.entry.name], walls[p.entry.name], boot) for p in planned},
        "samples": [r for p in planned for r in records[p.entry.name]],
    }
