"""foundation.chat: a conversation with tools passes through to a template that
renders tools, and is rewritten with the tools and calls inline for one that does not."""

import copy
import json
from types import SimpleNamespace

import pytest

from foundation.chat import for_template, inline_tools, template_supports_tools

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
CONVERSATION = [
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "-3 C"},
    {"role": "assistant", "content": "It is -3 C."},
]
WITH_TOOLS = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.tool_calls }}{% endfor %}"
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"

LISTING = "You can call these tools:\n<tools>\n" + json.dumps(TOOL, ensure_ascii=False) + "\n</tools>"
CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>'


def tokenizer(template):
    return SimpleNamespace(chat_template=template)


@pytest.mark.parametrize(
    "template, supports",
    [
        (WITH_TOOLS, True),
        (CHATML, False),
        ("{{ tools }}", False),  # renders definitions but would drop the calls
        ("{{ m.tool_calls }}", False),  # renders calls but not the definitions
        (None, False),
        ({"default": WITH_TOOLS}, False),  # a mapping of named templates is not read
    ],
)
def test_template_supports_tools(template, supports):
    assert template_supports_tools(tokenizer(template)) is supports


def test_for_template_passes_through_when_the_template_renders_tools():
    messages, tools = for_template(tokenizer(WITH_TOOLS), CONVERSATION, [TOOL])
    assert messages is CONVERSATION and tools == [TOOL]


def test_for_template_inlines_for_a_template_without_tools():
    before = copy.deepcopy(CONVERSATION)
    messages, tools = for_template(tokenizer(CHATML), CONVERSATION, [TOOL])
    assert tools is None
    assert messages == [
        {"role": "system", "content": LISTING},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": CALL_TEXT},
        {"role": "tool", "content": "-3 C"},
        {"role": "assistant", "content": "It is -3 C."},
    ]
    assert CONVERSATION == before  # the caller's conversation is not touched


def test_for_template_inlines_calls_even_without_tool_definitions():
    messages, tools = for_template(tokenizer(CHATML), CONVERSATION, None)
    assert tools is None
    assert messages[0] == {"role": "user", "content": "Weather in Zürich?"}  # no system turn added
    assert messages[1] == {"role": "assistant", "content": CALL_TEXT}


def test_for_template_leaves_a_plain_chat_alone():
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    messages, tools = for_template(tokenizer(CHATML), plain, None)
    assert messages is plain and tools is None
    messages, tools = for_template(tokenizer(CHATML), plain, [])
    assert messages is plain and tools == []


def test_inline_tools_appends_to_an_existing_system_turn():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    out = inline_tools(messages, [TOOL, TOOL])
    two = "\n".join([json.dumps(TOOL, ensure_ascii=False)] * 2)
    assert out == [
        {"role": "system", "content": f"Be brief.\n\nYou can call these tools:\n<tools>\n{two}\n</tools>"},
        {"role": "user", "content": "hi"},
    ]
    assert messages[0]["content"] == "Be brief."


def test_inline_tools_writes_several_calls_after_the_text():
    second = {"function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}  # arguments as a JSON string
    out = inline_tools([{"role": "assistant", "content": "Checking.", "tool_calls": [CALL, second]}], None)
    second_text = '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"CET\\"}"}</tool_call>'
    assert out == [{"role": "assistant", "content": "Checking." + CALL_TEXT + second_text}]


def test_inline_tools_on_an_empty_conversation_with_tools_is_the_listing():
    assert inline_tools([], [TOOL]) == [{"role": "system", "content": LISTING}]
