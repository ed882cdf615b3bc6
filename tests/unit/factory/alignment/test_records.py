"""Alignment records: every layout parsed into exact messages, bad records named
by file and line (or skipped and counted), and the packaged catalog entries."""

import json
from pathlib import Path

import pytest

from factory.alignment.chat import check_conversation, render
from factory.alignment.records import BadRecords, Conversation, Preference, iter_conversations, iter_preferences
from factory.sources import datasets as ds
from factory.sources.datasets import DatasetSpec, RecordError, fingerprint
from factory.sources.documents import iter_documents
from factory.sources.tiny import byte_tokenizer
from factory.training.losses import IGNORE_INDEX
from foundation.chat import inline_tools, template_supports_tools
from foundation.errors import ConfigError, FactoryError

# A ChatML template that renders tools and tool calls (Hermes-style), for the tiny tokenizer.
TOOL_TEMPLATE = (
    "{% set rest = messages %}"
    "{% if messages[0]['role'] == 'system' %}{% set rest = messages[1:] %}{% endif %}"
    "{% if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ 'Tools:\n<tools>\n' }}{% for t in tools %}{{ t | tojson + '\n' }}{% endfor %}{{ '</tools><|im_end|>\n' }}"
    "{% elif messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% for m in rest %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
    "{% for c in m.tool_calls or [] %}"
    "{{ '<tool_call>' + {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson"
    " + '</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_TOOL = {"type": "function", "function": WEATHER}


def _call(name, args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


def _lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _array(path: Path, records: list) -> Path:
    """A JSON array with record k (from 0) starting on line k + 2."""
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return path


def _convs(tmp_path, name, fmt, **kw):
    return list(iter_conversations(DatasetSpec(path=name, format=fmt, **kw), tmp_path))


def _prefs(tmp_path, name, **kw):
    return list(iter_preferences(DatasetSpec(path=name, format="preference", **kw), tmp_path))


# ---- formats -------------------------------------------------------------------------------------


def test_chat_with_tools_and_tool_calls(tmp_path):
    rec = {
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
                ],
            },
            {"role": "tool", "content": '{"temp": -3}'},
            {"role": "assistant", "content": "It is -3 C."},
        ],
        "tools": [WEATHER],
    }
    _lines(tmp_path / "c.jsonl", [rec, dict(rec, tools=json.dumps([WEATHER_TOOL])), dict(rec, tools=None)])
    a, b, c = _convs(tmp_path, "c.jsonl", "chat")
    assert a.messages == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "content": '{"temp": -3}'},
        {"role": "assistant", "content": "It is -3 C."},
    ]
    assert a.tools == [WEATHER_TOOL] and b.tools == [WEATHER_TOOL] and c.tools is None
    assert b.messages == a.messages and a.where == f"{tmp_path / 'c.jsonl'}:1" and c.where.endswith("c.jsonl:3")


def test_instruction_array_and_lines(tmp_path):
    recs = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Greet.", "input": "", "output": "Hi!"},
        {"instruction": "And now?", "output": "Still 5.", "system": "Be terse.", "history": [["Add 2 and 3.", "5"]]},
    ]
    _array(tmp_path / "a.json", recs)
    _lines(tmp_path / "a.jsonl", recs)
    for name in ("a.json", "a.jsonl"):
        convs = _convs(tmp_path, name, "instruction")
        assert [c.messages for c in convs] == [
            [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
            [{"role": "user", "content": "Greet."}, {"role": "assistant", "content": "Hi!"}],
            [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Add 2 and 3."},
                {"role": "assistant", "content": "5"},
                {"role": "user", "content": "And now?"},
                {"role": "assistant", "content": "Still 5."},
            ],
        ]
        assert all(c.tools is None for c in convs)
    assert [c.where.rsplit(":", 1)[1] for c in _convs(tmp_path, "a.json", "instruction")] == ["2", "3", "4"]


def test_array_records_are_located_by_their_first_line(tmp_path):
    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)]
    text = json.dumps(recs, indent=2)
    (tmp_path / "p.json").write_text(text)
    starts = [str(i + 1) for i, line in enumerate(text.splitlines()) if line == "  {"]
    assert [c.where.rsplit(":", 1)[1] for c in _convs(tmp_path, "p.json", "instruction")] == starts


