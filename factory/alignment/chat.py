"""Render a conversation with the model's own chat template and mark the tokens
the model should learn: the assistant turns, each with exactly one
end-of-turn token, and nothing of the template around them.

The mask is found from the template itself, not from knowledge of any one
format: the text of turn ``i`` is what rendering ``messages[:i+1]`` adds to
rendering ``messages[:i]`` with a generation prompt. Character spans are mapped
to tokens through the fast tokenizer's offsets, so a token counts as assistant
when it starts inside an assistant span."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from factory.sources.datasets import RecordError
from factory.training.losses import IGNORE_INDEX
from foundation.errors import FactoryError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside assistant turns
    text: str


def tool_call(call, where: str, label: str) -> dict:
    """A tool call as chat templates take it: ``{"type": "function", "function":
    {"name", "arguments": dict}}``, from that form or the bare ``{name,
    arguments}``, with arguments as an object or a JSON string."""
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RecordError(where, "missing field", f"{label} needs a function 'name'")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise RecordError(
                where, "invalid tool call JSON", f"{label}: arguments are not valid JSON ({e.msg} at column {e.colno})"
            ) from e
    if not isinstance(args, dict):
        raise RecordError(where, "invalid tool call JSON", f"{label}: arguments must be a JSON object")
    return {"type": "function", "function": {"name": fn["name"], "arguments": args}}


def _check_message(m, i: int, where: str) -> None:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise RecordError(where, "missing field", f"message {i} needs string 'role' and 'content'")
    role, content, calls = m["role"], m.get("content"), m.get("tool_calls")
    if role not in ROLES:
        raise RecordError(
            where, "unknown role", f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
        )
    if not isinstance(content, str) and not (role == "assistant" and calls and content is None):
        raise RecordError(
            where,
            "missing field" if content is None else "wrong type",
            f"message {i} needs string 'role' and 'content'",
        )
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise RecordError(where, "wrong type", f"message {i}: tool_calls must be a list on an assistant turn")
        for j, call in enumerate(calls):
            tool_call(call, where, f"message {i}: tool call {j}")
    if role == "assistant" and not (content or "").strip() and not calls:
        raise RecordError(where, "empty assistant turn", f"message {i}: empty assistant turn")


def check_conversation(messages: list[dict], where: str) -> None:
    """Structure errors in a conversation, with ``where`` (file:line) in the
    message; each a RecordError whose ``reason`` names the kind of fault."""
    if not messages:
        raise RecordError(where, "empty conversation")
    last = None
    for i, m in enumerate(messages):
        _check_message(m, i, where)
        role = m["role"]
        if role == "system" and i != 0:
            raise RecordError(where, "misplaced system message", f"message {i}: a system message may only come first")
        if role in ("user", "assistant") and role == last:
            raise RecordError(
                where, "roles do not alternate", f"message {i}: two {role} turns in a row (roles must alternate)"
            )
        if role == "tool" and not (last == "tool" or (last == "assistant" and messages[i - 1].get("tool_calls"))):
            raise RecordError(
                where, "roles do not alternate", f"message {i}: a tool turn must answer an assistant tool call"
            )
        last = role
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(where, "no assistant turn", "no assistant turn to learn from")


def _render(tokenizer, messages, generation_prompt: bool, tools=None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every assistant turn, each
    ending right after its end-of-turn token."""
    full = _render(tokenizer, messages, False, tools)
    eot = tokenizer.eos_token
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True, tools) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False, tools)
        if not full.startswith(upto) or not upto.startswith(before):
            raise FactoryError(
                "the chat template does not render conversations incrementally; "
                "assistant masks cannot be derived from it"
            )
        end = upto.find(eot, len(before)) if eot else -1
        end = end + len(eot) if end >= 0 else len(upto)  # one end-of-turn token, not the newline after it
        spans.append((len(before), end))
    return full, spans


def render(tokenizer, messages: list[dict], tools=None, max_length: int | None = None, first_turn: int = 0) -> Rendered:
    """Token ids and labels (-100 outside assistant turns) of a conversation.

    Only assistant turns at index ``first_turn`` or later are labelled: a
    preference pair learns its final answer, not the answers in its prompt."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    earlier = sum(1 for m in messages[:first_turn] if m["role"] == "assistant")
    spans = spans[earlier:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = []
    k = 0
    for tok_id, (start, _) in zip(ids, enc["offset_mapping"]):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        inside = k < len(spans) and spans[k][0] <= start < spans[k][1]
        labels.append(tok_id if inside else IGNORE_INDEX)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return Rendered(input_ids=ids, labels=labels, text=text)


def collate(batch: list[Rendered], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, labels (-100 on padding), attention_mask."""
    n = max(len(r.input_ids) for r in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, r in enumerate(batch):
        ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
