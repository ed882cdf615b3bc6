"""Caching as an engine: ``CachedEngine`` stands in front of any engine.

It answers the requests whose completions the completion cache
(evals.completion_cache) holds, forwards the rest to the engine inside it, and
records what that engine returns: as each completion lands when the engine
``streams``, else chunk by chunk, so an interrupted run resumes where it stopped.
An inner engine that can say its cache identity before it is built
(``LazyEngine.planned_identity``) is not built at all when the cache holds every
completion. With no inner engine it only reads the cache (``factory eval
--cached-only``): the identity is the one under which the cache holds the most
of the requests, and a request it lacks is answered with None."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from evals.api import Completion, Request
from evals.completion_cache import CompletionCache, CompletionWriter, engine_identity
from evals.engines import ENGINES
from evals.engines.common import model_hash
from foundation.errors import FactoryError

CHUNK = 256  # requests per call to an engine that does not stream, each chunk on disk once done


class CachedEngine:
    """An engine that answers from ``cache`` what it can and asks ``inner`` for the rest.

    ``inner`` None: only the cache answers (``model`` and, optionally, ``engine``
    pick the identity to read, see ``cached_identity``). After ``generate``,
    ``reused`` says how many completions came from the cache, ``wall_s`` how long
    the inner engine took (0.0 when it was not asked), ``identity`` under which
    identity the completions were looked up. Nothing is ever passed to ``on_done``
    (``streams`` is false): the cache itself keeps completions as they land."""

    streams = False

    def __init__(
        self,
        inner: Any,
        cache: CompletionCache,
        model: str | None = None,
        engine: str | None = None,
        chunk: int = CHUNK,
    ):
        self.inner, self.cache, self.model, self.chunk = inner, cache, model, chunk
        self.name = getattr(inner, "name", "custom") if inner is not None else (engine or "none")
        self.engine = engine
        self.identity: dict | None = None
        self.reused, self.wall_s = 0, 0.0

    def generate(self, requests: list[Request], progress: bool = True) -> list[Completion | None]:
        if self.inner is None:
            self.identity, out = cached_identity(self.cache, requests, self.model, self.engine)
            self.reused, self.wall_s = sum(c is not None for c in out), 0.0
            return out
        out = self._all_planned(requests)
        if out is not None:
            print(
                f"[evals] all {len(requests)} completions from {self.cache.path}; engine {self.name} not started",
                file=sys.stderr,
            )
            self.reused, self.wall_s = len(requests), 0.0
            return out
        return self._forward(requests, progress)

    def describe(self) -> dict[str, Any]:
        """The inner engine's description; with none, what the cache was read as."""
        if self.inner is not None:
            return self.inner.describe()
        ident = self.identity or {"engine": self.engine}
        described = {
            "engine": ident.get("engine"),
            "dtype": ident.get("dtype"),
            "cached_only": True,
            "cache": str(self.cache.path),
        }
        if self.model is not None and Path(self.model).is_dir() and ident.get("model"):
            described["model_hash"] = ident["model"]
        return described

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def _all_planned(self, requests: list[Request]) -> list[Completion] | None:
        """Every completion, from the cache under the inner engine's planned identity,
        or None (that identity unknown before it is built, or a completion missing)."""
        planned = getattr(self.inner, "planned_identity", None)
        ident = planned() if planned is not None else None
        if ident is None:
            return None
        out = []
        for r in requests:
            out.append(self.cache.completion(self.cache.request_key(ident, r)))
            if out[-1] is None:
                return None
        self.identity = ident
        return out

    def _forward(self, requests: list[Request], progress: bool) -> list[Completion]:
        """Cached completions under the built engine's own identity; the rest generated
        (in one call when the engine streams, else in chunks) and recorded."""
        start = getattr(self.inner, "start", None)
        if start is not None:  # an engine built on first use: built now, so it describes itself
            start()
        self.identity = ident = engine_identity(self.inner.describe())
        t = time.perf_counter()
        keys = [self.cache.request_key(ident, r) for r in requests]
        out: list[Completion | None] = [self.cache.completion(k) for k in keys]
        todo = [i for i, c in enumerate(out) if c is None]
        self.reused = len(requests) - len(todo)
        if self.reused:
            print(f"[evals] {self.reused} of {len(requests)} completions from {self.cache.path}", file=sys.stderr)
        streams = getattr(self.inner, "streams", False)
        if streams:
            # one call keeps the engine's batch full to the end; each completion is kept as it lands
            batches = [todo] if todo else []
        else:
            batches = [todo[s : s + self.chunk] for s in range(0, len(todo), self.chunk)]
        for idx in batches:
            got = self._kept(streams, [requests[i] for i in idx], [keys[i] for i in idx], progress)
            for i, c in zip(idx, got):
                out[i] = c
        self.wall_s = time.perf_counter() - t
        return out

    def _kept(self, streams: bool, requests: list[Request], keys: list[str], progress: bool) -> list[Completion]:
        """One call of the inner engine whose completions end up in the cache (each row
        tagged with the identity): as they land when it ``streams``, else all at the end."""
        writer, kept = CompletionWriter(self.cache, engine=self.identity), set()

        def on_done(j: int, completion: Completion) -> None:
            kept.add(j)
            writer.add(keys[j], completion)

        try:
            extra = {"on_done": on_done} if streams else {}
            got = self.inner.generate(requests, progress=progress, **extra)
        finally:
            writer.close()
        if len(got) != len(requests):
            raise FactoryError(f"engine {self.name} returned {len(got)} completions for {len(requests)} requests")
        rest = [j for j in range(len(requests)) if j not in kept]  # all of a chunk; a streamed call's unstarted ones
        if rest:
            self.cache.add_completions([keys[j] for j in rest], [got[j] for j in rest], self.identity)
        return got


# dtypes an engine may have recorded, tried for rows written before each row named its engine
_DTYPES = (None, "auto", "float32", "bfloat16", "float16")
_PROBE = 256  # requests used to choose among candidate identities


def cached_identity(
    cache: CompletionCache, requests: list[Request], model: str, engine: str | None = None
) -> tuple[dict | None, list[Completion | None]]:
    """The engine identity under which ``cache`` holds the most of ``requests`` for
    ``model`` (restricted to ``engine`` when given), and the completion it holds for
    each request under that identity (None where it holds none)."""
    digest = model_hash(model)
    want = digest or model
    candidates = [
        i for i, _ in cache.identities() if i.get("model") == want and (engine is None or i.get("engine") == engine)
    ]
    if digest:
        candidates += [
            {"engine": e, "dtype": d, "model": digest} for e in ([engine] if engine else ENGINES) for d in _DTYPES
        ]

    def held(ident: dict, among: list[Request]) -> int:
        return sum(cache.completion(cache.request_key(ident, r)) is not None for r in among)

    probe = requests[:: max(1, len(requests) // _PROBE)]
    for among in (probe, requests):  # a sample first; everything if the sample holds none
        best, hits = None, 0
        for ident in candidates:
            n = held(ident, among)
            if n > hits:
                best, hits = ident, n
        if best is not None:
            return best, [cache.completion(cache.request_key(best, r)) for r in requests]
    return None, [None] * len(requests)