GLAIVE = {
    "conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
        {"from": "observation", "value": '{"temp": -3}'},
        {"from": "gpt", "value": "It is -3 C."},
        {"from": "human", "value": "Thanks"},
        {"from": "gpt", "value": "You're welcome."},
    ],
    "tools": json.dumps([WEATHER]),
}


def test_sharegpt_tool_calls(tmp_path):
    plain = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ],
        "tools": "",
    }
    _array(tmp_path / "g.json", [GLAIVE, plain])
    a, b = _convs(tmp_path, "g.json", "sharegpt")
    assert a.messages == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "content": '{"temp": -3}'},
        {"role": "assistant", "content": "It is -3 C."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
    ]
    assert a.tools == [WEATHER_TOOL]
    assert (
        b.messages
        == [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
        and b.tools is None
    )


def test_preference_layouts(tmp_path):
    recs = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": "2+2?", "system": "Be exact.", "chosen": "4", "rejected": "5"},
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "2+2?"},
            ],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
        },
        {
            "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [WEATHER],
            "chosen": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
                }
            ],
            "rejected": [{"role": "assistant", "content": "No idea."}],
        },
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": {"role": "assistant", "content": "5"},
        },
    ]
    _array(tmp_path / "p.json", recs)
    p = _prefs(tmp_path, "p.json")
    four, five = [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]
    assert (p[0].prompt, p[0].chosen, p[0].rejected) == ([{"role": "user", "content": "2+2?"}], four, five)
    assert p[1].prompt == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "2+2?"}]
    assert p[2].prompt == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
    ]
    assert (p[2].chosen, p[2].rejected) == (four, five)
    assert p[3].chosen == [{"role": "assistant", "content": "", "tool_calls": [_call("get_weather", {"city": "Oslo"})]}]
    assert p[3].tools == [WEATHER_TOOL] and p[0].tools is None
    assert (p[4].prompt, p[4].chosen, p[4].rejected) == (p[0].prompt, four, five)
    assert [x.where.rsplit(":", 1)[1] for x in p] == ["2", "3", "4", "5", "6"]
    assert all(isinstance(x, Preference) for x in p)


def test_bigbench_hhh_reader(tmp_path):
    task = {
        "examples": [
            {"input": "Help me.", "target_scores": {"Sure.": 1, "No.": 0}},
            {"input": "Fix this.\n\nAssistant:  Show me.\n\nHuman:  Here: teh.", "target_scores": {"the": 1, "teh": 0}},
            {"input": "Rank.", "target_scores": {"ok": 0.5, "best": 1, "bad": 0, "also best": 1}},
            {"target_scores": {"a": 1}},
        ]
    }
    (tmp_path / "helpful").mkdir()
    path = tmp_path / "helpful" / "task.json"
    path.write_text(json.dumps(task))
    out = list(ds._read_bigbench_hhh(path))
    assert isinstance(out[-1][1], RecordError) and out[-1][1].reason == "missing field"
    recs = [r for _, r in out[:-1]]
    assert [(r["chosen"], r["rejected"]) for r in recs] == [
        ("Sure.", "No."),
        ("the", "teh"),
        ("best", "ok"),
        ("best", "bad"),
    ]
    assert recs[1]["prompt"] == [
        {"role": "user", "content": "Fix this."},
        {"role": "assistant", "content": "Show me."},
        {"role": "user", "content": "Here: teh."},
    ]
    assert [w for w, _ in out] == [f"{path}:example {k}" for k in (0, 1, 2, 2, 3)]


