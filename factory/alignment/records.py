"""Alignment records: conversations (SFT) and preference pairs (DPO), parsed
from the layouts datasets come in and checked before any training starts.

Every layout becomes OpenAI-style messages (``role``: system, user, assistant
or tool; ``content``), an assistant's tool calls as
``{"type": "function", "function": {"name", "arguments": {...}}}`` and tools as
``{"type": "function", "function": {json schema}}``: the forms HF chat
templates take. A bad record is a one-line error naming its file and line, or,
with ``on_bad_record: skip``, is skipped and counted by reason in a
``BadRecords`` that the stage writes into its manifest."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from factory.alignment.chat import check_conversation, tool_call
from factory.sources.datasets import DatasetSpec, RecordError, iter_records
from foundation.errors import FactoryError

CONVERSATION_FORMATS = ("chat", "instruction", "sharegpt")

# sharegpt speakers -> roles; function_call and observation are the glaive tool-call layout
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


@dataclass
class Conversation:
    messages: list[dict]
    tools: list[dict] | None
    where: str  # "file:line"


@dataclass
class Preference:
    prompt: list[dict]  # up to the answer; ends with a user (or tool) turn
    chosen: list[dict]  # assistant message(s) completing the prompt
    rejected: list[dict]
    tools: list[dict] | None
    where: str


@dataclass
class BadRecords:
    """Records seen and kept, and the skipped ones counted by reason (with the
    first place each reason was met, to find it again)."""

    seen: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)

    def skip(self, err: RecordError) -> None:
        self.reasons[err.reason] += 1
        self.first.setdefault(err.reason, str(err))

    def as_dict(self) -> dict:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "skipped": self.seen - self.kept,
            "reasons": dict(sorted(self.reasons.items())),
            "first": dict(sorted(self.first.items())),
        }


# ---- fields and messages -------------------------------------------------------------------------


def _field(rec: dict, name: str, where: str, kinds: tuple[type, ...] = (str,), required: bool = True):
    if name not in rec or rec[name] is None:
        if required:
            raise RecordError(where, "missing field", f"missing field {name!r}")
        return None
    if not isinstance(rec[name], kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise RecordError(where, "wrong type", f"field {name!r} must be {want}, got {type(rec[name]).__name__}")
    return rec[name]


def _messages_field(rec: dict, spec: DatasetSpec, where: str) -> list:
    name = spec.messages_field
    if name not in rec and name == "messages" and "conversations" in rec:
        name = "conversations"
    msgs = rec.get(name)
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(
            where,
            "missing field" if msgs is None else "wrong type",
            f"field {name!r} must be a non-empty list of messages",
        )
    return msgs


def _tools(rec: dict, spec: DatasetSpec, where: str) -> list[dict] | None:
    """Tool definitions from a list or a JSON string; bare ``{name, parameters}``
    schemas are wrapped as function tools. None when there are none."""
    value = rec.get(spec.tools_field)
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as e:
            raise RecordError(
                where,
                "invalid tools JSON",
                f"field {spec.tools_field!r} is not valid JSON ({e.msg} at column {e.colno})",
            ) from e
    if not value:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RecordError(where, "wrong type", f"field {spec.tools_field!r} must be a list of tool objects")
    tools = []
    for t in value:
        fn = t.get("function", t)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RecordError(where, "missing field", f"field {spec.tools_field!r}: a tool needs a 'name'")
        tools.append({"type": t.get("type", "function"), "function": fn})
    return tools


def _sharegpt_message(m: dict, i: int, where: str) -> dict:
    speaker, value = m.get("from"), m.get("value")
    if speaker not in SHAREGPT_ROLES:
        raise RecordError(
            where,
            "unknown role",
            f"message {i}: unknown speaker {speaker!r} (expected one of {', '.join(SHAREGPT_ROLES)})",
        )
    if not isinstance(value, str):
        raise RecordError(
            where, "missing field" if value is None else "wrong type", f"message {i} needs string 'from' and 'value'"
        )
    if speaker != "function_call":
        return {"role": SHAREGPT_ROLES[speaker], "content": value}
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as e:
        raise RecordError(
            where,
            "invalid tool call JSON",
            f"message {i}: function_call is not valid JSON ({e.msg} at column {e.colno})",
        ) from e
    calls = calls if isinstance(calls, list) else [calls]  # a list: parallel calls
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [tool_call(c, where, f"message {i}: tool call {j}") for j, c in enumerate(calls)],
    }


def _message(m, i: int, where: str) -> dict:
    """One message from either layout: ``role``/``content`` (OpenAI) or ``from``/``value`` (sharegpt)."""
    if isinstance(m, dict) and "role" not in m and "from" in m:
        return _sharegpt_message(m, i, where)
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise RecordError(where, "missing field", f"message {i} needs string 'role' and 'content'")
    out = {k: m[k] for k in ("role", "content", "name", "tool_call_id") if k in m}
    if m.get("tool_calls") is not None:
        if not isinstance(m["tool_calls"], list):
            raise RecordError(where, "wrong type", f"message {i}: tool_calls must be a list")
        out["tool_calls"] = [tool_call(c, where, f"message {i}: tool call {j}") for j, c in enumerate(m["tool_calls"])]
        if out.get("content") is None:
            out["content"] = ""  # templates concatenate content; a tool-call turn may have none
    return out


def _messages(raw: list, where: str, offset: int = 0) -> list[dict]:
    return [_message(m, offset + i, where) for i, m in enumerate(raw)]


# ---- formats -------------------------------------------------------------------------------------


def parse_chat(rec: dict, spec: DatasetSpec, where: str) -> Conversation:
    msgs = _messages(_messages_field(rec, spec, where), where)
    check_conversation(msgs, where)
    return Conversation(msgs, _tools(rec, spec, where), where)


def parse_instruction(rec: dict, spec: DatasetSpec, where: str) -> Conversation:
    """alpaca: instruction, input, output, optional system and history ([[user, assistant], ...])."""
    instruction, output = _field(rec, "instruction", where), _field(rec, "output", where)
    extra = _field(rec, "input", where, required=False) or ""
    system = _field(rec, "system", where, required=False)
    history = _field(rec, "history", where, (list,), required=False) or []
    msgs = [{"role": "system", "content": system}] if system else []
    for k, turn in enumerate(history):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RecordError(where, "wrong type", f"history entry {k} must be a [user, assistant] pair of strings")
        msgs += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    user = instruction + "\n\n" + extra if extra.strip() else instruction
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    check_conversation(msgs, where)
    return Conversation(msgs, None, where)


def parse_sharegpt(rec: dict, spec: DatasetSpec, where: str) -> Conversation:
    msgs = _messages(_messages_field(rec, spec, where), where)
    check_conversation(msgs, where)
    return Conversation(msgs, _tools(rec, spec, where), where)


def _answer(rec: dict, name: str, where: str, offset: int) -> list[dict]:
    """chosen / rejected: a string, one message, or a list of messages."""
    value = _field(rec, name, where, (str, dict, list))
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    msgs = _messages(value if isinstance(value, list) else [value], where, offset)
    if not msgs or msgs[0]["role"] != "assistant":
        raise RecordError(where, "roles do not alternate", f"field {name!r} must start with an assistant turn")
    return msgs


def _prompt(rec: dict, spec: DatasetSpec, where: str) -> list[dict]:
    if "prompt" in rec:
        value = _field(rec, "prompt", where, (str, list))
        msgs = [{"role": "user", "content": value}] if isinstance(value, str) else _messages(value, where)
        system = _field(rec, "system", where, required=False)
        return ([{"role": "system", "content": system}] if system else []) + msgs
    return _messages(_messages_field(rec, spec, where), where)


def parse_preference(rec: dict, spec: DatasetSpec, where: str) -> Preference:
    """prompt (string or messages) or messages / conversations, plus chosen and
    rejected (strings, messages, or lists of messages)."""
    prompt = _prompt(rec, spec, where)
    if not prompt or prompt[-1].get("role") not in ("user", "tool"):
        raise RecordError(where, "roles do not alternate", "the prompt must end with a user turn")
    chosen = _answer(rec, "chosen", where, len(prompt))
    rejected = _answer(rec, "rejected", where, len(prompt))
    check_conversation(prompt + chosen, where)
    check_conversation(prompt + rejected, where)
    if _same(chosen, rejected):
        raise RecordError(where, "chosen equals rejected", "chosen is identical to rejected")
    return Preference(prompt, chosen, rejected, _tools(rec, spec, where), where)


def _same(a: list[dict], b: list[dict]) -> bool:
    strip = [dict(m, content=m["content"].strip()) for m in a], [dict(m, content=m["content"].strip()) for m in b]
    return strip[0] == strip[1]


PARSERS: dict[str, Callable] = {
    "chat": parse_chat,
    "instruction": parse_instruction,
    "sharegpt": parse_sharegpt,
    "preference": parse_preference,
}


# ---- reading -------------------------------------------------------------------------------------


def _parsed(spec: DatasetSpec, base: Path, bad: BadRecords | None, formats: tuple[str, ...], what: str):
    if spec.format not in formats:
        raise FactoryError(
            f"{spec.path or spec.hub or spec.packaged}: {what} need format {' or '.join(formats)} (got {spec.format})"
        )
    bad = bad if bad is not None else BadRecords()
    parse = PARSERS[spec.format]
    for where, rec in iter_records(spec, base):
        if spec.max_documents is not None and bad.kept >= spec.max_documents:
            return
        bad.seen += 1
        try:
            if isinstance(rec, RecordError):
                raise rec
            item = parse(rec, spec, where)
        except RecordError as e:
            if spec.on_bad_record == "error":
                raise
            bad.skip(e)
            continue
        bad.kept += 1
        yield item


def iter_conversations(spec: DatasetSpec, base: Path, bad: BadRecords | None = None) -> Iterator[Conversation]:
    """The conversations of a chat, instruction or sharegpt dataset, in stored order."""
    return _parsed(spec, base, bad, CONVERSATION_FORMATS, "conversations")


def iter_preferences(spec: DatasetSpec, base: Path, bad: BadRecords | None = None) -> Iterator[Preference]:
    """The preference pairs of a preference dataset, in stored order."""
    return _parsed(spec, base, bad, ("preference",), "preference pairs")
