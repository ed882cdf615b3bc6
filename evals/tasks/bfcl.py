"""BFCL (Berkeley Function Calling Leaderboard) v4, the single-turn AST
categories: the model gets a question and function definitions and must answer
with the right call(s); the calls are parsed (never executed) and matched
against BFCL's possible answers (``evals.tasks.bfcl_match``).

Data: bfcl-eval==2026.3.23 (Apache-2.0), read as files, never installed (it
pins old numpy). Its ``.json`` files hold one JSON record per line.

The functions reach the model as OpenAI function tools through the chat
template's ``tools`` (BFCL's schema dialect converted to JSON Schema), or, with
``functions_in: system``, listed in a system message for templates that ignore
``tools``. Outputs are read as ``<tool_call>`` blocks, JSON call objects or
lists, or Python call syntax (``[f(a=1), math.g(b='x')]``) parsed with ``ast``.
Only ``<tool_call>`` blocks are looked for inside prose; otherwise the whole
output (or its first fenced code block) must be the call(s), as in BFCL's own
prompt mode, so that prose mentioning ``f(x)`` is not read as a call."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from evals.api import Request, Sample, Sampling, Score
from evals.data import fetch_member, read_jsonl
from evals.tasks import pysource, register
from evals.tasks.bfcl_match import OFFICIAL, Call, PyTuple, Rules, match_calls
from foundation.errors import FactoryError

PACKAGE, VERSION = "bfcl-eval", "2026.3.23"
# option value -> file stem; "simple" is BFCL's simple_python
CATEGORIES = {
    "simple": "simple_python",
    "simple_python": "simple_python",
    "multiple": "multiple",
    "parallel": "parallel",
    "parallel_multiple": "parallel_multiple",
    "irrelevance": "irrelevance",
    "live_simple": "live_simple",
}
NO_ANSWERS = ("irrelevance",)  # correct when no call is made: no possible-answer file
FUNCTIONS_IN = ("tools", "system")
TOOL_NAMES = ("documented", "underscore")

# ---------------------------------------------------------------- data


def member(stem: str, answers: bool = False) -> str:
    return f"bfcl_eval/data/{'possible_answer/' if answers else ''}BFCL_v4_{stem}.json"


def _read(path: Path, fields: tuple[str, ...]) -> list[dict]:
    out = []
    for i, rec in enumerate(read_jsonl(path), 1):
        missing = [f for f in fields if f not in rec]
        if missing:
            raise FactoryError(f"{path}: record {i}: BFCL record has no {missing[0]!r}")
        out.append(rec)
    return out


def load_items(stem: str, path: Path | None = None, answers: Path | None = None) -> list[dict]:
    """Records ``{id, question, function, ground_truth?}`` of one category
    (fetched from PyPI once, then cached); ground truth joined by id."""
    path = path or fetch_member(PACKAGE, VERSION, member(stem))
    items = _read(path, ("id", "question", "function"))
    if stem in NO_ANSWERS:
        return items
    answers = answers or fetch_member(PACKAGE, VERSION, member(stem, answers=True))
    truth = {r["id"]: r["ground_truth"] for r in _read(answers, ("id", "ground_truth"))}
    for item in items:
        if item["id"] not in truth:
            raise FactoryError(f"{answers}: no possible answer for BFCL item {item['id']!r}")
        item["ground_truth"] = truth[item["id"]]
    return items


# ---------------------------------------------------------------- schema

_TYPE_NAMES = {"dict": "object", "float": "number", "tuple": "array"}
_SUBSCHEMA_KEYS = ("items", "additionalProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _json_type(kind):
    if isinstance(kind, list):
        return [_json_type(k) for k in kind if k != "any"]
    return _TYPE_NAMES.get(kind, kind)


def to_json_schema(schema: dict) -> dict:
    """BFCL's schema dialect as JSON Schema: dict -> object, float -> number,
    tuple -> array, "any" -> no type (JSON Schema's "anything"), the non-standard
    ``optional`` flag dropped (``required`` already says it). Only schema
    positions are rewritten: a property *named* "type" or a default value that
    happens to hold "dict" is left alone."""
    out = {}
    for key, value in schema.items():
        if key == "type":
            if value != "any":
                out["type"] = _json_type(value)
        elif key == "optional":
            continue
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub) if isinstance(sub, dict) else sub for name, sub in value.items()}
        elif key in _SUBSCHEMA_KEYS and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            out[key] = [to_json_schema(s) if isinstance(s, dict) else s for s in value]
        else:
            out[key] = value
    return out


def to_tool(function: dict, underscore_names: bool = False) -> dict:
    """One BFCL function as an OpenAI function tool; ``underscore_names``: its
    name with ``.`` replaced by ``_``, for interfaces that forbid dots."""
    name = function["name"].replace(".", "_") if underscore_names else function["name"]
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": function.get("description", ""),
            "parameters": to_json_schema(function.get("parameters") or {"type": "dict"}),
        },
    }


SYSTEM_PROMPT = (
    "You can call the functions described below. When the request can be served by them, "
    "reply with the call(s) only, as a Python list: [func_name(param=value, ...), ...]. "
    "When none of them fits, say so in words and call nothing.\n\nFunctions (JSON Schema):\n"
)


def build_messages(item: dict, tools: list[dict], functions_in: str) -> list[dict]:
    messages = [dict(m) for turn in item["question"] for m in turn]
    if functions_in == "system":
        listing = SYSTEM_PROMPT + "\n".join(json.dumps(t["function"]) for t in tools)
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = listing + "\n\n" + messages[0]["content"]
        else:
            messages.insert(0, {"role": "system", "content": listing})
    return messages


# ---------------------------------------------------------------- parsing

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?=</tool_call>|<tool_call>|\Z)", re.S)
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n?(.*?)```", re.S)
_PREFIXES = ("<|python_tag|>", "[TOOL_CALLS]")
_SEPARATORS = " \t\r\n;,"
_BAD_SOURCE = (SyntaxError, ValueError, TypeError, MemoryError, RecursionError)


def _plain(value):
    """A literal as JSON-like data: sets become lists, tuples ``PyTuple`` lists
    (BFCL's checker tells a tuple from an array), anything JSON cannot hold
    (complex, bytes, ...) its repr."""
    if isinstance(value, tuple):
        return PyTuple(_plain(v) for v in value)
    if isinstance(value, (list, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {
            k if isinstance(k, (str, int, float, bool)) or k is None else repr(k): _plain(v) for k, v in value.items()
        }
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _from_structure(obj) -> list[Call] | None:
    """Calls in decoded JSON (or a Python literal): ``{name, arguments |
    parameters}`` with arguments as an object or a JSON string, the OpenAI
    ``{type: function, function: {...}}`` wrapper, ``{tool_calls: [...]}``, or
    a list of these. None when it is something else."""
    if isinstance(obj, list):
        calls: list[Call] = []
        for item in obj:
            got = _from_structure(item)
            if got is None:
                return None
            calls += got
        return calls
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("tool_calls"), list):
        return _from_structure(obj["tool_calls"])
    if isinstance(obj.get("function"), dict):
        return _from_structure(obj["function"])
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(args, (dict, type(None))):
        return None
    return [Call(name, args or {})]


def _json_values(text: str) -> list | None:
    """Consecutive JSON values separated by whitespace, ``;`` or ``,``; None
    unless the whole text is consumed."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and text[pos] in _SEPARATORS:
            pos += 1
        if pos == len(text):
            return values or None
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _value(node):
    """An argument's value. Literals are read with ``ast.literal_eval``; a
    bare name or any other expression becomes its source text (BFCL's
    possible answers spell variables that way, e.g. ``data['sales']``)."""
    if isinstance(node, ast.Tuple):
        return PyTuple(_value(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_value(e) for e in node.elts]
    try:
        return _plain(ast.literal_eval(node))
    except _BAD_SOURCE:
        pass
    if isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
        keys = [_value(k) for k in node.keys]
        if all(isinstance(k, str) for k in keys):
            return dict(zip(keys, (_value(v) for v in node.values)))
    return node.id if isinstance(node, ast.Name) else ast.unparse(node)


def _call(node: ast.Call) -> Call | None:
    name = _dotted(node.func)
    if name is None or any(kw.arg is None for kw in node.keywords):  # f(**kw): nothing to check
        return None
    return Call(name, {kw.arg: _value(kw.value) for kw in node.keywords}, [_value(a) for a in node.args])


def _python_calls(text: str) -> list[Call] | None:
    """``f(a=1)``, ``[f(a=1), g.h(b=2)]``, one call per line, or a Python
    literal in one of the JSON layouts."""
    try:
        tree = pysource.parse(text, mode="eval")
        nodes = tree.body.elts if isinstance(tree.body, (ast.List, ast.Tuple)) else [tree.body]
    except _BAD_SOURCE:
        try:
            module = pysource.parse(text, mode="exec")
        except _BAD_SOURCE:
            return None
        if not all(isinstance(s, ast.Expr) for s in module.body):
            return None
        nodes = [s.value for s in module.body]
        tree = None
    if all(isinstance(n, ast.Call) for n in nodes):
        calls = [_call(n) for n in nodes]
        return None if any(c is None for c in calls) else calls
    if tree is None:
        return None
    try:
        return _from_structure(_plain(ast.literal_eval(tree.body)))
    except _BAD_SOURCE:
        return None


def _parse_block(text: str) -> list[Call] | None:
    text = text.strip()
    for prefix in _PREFIXES:
        text = text.removeprefix(prefix).strip()
    if not text:
        return None
    values = _json_values(text)
    if values is not None:
        calls = _from_structure(values[0] if len(values) == 1 else values)
        if calls is not None:
            return calls
    return _python_calls(text)


def parse_calls(text: str) -> list[Call] | None:
    """The calls in a model output; ``[]`` for an explicitly empty list and
    None when no call could be read."""
    try:
        text = _THINK.sub("", text)
        blocks = _TOOL_CALL.findall(text)
        if blocks:
            calls = [c for b in blocks for c in (_parse_block(b) or [])]
            return calls or None
        fence = _FENCE.search(text)
        return _parse_block(fence.group(1) if fence else text)
    except RecursionError:  # absurdly nested output: not a call
        return None


def show(call: Call) -> str:
    args = [repr(a) for a in call.positional] + [f"{k}={v!r}" for k, v in call.args.items()]
    return f"{call.name}({', '.join(args)})"


# ---------------------------------------------------------------- task


def judge(item: dict, output: str, irrelevance: bool, rules: Rules = OFFICIAL) -> tuple[bool, str | None, list[Call]]:
    """(correct, reason, parsed calls) for one output; the reason of a wrong
    answer is a ``bfcl_match.Miss`` (its ``kind`` names the failed check)."""
    calls = parse_calls(output) or []
    if irrelevance:
        return (not calls, f"expected no call, got {show(calls[0])}" if calls else None, calls)
    reason = match_calls(calls, item["ground_truth"], item["function"], rules)
    return reason is None, reason, calls


def _record(call: Call) -> dict:
    rec = {"name": call.name, "arguments": call.args}
    if call.positional:
        rec["positional"] = call.positional
    return rec


@register("bfcl")
class BFCL:
    """The Task. Options: ``category`` (simple, multiple, parallel,
    parallel_multiple, irrelevance, live_simple), ``max_tokens`` and
    ``functions_in`` (``tools``: the chat template's tools, BFCL's function
    calling mode; ``system``: a system message listing them, BFCL's prompt mode,
    for templates without tool support), ``tool_names`` (``documented``: the
    tools carry the names as documented, ``math.factorial``; ``underscore``:
    ``math_factorial``, for interfaces that forbid dots; the right answer names
    the function as it was shown) and ``lenient`` (false: BFCL's own checker;
    true: the looser readings of ``bfcl_match.Rules``)."""

    name = "bfcl"
    metrics = ("accuracy",)
    licence = "Apache-2.0"

    def __init__(
        self,
        category: str = "simple",
        max_tokens: int = 512,
        functions_in: str = "tools",
        tool_names: str = "documented",
        lenient: bool = False,
    ):
        if category not in CATEGORIES:
            raise FactoryError(
                f"task bfcl: unknown category {category!r} "
                f"(known: {', '.join(k for k in CATEGORIES if k != 'simple_python')})"
            )
        if functions_in not in FUNCTIONS_IN:
            raise FactoryError(
                f"task bfcl: functions_in must be one of {', '.join(FUNCTIONS_IN)}, not {functions_in!r}"
            )
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            raise FactoryError(f"task bfcl: max_tokens must be a positive integer, not {max_tokens!r}")
        if tool_names not in TOOL_NAMES or (tool_names == "underscore" and functions_in != "tools"):
            raise FactoryError(
                f"task bfcl: tool_names must be one of {', '.join(TOOL_NAMES)} "
                f"('underscore' only with functions_in: tools), not {tool_names!r}"
            )
        if not isinstance(lenient, bool):
            raise FactoryError(f"task bfcl: lenient must be true or false, not {lenient!r}")
        self.category, self.stem = category, CATEGORIES[category]
        self.max_tokens, self.functions_in = max_tokens, functions_in
        self.rules = Rules(lenient=lenient, underscore_names=tool_names == "underscore")

    def sample(self, item: dict) -> Sample:
        tools = [to_tool(f, self.rules.underscore_names) for f in item["function"]]
        request = Request(
            messages=build_messages(item, tools, self.functions_in),
            tools=tools if self.functions_in == "tools" else None,
            sampling=Sampling(max_tokens=self.max_tokens),
        )
        data = {"function": item["function"]}
        if "ground_truth" in item:
            data["ground_truth"] = item["ground_truth"]
        return Sample(id=item["id"], request=request, data=data)

    def samples(self, limit: int | None = None) -> list[Sample]:
        items = load_items(self.stem)
        return [self.sample(it) for it in (items if limit is None else items[:limit])]

    def score(self, sample: Sample, outputs: list[str]) -> Score:
        if not outputs:
            return Score({"accuracy": 0.0}, reason="no output")
        verdicts = [judge(sample.data, out, self.stem in NO_ANSWERS, self.rules) for out in outputs]
        ok, reason, calls = verdicts[0]
        return Score(
            {"accuracy": sum(v[0] for v in verdicts) / len(verdicts)},
            reason=None if reason is None else str(reason),
            details={"calls": [_record(c) for c in calls]},
        )