# ---- bad records ---------------------------------------------------------------------------------

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}
BAD_CALL = {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", '{"city": Oslo}')]}
GOOD = {
    "chat": {"messages": [U, A]},
    "instruction": {"instruction": "Hi", "input": "", "output": "Hello"},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    "preference": {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
}
# (format, fault, bad record, reason counted when skipped, text of the one-line error)
BAD = [
    ("chat", "missing field", {"text": "Hi"}, "missing field", "field 'messages' must be a non-empty list"),
    (
        "chat",
        "missing field",
        {"messages": [U, {"role": "assistant"}]},
        "missing field",
        "message 1 needs string 'role' and 'content'",
    ),
    (
        "chat",
        "empty assistant",
        {"messages": [U, {"role": "assistant", "content": " "}]},
        "empty assistant turn",
        "message 1: empty assistant turn",
    ),
    ("chat", "alternation", {"messages": [U, U, A]}, "roles do not alternate", "message 1: two user turns in a row"),
    (
        "chat",
        "tool json",
        {"messages": [U, BAD_CALL, {"role": "tool", "content": "{}"}, A]},
        "invalid tool call JSON",
        "message 1: tool call 0: arguments are not valid JSON",
    ),
    ("instruction", "missing field", {"instruction": "Hi", "input": ""}, "missing field", "missing field 'output'"),
    (
        "instruction",
        "empty assistant",
        {"instruction": "Hi", "input": "", "output": ""},
        "empty assistant turn",
        "message 1: empty assistant turn",
    ),
    (
        "instruction",
        "history shape",
        {"instruction": "Hi", "output": "Hello", "history": [["a", "b"], ["c"]]},
        "wrong type",
        "history entry 1 must be a [user, assistant] pair",
    ),
    (
        "sharegpt",
        "missing field",
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt"}]},
        "missing field",
        "message 1 needs string 'from' and 'value'",
    ),
    (
        "sharegpt",
        "empty assistant",
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]},
        "empty assistant turn",
        "message 1: empty assistant turn",
    ),
    (
        "sharegpt",
        "alternation",
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "a"},
                {"from": "gpt", "value": "b"},
            ]
        },
        "roles do not alternate",
        "message 2: two assistant turns in a row",
    ),
    (
        "sharegpt",
        "alternation",
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "observation", "value": "{}"},
                {"from": "gpt", "value": "b"},
            ]
        },
        "roles do not alternate",
        "message 1: a tool turn must answer an assistant tool call",
    ),
    (
        "sharegpt",
        "tool json",
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "function_call", "value": '{"name": "f", "arguments": {'},
                {"from": "observation", "value": "{}"},
                {"from": "gpt", "value": "b"},
            ]
        },
        "invalid tool call JSON",
        "message 1: function_call is not valid JSON",
    ),
    ("sharegpt", "tool json", dict(GLAIVE, tools="[{"), "invalid tools JSON", "field 'tools' is not valid JSON"),
    ("preference", "missing field", {"prompt": "Hi", "chosen": "Hello"}, "missing field", "missing field 'rejected'"),
    (
        "preference",
        "missing field",
        {"chosen": "Hello", "rejected": "x"},
        "missing field",
        "field 'messages' must be a non-empty list",
    ),
    (
        "preference",
        "empty assistant",
        {"prompt": "Hi", "chosen": "", "rejected": "Go away"},
        "empty assistant turn",
        "message 1: empty assistant turn",
    ),
    (
        "preference",
        "alternation",
        {"messages": [U, A], "chosen": "a", "rejected": "b"},
        "roles do not alternate",
        "the prompt must end with a user turn",
    ),
    (
        "preference",
        "alternation",
        {"messages": [U, U], "chosen": "a", "rejected": "b"},
        "roles do not alternate",
        "message 1: two user turns in a row",
    ),
    (
        "preference",
        "tool json",
        {"prompt": "Hi", "chosen": [BAD_CALL], "rejected": "b"},
        "invalid tool call JSON",
        "message 1: tool call 0: arguments are not valid JSON",
    ),
    (
        "preference",
        "chosen == rejected",
        {"prompt": "Hi", "chosen": "Same", "rejected": " Same"},
        "chosen equals rejected",
        "chosen is identical to rejected",
    ),
]
LAYOUTS = {
    "chat": ["jsonl"],
    "instruction": ["json", "jsonl"],
    "sharegpt": ["json", "jsonl"],
    "preference": ["json", "jsonl"],
}
CASES = [(fmt, ext, fault, rec, reason, text) for fmt, fault, rec, reason, text in BAD for ext in LAYOUTS[fmt]]


