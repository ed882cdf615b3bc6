"""Typed configs built from plain YAML data, with errors that name the YAML path.

Every config is a dataclass. ``build(cls, data, where)`` checks unknown keys,
missing required keys and value types (int, float, str, bool, Literal,
Optional, list, dict, nested dataclasses) and then calls the dataclass's
``check()`` hook for cross-field rules. Field ``metadata`` may carry ``help``
(documentation, shown by ``factory validate --explain``) and ``ref`` (``"model"``
or ``"dataset"``: the value names a recipe entry; the recipe checks it).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, Union

from foundation.errors import ConfigError

_MISSING = dataclasses.MISSING


def field(
    default: Any = _MISSING,
    *,
    help: str = "",
    ref: str | None = None,
    factory=None,
    hashed: bool = True,
    hashed_when_set: bool = False,
):
    """A dataclass field with help text and an optional reference kind.

    ``hashed=False`` marks knobs that cannot change a stage's result (how often
    to checkpoint or log): they stay out of the config hash, so changing them
    never invalidates a cached artifact. ``hashed_when_set=True`` keeps a field
    out of the hash while it is null: a knob added later leaves the cache key of
    every config that does not set it as it was."""
    meta = {"help": help, "hashed": hashed, "hashed_when_set": hashed_when_set}
    if ref:
        meta["ref"] = ref
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return f"bool {value}"
    if isinstance(value, (int, float)):
        return f"{type(value).__name__} {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


INT_LIMIT = 2**63 - 1  # every int a config holds must fit a signed 64-bit integer (torch, numpy, seeds)

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgGtT]?)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(value: Any) -> int | None:
    """``70M`` -> 70_000_000, ``1.5k`` -> 1500, ``4096`` -> 4096; None if not a count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            n = float(m.group(1)) * _SCALE[m.group(2).lower()]
            if math.isfinite(n) and n == int(n):
                return int(n)
    return None


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        raise ConfigError(where, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected a list, got {_describe(value)}")
        return [coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {_describe(value)}")
        return {str(k): coerce(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    return _coerce_scalar(tp, value, where)


def _coerce_union(tp: Any, value: Any, where: str) -> Any:
    """``X | Y | None``: null where allowed, else the first member type that accepts ``value``."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(where, f"expected {_type_name(tp)}, got null")
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:  # Optional[X]: X's own error is the precise one
        return coerce(options[0], value, where)
    for arg in options:
        try:
            return coerce(arg, value, where)
        except ConfigError:
            pass
    raise ConfigError(where, f"expected {_type_name(tp)}, got {_describe(value)}")


def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    """bool, int (with k/M/B size suffixes), float or str; any other type is a programming error."""
    if value is None:
        raise ConfigError(where, f"expected {_type_name(tp)}, got null")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        n = parse_count(value)
        if n is not None:
            if abs(n) > INT_LIMIT:
                raise ConfigError(where, f"{value} is out of range: it does not fit a 64-bit integer")
            return n
    elif tp is float:
        x = _as_float(value)
        if x is not None:
            if not math.isfinite(x):
                raise ConfigError(where, f"expected a finite number, got {_describe(value)}")
            return x
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {tp!r} at {where}")
    raise ConfigError(where, f"expected {_type_name(tp)}, got {_describe(value)}")


def _as_float(value: Any) -> float | None:
    """A YAML number or numeric string as a float (possibly inf or nan); None if it is neither.
    An int too large for a float is infinite here, so the caller reports it as not finite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a mapping, validating keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping, got {_describe(data)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{key}", f"unknown key (known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}{name}"
        if name in data:
            kwargs[name] = coerce(hints[name], data[name], path)
        elif f.default is _MISSING and f.default_factory is _MISSING:  # type: ignore[misc]
            raise ConfigError(path, "missing required key")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def require(cond: bool, where: str, key: str, message: str) -> None:
    """Raise ConfigError at ``where.key`` unless ``cond``; for ``check()`` hooks."""
    if not cond:
        raise ConfigError(f"{where}.{key}" if where else key, message)


def to_dict(obj) -> dict:
    """The config as plain data (what goes into manifests and hashes)."""
    return dataclasses.asdict(obj)


def hashed_dict(obj) -> dict:
    """The config as plain data, less references (their content is hashed as
    inputs) and fields marked ``hashed=False``."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)  # a reference field holding a config (a blend) hashes its non-reference parts
        if (f.metadata.get("ref") and not dataclasses.is_dataclass(value)) or not f.metadata.get("hashed", True):
            continue
        if value is None and f.metadata.get("hashed_when_set"):
            continue
        out[f.name] = hashed_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def refs(obj, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Field path -> (ref kind, referenced name) for every reference set, nested
    configs included (``calibration.data``)."""
    out = {}
    for f in dataclasses.fields(obj):
        kind = f.metadata.get("ref")
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(refs(value, f"{prefix}{f.name}."))
            continue
        if kind and value is not None:
            if isinstance(value, list):
                for i, v in enumerate(value):
                    out[f"{prefix}{f.name}[{i}]"] = (kind, v)
            elif isinstance(value, dict):  # label -> reference
                for label, v in value.items():
                    out[f"{prefix}{f.name}.{label}"] = (kind, v)
            else:
                out[f"{prefix}{f.name}"] = (kind, value)
    return out


def explain(cls, indent: str = "") -> list[str]:
    """Documentation lines for every field of ``cls`` (type, default, help)."""
    hints = _hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if f.default is not _MISSING:
            default = repr(f.default)
        elif f.default_factory is not _MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "required"
        lines.append(f"{indent}{f.name}: {_type_name(hints[f.name])} = {default}  # {f.metadata.get('help', '')}")
    return lines
