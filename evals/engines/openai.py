"""The OpenAI-compatible engine: any server with /v1/chat/completions (and
/v1/completions for raw prompts) - vLLM serve, NIM, transformers serve, ...

Requests run concurrently on a thread pool; connection errors, 429 and 5xx are
retried with exponential backoff, other errors are a one-line FactoryError (a
wrong model name should stop the run, not score zero). Tool calls the server
parsed out of the answer are turned back into ``<tool_call>{json}</tool_call>``
text, so scorers read the same thing from every engine."""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from tqdm.auto import tqdm

from evals.api import Completion, Request
from evals.engines import register
from evals.engines.common import check_positive, tool_calls_text
from foundation.errors import FactoryError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@register("openai")
class OpenAIEngine:
    """Chat (or completion) requests sent to an OpenAI-compatible HTTP server."""

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        concurrency: int = 16,
        timeout: float = 600.0,
        retries: int = 5,
        backoff: float = 1.0,
        n_per_request: bool = True,
        extra_body: dict | None = None,
    ):
        self.check(concurrency=concurrency, retries=retries)
        import httpx  # optional: httpx (the dev extra) is needed only by this engine

        self.model, self.base_url = model, base_url.rstrip("/")
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        self.n_per_request, self.extra_body = n_per_request, dict(extra_body or {})
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "EMPTY")
        self.client = httpx.Client(
            timeout=timeout,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_connections=concurrency),
        )

    @staticmethod
    def check(concurrency: int, retries: int, **_) -> None:
        """Reject bad setting values before any connection (see engines.check_engine_settings)."""
        check_positive("openai", concurrency=concurrency)
        if not isinstance(retries, int) or retries < 0:
            raise FactoryError(f"engine openai: setting 'retries' must be an integer >= 0 (got {retries!r})")

    streams = True  # on_done as each request finishes

    def generate(self, requests: list[Request], progress: bool = True, on_done=None) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        with (
            ThreadPoolExecutor(self.concurrency) as pool,
            tqdm(total=len(requests), desc="openai generate", unit="req", disable=not progress) as bar,
        ):
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()  # re-raises a request's error (the pool finishes the rest first)
                bar.update(1)
                if on_done is not None:
                    on_done(i, results[i])
        return results

    # ---- one request --------------------------------------------------------------------------

    def _one(self, req: Request) -> Completion:
        s = req.sampling
        if s.n > 1 and not self.n_per_request:  # servers without ``n``: one call per sample
            parts = [self._call(req, 1, s.seed + j) for j in range(s.n)]
            return Completion(
                texts=[t for p in parts for t in p.texts],
                tokens=[t for p in parts for t in p.tokens],
                finish_reasons=[f for p in parts for f in p.finish_reasons],
            )
        return self._call(req, s.n, s.seed)

    def _call(self, req: Request, n: int, seed: int) -> Completion:
        s = req.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "seed": seed,
            **self.extra_body,
        }
        if n != 1:
            body["n"] = n
        if s.top_p < 1.0:
            body["top_p"] = s.top_p
        if s.stop:
            body["stop"] = list(s.stop)
        if req.prompt is not None:
            path, body["prompt"] = "/completions", req.prompt
        else:
            path, body["messages"] = "/chat/completions", req.messages
            if req.tools:
                body["tools"] = req.tools
        data = self._post(path, body)
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise FactoryError(f"engine openai: {self.base_url}{path} returned {len(choices)} choices for n={n}")
        texts = [_choice_text(c) for c in choices]
        # The server reports tokens per response, not per choice: split evenly when n > 1.
        total = int((data.get("usage") or {}).get("completion_tokens") or 0)
        tokens = [total // n + (1 if j < total % n else 0) for j in range(n)]
        reasons = [_finish(c.get("finish_reason")) for c in choices]
        return Completion(texts=texts, tokens=tokens, finish_reasons=reasons)

    def _post(self, path: str, body: dict) -> dict:
        import httpx  # optional: httpx (the dev extra) is needed only by this engine

        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            try:
                resp = self.client.post(url, json=body)
            except httpx.TransportError as e:
                error = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    return resp.json()
                error = f"HTTP {resp.status_code}: {_message(resp)}"
                if resp.status_code not in RETRY_STATUS:
                    break
            if attempt < self.retries:
                time.sleep(min(30.0, self.backoff * 2**attempt) * (0.5 + random.random() / 2))
        raise FactoryError(f"engine openai: {url} failed after {attempt + 1} attempt(s): {error}")

    # ---- the Engine protocol, rest ---------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        served = None
        try:  # what the server says it serves (vLLM reports the checkpoint path as ``root``)
            resp = self.client.get(f"{self.base_url}/models", timeout=10)
            served = next((m for m in resp.json().get("data", []) if m.get("id") == self.model), None)
        except Exception:  # noqa: BLE001 - provenance only; never fail a run over it
            pass
        return {
            "engine": self.name,
            "model": self.model,
            "model_hash": None,
            "base_url": self.base_url,
            "served_model": served,
            "concurrency": self.concurrency,
            "retries": self.retries,
            "n_per_request": self.n_per_request,
            "extra_body": self.extra_body,
        }

    def close(self) -> None:
        self.client.close()


def _choice_text(choice: dict) -> str:
    if "message" not in choice:  # /completions
        return choice.get("text") or ""
    message = choice["message"] or {}
    text = message.get("content") or ""
    calls = tool_calls_text(message.get("tool_calls"))
    return f"{text}\n{calls}" if text and calls else text or calls


def _finish(reason: str | None) -> str:
    # "tool_calls" means the model stopped by itself after calling; so does "eos"
    return "length" if reason == "length" else "stop"


def _message(resp) -> str:
    try:
        err = resp.json()
        err = err.get("error", err) if isinstance(err, dict) else err
        msg = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        msg = resp.text
    return " ".join(str(msg).split())[:300]