def _read(tmp_path, fmt, name, **kw):
    spec = DatasetSpec(path=name, format=fmt, **kw)
    bad = BadRecords()
    items = list((iter_preferences if fmt == "preference" else iter_conversations)(spec, tmp_path, bad))
    return items, bad


@pytest.mark.parametrize("fmt,ext,fault,rec,reason,text", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[4]}" for c in CASES])
def test_bad_record_is_one_line_with_file_and_line(tmp_path, fmt, ext, fault, rec, reason, text):
    records = [GOOD[fmt], rec, GOOD[fmt]]
    path = (_array if ext == "json" else _lines)(tmp_path / f"d.{ext}", records)
    line = 3 if ext == "json" else 2  # the bad record's first line
    with pytest.raises(FactoryError) as err:
        _read(tmp_path, fmt, path.name)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: ") and text in msg and "\n" not in msg
    assert isinstance(err.value, RecordError) and err.value.reason == reason
    items, bad = _read(tmp_path, fmt, path.name, on_bad_record="skip")
    assert len(items) == 2 and bad.as_dict()["reasons"] == {reason: 1}
    assert (bad.seen, bad.kept) == (3, 2)


def test_every_fault_is_covered_for_every_format():
    faults = {(fmt, fault) for fmt, fault, *_ in BAD}
    for fmt in LAYOUTS:
        for fault in ("missing field", "empty assistant", "alternation", "tool json"):
            # alpaca records carry no tool calls, and their turns alternate by construction
            if fmt == "instruction" and fault in ("tool json", "alternation"):
                continue
            assert (fmt, fault) in faults, (fmt, fault)
    assert ("preference", "chosen == rejected") in faults


def test_skip_and_count(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(GOOD["chat"]),
        "{not json",
        json.dumps({"text": "x"}),
        json.dumps([1]),
        json.dumps({"messages": [U, U, A]}),
        json.dumps({"messages": [U, {"role": "assistant", "content": ""}]}),
        json.dumps(GOOD["chat"]),
        json.dumps({"messages": [U]}),
        json.dumps({"messages": [U, {"role": "assistant"}]}),
        json.dumps(GOOD["chat"]),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FactoryError, match=r"mixed.jsonl:2: invalid JSON"):
        _read(tmp_path, "chat", path.name)
    items, bad = _read(tmp_path, "chat", path.name, on_bad_record="skip")
    assert len(items) == 3 and [c.where.rsplit(":", 1)[1] for c in items] == ["1", "7", "10"]
    d = bad.as_dict()
    assert d["reasons"] == {
        "empty assistant turn": 1,
        "invalid JSON": 1,
        "missing field": 2,
        "no assistant turn": 1,
        "not an object": 1,
        "roles do not alternate": 1,
    }
    assert (d["seen"], d["kept"], d["skipped"]) == (10, 3, 7)
    assert d["first"]["missing field"].endswith("mixed.jsonl:3: field 'messages' must be a non-empty list of messages")
    # max_documents counts kept records
    items, bad = _read(tmp_path, "chat", path.name, on_bad_record="skip", max_documents=2)
    assert len(items) == 2 and bad.kept == 2 and bad.seen == 7


def test_malformed_array_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "a.json").write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "c" "output": 1}\n]')
    with pytest.raises(FactoryError, match=r"a.json:3: invalid JSON \(Expecting ',' delimiter"):
        _read(tmp_path, "instruction", "a.json", on_bad_record="skip")
    (tmp_path / "b.json").write_text('[{"instruction": "a", "output": "b"}\n')
    with pytest.raises(FactoryError, match=r"b.json:2: invalid JSON \(expected ',' or '\]'\)"):
        _read(tmp_path, "instruction", "b.json")


def test_wrong_format_for_the_reader(tmp_path):
    _lines(tmp_path / "i.jsonl", [GOOD["instruction"]])
    with pytest.raises(FactoryError, match="i.jsonl: preference pairs need format preference"):
        list(iter_preferences(DatasetSpec(path="i.jsonl", format="instruction"), tmp_path))
    with pytest.raises(FactoryError, match="conversations need format chat or instruction or sharegpt"):
        list(iter_conversations(DatasetSpec(path="i.jsonl", format="preference"), tmp_path))


