"""Chat rendering that both training and evaluation use: whether a tokenizer's
chat template renders tools, and the conversation rewritten for one that
does not (tool schemas in the system turn, calls inline as text)."""

from __future__ import annotations

import json


def for_template(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) ready for ``tokenizer``'s chat template: unchanged when
    the template renders tools, else with tools and calls written inline."""
    has_calls = any(m.get("tool_calls") for m in messages)
    if (tools or has_calls) and not template_supports_tools(tokenizer):
        return inline_tools(messages, tools), None
    return messages, tools


def template_supports_tools(tokenizer) -> bool:
    """Whether the chat template renders tool definitions and tool calls at all
    (SmolLM2's and the tiny ChatML template do not: they would drop them)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return "tools" in template and "tool_calls" in template


def inline_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The conversation for a template that knows no tools: the tool schemas
    go into the system message and each call into its assistant turn as
    ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` text, so the
    model still sees the tools and learns to write the calls."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None) or []
        text = "".join(
            "<tool_call>"
            + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False)
            + "</tool_call>"
            for c in calls
        )
        m["content"] = (m.get("content") or "") + text
        out.append(m)
    if tools:
        schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        listing = f"You can call these tools:\n<tools>\n{schemas}\n</tools>"
        if out and out[0]["role"] == "system":
            out[0]["content"] = out[0]["content"] + "\n\n" + listing
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out
