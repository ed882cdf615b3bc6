"""Judging parsed function calls against BFCL's possible answers, with the
semantics of BFCL's AST checker (written here from its documentation and
checked against its verdicts):

- a possible answer maps each function name to ``{param: [allowed values]}``;
  ``""`` among the allowed values means the parameter may be left out;
- the function name must be the one the model was shown: as documented
  (``math.factorial``), or with ``.`` replaced by ``_`` when the model was
  given the tools under such names (``Rules.underscore_names``);
- every parameter the schema requires must be given, every parameter given
  must be in the schema *and* in the possible answer, and every parameter of
  the possible answer without ``""`` must be given;
- a value must have the schema's type (an int passes for a float parameter; a
  value of the same type as an allowed value passes too, which is how BFCL
  accepts variable names and ``null`` defaults). A Python tuple is an
  ``array`` only for a ``tuple`` parameter. The items of an array must have
  the item type exactly (no int among floats, no float among integers),
  unless they have the type of the allowed list's first item; an allowed
  value that is not a list (a variable name, the blank) asks nothing of them;
- the value must equal an allowed value: strings after normalisation (case,
  spaces and ``,./-_*^`` ignored, ``'`` read as ``"``; a tab or a newline is
  not a space), lists element by element in order, and a dict against an
  allowed dict whose entries are themselves lists of allowed values;
- several expected calls are matched greedily, in order: each takes the first
  produced call, not yet taken, that answers it.

Where this still differs from BFCL: a value passes as a variable when it has
the type of *any* allowed value (BFCL: of the first one only); ``True`` never
equals ``1``; an empty list of allowed values reads as ``[[]]`` (BFCL: nothing
passes; two live_simple items have one).

``Rules(lenient=True)`` keeps looser readings: any whitespace ignored in
strings, a tuple accepted as an array, ints and floats mixed inside arrays,
both ``math.factorial`` and ``math_factorial`` accepted whichever was shown,
and parallel calls matched by the best assignment rather than greedily.

Every check returns ``None`` when it passes and a one-line reason (a ``Miss``,
whose ``kind`` names the failed check) when not."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OMIT = ""  # in a list of allowed values: the parameter may be left out

# BFCL schema types -> the Python types a parsed value may have.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "float": (int, float),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "tuple": (list,),
    "dict": (dict,),
    "object": (dict,),
}
# BFCL schema types -> the one Python type an array's item must have (BFCL reads "any" items as strings).
_ITEM_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
_IGNORED = re.compile(r"[ ,./\-_*^]")
_IGNORED_LENIENT = re.compile(r"[\s,./\-_*^]")


@dataclass(frozen=True)
class Rules:
    """How to judge. The defaults are BFCL's own checker. ``underscore_names``:
    the model was shown the functions with ``.`` replaced by ``_`` (function
    calling through an interface that forbids dots), so only that spelling is
    right. ``lenient``: the looser readings listed in the module doc."""

    lenient: bool = False
    underscore_names: bool = False


OFFICIAL = Rules()


@dataclass
class Call:
    """One parsed function call. ``positional`` holds arguments given without
    a name: BFCL calls are keyword-only, so any of them fails the call."""

    name: str
    args: dict = field(default_factory=dict)
    positional: list = field(default_factory=list)


class PyTuple(list):
    """A Python tuple literal read from a call (``y=(1, 2)``): a list to
    everything (equality, JSON) except the type check of an ``array``."""


class Miss(str):
    """Why a call does not match: the one-line reason, and in ``kind`` the
    check that failed, in BFCL's words (``type_error:nested``, ...)."""

    kind: str

    def __new__(cls, text: str, kind: str):
        self = super().__new__(cls, text)
        self.kind = kind
        return self

    def __getnewargs__(self):
        return str(self), self.kind

    def within(self, prefix: str) -> Miss:
        """The same miss, its reason prefixed with where it happened."""
        return Miss(prefix + self, self.kind)


def normalise(text: str, lenient: bool = False) -> str:
    """A string as BFCL compares it (see the module doc)."""
    return (_IGNORED_LENIENT if lenient else _IGNORED).sub("", text).lower().replace("'", '"')