@pytest.mark.parametrize(
    "messages,reason,text",
    [
        (
            [U, {"role": "assistant", "content": "", "tool_calls": [_call("f", "[1]")]}],
            "invalid tool call JSON",
            "message 1: tool call 0: arguments must be a JSON object",
        ),
        (
            [U, {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}],
            "missing field",
            "message 1: tool call 0 needs a function 'name'",
        ),
        (
            [U, {"role": "assistant", "content": "", "tool_calls": []}],
            "empty assistant turn",
            "message 1: empty assistant",
        ),
        ([U, {"role": "user", "content": 3}], "wrong type", "message 1 needs string 'role' and 'content'"),
        ([U, A, {"role": "tool", "content": "{}"}], "roles do not alternate", "message 2: a tool turn must answer"),
    ],
)
def test_check_conversation_tool_rules(messages, reason, text):
    with pytest.raises(RecordError) as err:
        check_conversation(messages, "x.jsonl:4")
    assert err.value.reason == reason and str(err.value).startswith(f"x.jsonl:4: {text}")


def test_check_conversation_accepts_parallel_calls_and_tool_results():
    call = {"role": "assistant", "content": None, "tool_calls": [_call("f", {}), _call("g", '{"x": 1}')]}
    check_conversation([U, call, {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}, A], "x:1")


# ---- catalog, specs, documents -------------------------------------------------------------------


def test_catalog_entries_carry_format_and_licence():
    want = {
        "alpaca-en-demo": "instruction",
        "glaive-toolcall-demo": "sharegpt",
        "dpo-en-demo": "preference",
        "hhh-alignment": "preference",
    }
    for name, fmt in want.items():
        spec = DatasetSpec(packaged=name)
        spec.check(f"datasets.{name}")
        assert spec.format == fmt and ds.CATALOG[name].format == fmt
    assert DatasetSpec(packaged="dpo-en-demo").licence_of() == "repo Apache-2.0; origin of the data not stated"
    assert DatasetSpec(packaged="hhh-alignment").licence_of() == "Apache-2.0"
    assert DatasetSpec(packaged="shakespeare").format == "auto"
    with pytest.raises(ConfigError, match="datasets.d.format: packaged dataset 'dpo-en-demo' has format preference"):
        DatasetSpec(packaged="dpo-en-demo", format="chat").check("datasets.d")


def test_fingerprint_follows_record_options(tmp_path):
    _lines(tmp_path / "c.jsonl", [GOOD["chat"]])
    base = DatasetSpec(path="c.jsonl", format="chat")
    prints = {
        fingerprint(s, tmp_path)
        for s in (
            base,
            DatasetSpec(path="c.jsonl", format="chat", on_bad_record="skip"),
            DatasetSpec(path="c.jsonl", format="chat", tools_field="functions"),
        )
    }
    assert len(prints) == 3
    assert fingerprint(DatasetSpec(packaged="dpo-en-demo"), tmp_path) != fingerprint(
        DatasetSpec(packaged="dpo-en-demo", on_bad_record="skip"), tmp_path
    )


def test_documents_of_record_datasets(tmp_path):
    _array(tmp_path / "a.json", [GOOD["instruction"]])
    _lines(tmp_path / "p.jsonl", [GOOD["preference"]])
    assert list(iter_documents(DatasetSpec(path="a.json", format="instruction"), tmp_path)) == [[U, A]]
    assert list(iter_documents(DatasetSpec(path="p.jsonl", format="preference"), tmp_path)) == [[U, A]]


# ---- rendering tool conversations ----------------------------------------------------------------


def _labelled(tok, r) -> list[str]:
    segs, cur = [], []
    for i, label in zip(r.input_ids, r.labels):
        if label != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            segs.append(tok.decode(cur))
            cur = []
    return segs + ([tok.decode(cur)] if cur else [])


def _expected_answers(messages) -> list[str]:
    out = []
    for m in messages:
        if m["role"] == "assistant":
            calls = "".join(
                "<tool_call>"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False
                )
                + "</tool_call>"
                for c in m.get("tool_calls", [])
            )
            out.append(m["content"] + calls + "<|im_end|>")
    return out


