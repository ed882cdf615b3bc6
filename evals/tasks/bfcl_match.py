"""Judging parsed function calls against BFCL's possible answers, with the
semantics of BFCL's AST checker (written here from its documentation):

- a possible answer maps each function name to ``{param: [allowed values]}``;
  ``""`` among the allowed values means the parameter may be left out;
- every parameter the schema requires must be given, every parameter given
  must be in the schema *and* in the possible answer, and every parameter of
  the possible answer without ``""`` must be given;
- a value must have the schema's type (an int passes for a float; a value of
  the same type as one of the allowed values passes too, which is how BFCL
  accepts variable names and ``null`` defaults) and equal an allowed value:
  strings after normalisation (case, whitespace and ``,./-_*^`` ignored, ``'``
  read as ``"``), lists element by element in order, and a dict against an
  allowed dict whose entries are themselves lists of allowed values;
- several expected calls are matched to the produced calls as a set: each
  expected call to its own produced call, in any order.

Every check returns ``None`` when it passes and a one-line reason when not."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OMIT = ""  # in a list of allowed values: the parameter may be left out

# BFCL schema types -> the Python types a parsed value may have.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "float": (int, float), "number": (int, float),
    "boolean": (bool,), "array": (list,), "tuple": (list,), "dict": (dict,), "object": (dict,),
}
_IGNORED = re.compile(r"[\s,./\-_*^]")


@dataclass
class Call:
    """One parsed function call. ``positional`` holds arguments given without
    a name: BFCL calls are keyword-only, so any of them fails the call."""

    name: str
    args: dict = field(default_factory=dict)
    positional: list = field(default_factory=list)


def normalise(text: str) -> str:
    return _IGNORED.sub("", text).lower().replace("'", '"')


def _short(value, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "dict", type(None): "null"}.get(type(value), type(value).__name__)


def type_error(value, schema: dict) -> str | None:
    """Why ``value`` does not have the type ``schema`` describes (recursing into
    array items and dict properties), or None."""
    kind = schema.get("type")
    allowed = _TYPES.get(kind)
    if allowed is None:  # "any" or a type we do not know: anything goes
        return None
    # bool is a subclass of int in Python, but True is no integer to BFCL.
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        return f"expected {kind}, got {_type_name(value)}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            err = type_error(item, schema["items"])
            if err:
                return f"item {i}: {err}"
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        for key, item in value.items():
            sub = schema["properties"].get(key)
            err = type_error(item, sub) if isinstance(sub, dict) else None
            if err:
                return f"key {key!r}: {err}"
    return None


def equal(value, allowed) -> bool:
    """Whether a produced value equals one allowed value (see the module doc)."""
    if isinstance(allowed, dict):
        return isinstance(value, dict) and dict_error(value, allowed) is None
    if isinstance(allowed, list):
        return (isinstance(value, list) and len(value) == len(allowed)
                and all(equal(v, a) for v, a in zip(value, allowed)))
    if isinstance(allowed, str):
        return isinstance(value, str) and normalise(value) == normalise(allowed)
    if isinstance(allowed, bool) or isinstance(value, bool):
        return type(value) is type(allowed) and value == allowed
    if isinstance(allowed, (int, float)):
        return isinstance(value, (int, float)) and value == allowed
    return value == allowed


def _alternatives(options) -> list:
    # An allowed dict's entries are lists of alternatives; be lenient with a bare value.
    return options if isinstance(options, list) else [options]


def dict_error(value: dict, allowed: dict) -> str | None:
    """A produced dict against an allowed dict of ``{key: [alternatives]}``."""
    for key, item in value.items():
        if key not in allowed:
            return f"unexpected key {key!r}"
        if not any(equal(item, a) for a in _alternatives(allowed[key])):
            return f"key {key!r}: value {_short(item)} not in {_short(_alternatives(allowed[key]))}"
    for key, options in allowed.items():
        if key not in value and OMIT not in _alternatives(options):
            return f"missing key {key!r}"
    return None


def value_error(value, allowed: list, schema: dict) -> str | None:
    """Why a parameter value is wrong, or None: type first, then the value."""
    if not allowed:
        # A few live_simple answers list no alternative at all for a required
        # array ([]); read literally nothing could pass, so we read it as "[]".
        allowed = [[]]
    err = type_error(value, schema)
    if err and not any(type(value) is type(a) for a in allowed if a != OMIT):
        return err
    if any(equal(value, a) for a in allowed):
        return None
    shown = [a for a in allowed if a != OMIT]
    if len(shown) == 1 and isinstance(shown[0], dict) and isinstance(value, dict):
        return dict_error(value, shown[0])
    return f"value {_short(value)} not in {_short(shown)}"


def names_match(produced: str, expected: str) -> bool:
    # OpenAI-style tool names may not contain dots; "math_factorial" is math.factorial.
    return produced == expected or produced == expected.replace(".", "_")


def call_error(call: Call, expected_name: str, expected_args: dict, schema: dict) -> str | None:
    """Why ``call`` is not the expected call, or None. ``schema`` is the BFCL
    function definition of ``expected_name``."""
    if not names_match(call.name, expected_name):
        return f"wrong function: got {call.name} expected {expected_name}"
    if call.positional:
        return f"{len(call.positional)} positional argument(s): parameters must be named"
    params = schema.get("parameters") or {}
    props = params.get("properties") or {}
    for name in params.get("required") or []:
        if name not in call.args:
            return f"missing required param {name}"
    for name, value in call.args.items():
        if name not in props or name not in expected_args:
            return f"unexpected param {name}"
        err = value_error(value, expected_args[name], props[name])
        if err:
            return f"param {name}: {err}"
    for name, allowed in expected_args.items():
        if name not in call.args and OMIT not in allowed:
            return f"missing param {name} (expected one of {_short(allowed)})"
    return None


def _assign(ok: list[list[bool]]) -> list[int | None]:
    """Each expected call (row) to a distinct produced call (column): maximum
    bipartite matching by augmenting paths. Returns row -> column or None."""
    owner: dict[int, int] = {}

    def augment(row: int, seen: set[int]) -> bool:
        for col, fits in enumerate(ok[row]):
            if fits and col not in seen:
                seen.add(col)
                if col not in owner or augment(owner[col], seen):
                    owner[col] = row
                    return True
        return False

    for row in range(len(ok)):
        augment(row, set())
    match: list[int | None] = [None] * len(ok)
    for col, row in owner.items():
        match[row] = col
    return match


def _describe_miss(calls: list[Call], errors: list[str | None], name: str, free: set[int]) -> str:
    if len(calls) == 1:
        return errors[0] or "no match"
    # The reason from a call to the same function that no other expected call
    # took says which argument is off; failing that, any call to it.
    same = [i for i, c in enumerate(calls) if names_match(c.name, name)]
    if not same:
        return f"no call to {name}"
    wrong = [i for i in same if errors[i]]
    pick = next((i for i in wrong if i in free), wrong[0] if wrong else None)
    if pick is None:
        return f"{name}: each fitting call is taken by another expected call"
    return f"{name}: {errors[pick]}"


def match_calls(calls: list[Call], expected: list[dict], functions: list[dict]) -> str | None:
    """Why the produced ``calls`` do not answer ``expected`` (BFCL ground
    truth: a list of ``{name: {param: [allowed]}}``), or None when they do."""
    if not calls:
        return "no call parsed"
    if len(calls) != len(expected):
        return f"{len(expected)} call{'s' * (len(expected) != 1)} expected, {len(calls)} produced"
    schemas = {f["name"]: f for f in functions}
    wanted = [next(iter(e.items())) for e in expected]
    errors = [[call_error(c, name, args, schemas.get(name, {})) for c in calls] for name, args in wanted]
    match = _assign([[e is None for e in row] for row in errors])
    free = set(range(len(calls))) - set(match)
    for (name, _), row, col in zip(wanted, errors, match):
        if col is None:
            return _describe_miss(calls, row, name, free)
    return None