def _short(value, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        PyTuple: "tuple",
        dict: "dict",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def type_error(value, schema: dict) -> str | None:
    """Why ``value`` does not have the type ``schema`` describes (recursing into
    array items and dict properties, an int passing for a float at any depth),
    or None."""
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


def _first_type(allowed: list) -> type | None:
    """The type of the first allowed value other than the blank: BFCL takes a
    value of that type as the answer's own spelling (a variable, a default)."""
    return next((type(a) for a in allowed if a != OMIT), None)


def item_type_error(value, allowed: list, schema: dict) -> Miss | None:
    """BFCL's stricter type rules for arrays: a Python tuple is no ``array``
    (it is a ``tuple``), and each item of an array must have the item type
    exactly, or the type of the first item of the allowed list it is held
    against; it passes when it does so for one allowed value, and any allowed
    value that is not a list (a variable name, the blank) lets it pass."""
    kind = schema.get("type")
    if kind == "array" and isinstance(value, PyTuple):
        return Miss("expected array, got tuple", "type_error:simple")
    items = schema.get("items")
    want = _ITEM_TYPES.get(items.get("type")) if kind in ("array", "tuple") and isinstance(items, dict) else None
    if want is None or not isinstance(value, list):
        return None
    first = None
    for alt in allowed:
        if not isinstance(alt, list):
            return None
        spelled = _first_type(alt)
        bad = next((i for i, v in enumerate(value) if type(v) is not want and type(v) is not spelled), None)
        if bad is None:
            return None
        first = bad if first is None else first
    if first is None:  # nothing allowed to hold it against
        return None
    return Miss(f"item {first}: expected {items['type']}, got {_type_name(value[first])}", "type_error:nested")


def _untuple(value):
    if isinstance(value, list):
        return [_untuple(v) for v in value]
    if isinstance(value, dict):
        return {k: _untuple(v) for k, v in value.items()}
    return value


def equal(value, allowed, lenient: bool = False) -> bool:
    """Whether a produced value equals one allowed value (see the module doc)."""
    if isinstance(allowed, dict):
        return isinstance(value, dict) and dict_error(value, allowed, lenient) is None
    if isinstance(allowed, list):
        return (
            isinstance(value, list)
            and len(value) == len(allowed)
            and all(equal(v, a, lenient) for v, a in zip(value, allowed))
        )
    if isinstance(allowed, str):
        return isinstance(value, str) and normalise(value, lenient) == normalise(allowed, lenient)
    if isinstance(allowed, bool) or isinstance(value, bool):
        return type(value) is type(allowed) and value == allowed
    if isinstance(allowed, (int, float)):
        return isinstance(value, (int, float)) and value == allowed
    return value == allowed


def _alternatives(options) -> list:
    # An allowed dict's entries are lists of alternatives; be lenient with a bare value.
    return options if isinstance(options, list) else [options]


def dict_error(value: dict, allowed: dict, lenient: bool = False) -> str | None:
    """A produced dict against an allowed dict of ``{key: [alternatives]}``."""
    for key, item in value.items():
        if key not in allowed:
            return f"unexpected key {key!r}"
        if not any(equal(item, a, lenient) for a in _alternatives(allowed[key])):
            return f"key {key!r}: value {_short(item)} not in {_short(_alternatives(allowed[key]))}"
    for key, options in allowed.items():
        if key not in value and OMIT not in _alternatives(options):
            return f"missing key {key!r}"
    return None


def _value_kind(value) -> str:
    if isinstance(value, str):
        return "value_error:string"
    return "value_error:list/tuple" if isinstance(value, list) else "value_error:others"


def value_error(value, allowed: list, schema: dict, rules: Rules = OFFICIAL) -> Miss | None:
    """Why a parameter value is wrong, or None: type first, then the value."""
    if not allowed:
        # A few live_simple answers list no alternative at all for a required
        # array ([]); read literally nothing could pass, so we read it as "[]".
        allowed = [[]]
    if rules.lenient:
        value = _untuple(value)
    else:
        err = item_type_error(value, allowed, schema)
        if err:
            return err
        if isinstance(value, PyTuple):  # a tuple for a "tuple" param: a list from here on, as in BFCL
            value = list(value)
    err = type_error(value, schema)
    if err and not any(type(value) is type(a) for a in allowed if a != OMIT):
        return Miss(err, "type_error:simple" if err.startswith("expected") else "type_error:nested")
    if any(equal(value, a, rules.lenient) for a in allowed):
        return None
    shown = [a for a in allowed if a != OMIT]
    if len(shown) == 1 and isinstance(shown[0], dict) and isinstance(value, dict):
        err = dict_error(value, shown[0], rules.lenient)
        return Miss(err, "value_error:dict_value" if " value " in err else "value_error:dict_key")
    return Miss(f"value {_short(value)} not in {_short(shown)}", _value_kind(value))


def shown_name(name: str, rules: Rules = OFFICIAL) -> str:
    """The name the model was given for the function documented as ``name``."""
    return name.replace(".", "_") if rules.underscore_names else name


def names_match(produced: str, expected: str, rules: Rules = OFFICIAL) -> bool:
    """Whether ``produced`` names the function documented as ``expected``."""
    if rules.lenient:  # either spelling: "math_factorial" is math.factorial
        return produced == expected or produced == expected.replace(".", "_")
    return produced == shown_name(expected, rules)


def call_error(
    call: Call, expected_name: str, expected_args: dict, schema: dict, rules: Rules = OFFICIAL
) -> Miss | None:
    """Why ``call`` is not the expected call, or None. ``schema`` is the BFCL
    function definition of ``expected_name``."""
    if not names_match(call.name, expected_name, rules):
        return Miss(f"wrong function: got {call.name} expected {shown_name(expected_name, rules)}", "wrong_func_name")
    if call.positional:
        return Miss(f"{len(call.positional)} positional argument(s): parameters must be named", "positional_args")
    params = schema.get("parameters") or {}
    props = params.get("properties") or {}
    for name in params.get("required") or []:
        if name not in call.args:
            return Miss(f"missing required param {name}", "missing_required")
    for name, value in call.args.items():
        if name not in props or name not in expected_args:
            return Miss(f"unexpected param {name}", "unexpected_param")
        err = value_error(value, expected_args[name], props[name], rules)
        if err:
            return err.within(f"param {name}: ")
    for name, allowed in expected_args.items():
        if name not in call.args and OMIT not in allowed:
            return Miss(f"missing param {name} (expected one of {_short(allowed)})", "missing_optional")
    return None


def _greedy(ok: list[list[bool]]) -> list[int | None]:
    """Each expected call (row), in order, to the first produced call (column)
    not yet taken that fits it, as BFCL matches them; the rows after the first
    that finds none are left unmatched (None)."""
    match: list[int | None] = [None] * len(ok)
    taken: set[int] = set()
    for row, fits in enumerate(ok):
        col = next((c for c, fit in enumerate(fits) if fit and c not in taken), None)
        if col is None:
            break
        match[row] = col
        taken.add(col)
    return match


def _assign(ok: list[list[bool]]) -> list[int | None]:
    """Each expected call (row) to a distinct produced call (column): maximum
    bipartite matching by augmenting paths (the lenient rules). Returns row ->
    column or None."""
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


def _describe_miss(calls: list[Call], errors: list[Miss | None], name: str, free: set[int], rules: Rules) -> Miss:
    if len(calls) == 1:
        return errors[0] or Miss("no match", "cannot_find_match")
    # The reason from a call to the same function that no other expected call
    # took says which argument is off; failing that, any call to it.
    same = [i for i, c in enumerate(calls) if names_match(c.name, name, rules)]
    if not same:
        return Miss(f"no call to {shown_name(name, rules)}", "cannot_find_match")
    wrong = [i for i in same if errors[i]]
    pick = next((i for i in wrong if i in free), wrong[0] if wrong else None)
    name = shown_name(name, rules)
    if pick is None:
        return Miss(f"{name}: each fitting call is taken by another expected call", "cannot_find_match")
    return Miss(f"{name}: {errors[pick]}", "cannot_find_match")


def match_calls(calls: list[Call], expected: list[dict], functions: list[dict], rules: Rules = OFFICIAL) -> Miss | None:
    """Why the produced ``calls`` do not answer ``expected`` (BFCL ground
    truth: a list of ``{name: {param: [allowed]}}``), or None when they do."""
    if not calls:
        return Miss("no call parsed", "no_call")
    if len(calls) != len(expected):
        return Miss(f"{len(expected)} call{'s' * (len(expected) != 1)} expected, {len(calls)} produced", "wrong_count")
    schemas = {f["name"]: f for f in functions}
    wanted = [next(iter(e.items())) for e in expected]
    errors = [[call_error(c, name, args, schemas.get(name, {}), rules) for c in calls] for name, args in wanted]
    match = (_assign if rules.lenient else _greedy)([[e is None for e in row] for row in errors])
    free = set(range(len(calls))) - set(match)
    for (name, _), row, col in zip(wanted, errors, match):
        if col is None:
            return _describe_miss(calls, row, name, free, rules)
    return None