def _check_tool_render(tok, conv: Conversation):
    r = render(tok, conv.messages, conv.tools)
    assert _labelled(tok, r) == _expected_answers(conv.messages), conv.where
    masked = tok.decode([i for i, label in zip(r.input_ids, r.labels) if label == IGNORE_INDEX])
    for m in conv.messages:
        if m["role"] != "assistant":
            assert m["content"] in masked
    for t in conv.tools or []:
        assert json.dumps(t, ensure_ascii=False) in masked


def test_tool_conversation_renders_with_assistant_only_labels(tmp_path):
    _array(tmp_path / "g.json", [GLAIVE])
    (conv,) = _convs(tmp_path, "g.json", "sharegpt")
    tok = byte_tokenizer()
    assert not template_supports_tools(tok)
    tok.chat_template = TOOL_TEMPLATE
    assert template_supports_tools(tok)
    _check_tool_render(tok, conv)


def test_inline_tools_for_a_template_without_them(tmp_path):
    _array(tmp_path / "g.json", [GLAIVE])
    (conv,) = _convs(tmp_path, "g.json", "sharegpt")
    msgs = inline_tools(conv.messages, conv.tools)
    assert msgs[0] == {
        "role": "system",
        "content": "You can call these tools:\n<tools>\n" + json.dumps(WEATHER_TOOL, ensure_ascii=False) + "\n</tools>",
    }
    assert msgs[2] == {
        "role": "assistant",
        "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
    }
    assert "tool_calls" in conv.messages[1]  # the parsed conversation is left as it was
    tok = byte_tokenizer()
    r = render(tok, msgs)
    assert _labelled(tok, r) == [
        msgs[2]["content"] + "<|im_end|>",
        "It is -3 C.<|im_end|>",
        "You're welcome.<|im_end|>",
    ]


# ---- the packaged data (downloads) ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,count", [("alpaca-en-demo", 999), ("glaive-toolcall-demo", 300), ("dpo-en-demo", 300), ("hhh-alignment", 221)]
)
def test_catalog_entry_loads(name, count):
    spec = DatasetSpec(packaged=name)
    bad = BadRecords()
    reader = iter_preferences if spec.format == "preference" else iter_conversations
    items = list(reader(spec, Path("."), bad))
    assert len(items) == count and bad.as_dict()["reasons"] == {} and bad.seen == count


@pytest.mark.slow
def test_alpaca_and_dpo_records_in_detail():
    alpaca = list(iter_conversations(DatasetSpec(packaged="alpaca-en-demo"), Path(".")))
    assert sum(1 for c in alpaca if "\n\n" in c.messages[0]["content"]) >= 412  # 412 records have an input
    assert alpaca[0].messages[0] == {"role": "user", "content": "Describe a process of making crepes."}
    dpo = list(iter_preferences(DatasetSpec(packaged="dpo-en-demo"), Path(".")))
    assert sum(1 for p in dpo if p.prompt[0]["role"] == "system") == 80
    assert sum(1 for p in dpo if len(p.prompt) > 1 and p.prompt[0]["role"] == "user") == 106
    assert all(len(p.chosen) == len(p.rejected) == 1 for p in dpo)
    hhh = list(iter_preferences(DatasetSpec(packaged="hhh-alignment"), Path(".")))
    assert [
        sum(1 for p in hhh if f"/{s}/task.json" in p.where) for s in ("harmless", "helpful", "honest", "other")
    ] == [58, 59, 61, 43]
    assert sum(1 for p in hhh if len(p.prompt) > 1) == 41


@pytest.mark.slow
def test_every_glaive_conversation_renders_with_tools():
    convs = list(iter_conversations(DatasetSpec(packaged="glaive-toolcall-demo"), Path(".")))
    with_calls = [c for c in convs if any(m.get("tool_calls") for m in c.messages)]
    assert len(with_calls) == 153 and sum(1 for c in convs if c.tools) == 191
    assert sum(len(m["tool_calls"]) for c in convs for m in c.messages if m.get("tool_calls")) == 211
    tok = byte_tokenizer()
    tok.chat_template = TOOL_TEMPLATE
    for conv in convs:
        _check_tool_render(tok, conv)
