"""BFCL: parsing model outputs into calls, matching them against possible
answers (known verdicts and reasons), schema conversion, and - slow - a
self-consistency pass over every item of the real data."""

import json

import pytest

from evals.tasks import get_task
from evals.tasks.bfcl import BFCL, parse_calls, to_json_schema, to_tool
from evals.tasks.bfcl_match import OFFICIAL, OMIT, Call, Miss, PyTuple, Rules, match_calls, normalise
from foundation.errors import FactoryError

AREA = {
    "name": "geometry.area",
    "description": "Area of a triangle.",
    "parameters": {
        "type": "dict",
        "required": ["base", "height"],
        "properties": {
            "base": {"type": "integer", "description": "base"},
            "height": {"type": "float", "description": "height"},
            "unit": {"type": "string", "description": "unit, default 'cm'"},
            "shape": {
                "type": "dict",
                "description": "extra",
                "properties": {"kind": {"type": "string"}, "sides": {"type": "integer"}},
            },
            "data": {"type": "array", "items": {"type": "float"}, "description": "samples"},
            "mod": {"type": "float", "description": "default None"},
        },
    },
}
PLAY = {
    "name": "spotify.play",
    "description": "Play an artist.",
    "parameters": {
        "type": "dict",
        "required": ["artist", "duration"],
        "properties": {"artist": {"type": "string"}, "duration": {"type": "integer"}},
    },
}


def _sample(category, functions, truth=None, **options):
    item = {"id": "t0", "question": [[{"role": "user", "content": "Do it."}]], "function": functions}
    if truth is not None:
        item["ground_truth"] = truth
    task = BFCL(category, **options)
    return task, task.sample(item)


def _verdict(category, functions, truth, output, **options):
    task, sample = _sample(category, functions, truth, **options)
    score = task.score(sample, [output])
    return score.metrics["accuracy"], score.reason


def _kind(truth, output, functions, rules=OFFICIAL):
    """The kind of check (BFCL's error type) that ``output`` fails."""
    return match_calls(parse_calls(output), truth, functions, rules).kind


AREA_TRUTH = [
    {
        "geometry.area": {
            "base": [10],
            "height": [5.0],
            "unit": ["cm", OMIT],
            "shape": [OMIT, {"kind": ["Right Angled"], "sides": [3, OMIT]}],
            "data": [OMIT, [1.5, 2.0], "data['x']"],
            "mod": [OMIT, None],
        }
    }
]


@pytest.mark.parametrize(
    "output, verdict",
    [
        ("geometry.area(base=10, height=5.0)", (1.0, None)),  # optional ones omitted
        ("[geometry.area(base=10, height=5)]", (1.0, None)),  # int for float
        ("geometry.area(base=10, height=5.0, unit='CM ')", (1.0, None)),  # string normalised
        (
            "geometry_area(base=10, height=5.0)",  # not the name it was shown
            (0.0, "wrong function: got geometry_area expected geometry.area"),
        ),
        ("geometry.area(base=10, height=5.0, shape={'kind': 'right-angled'})", (1.0, None)),
        ("geometry.area(base=10, height=5.0, data=[1.5, 2])", (1.0, None)),
        ("geometry.area(base=10, height=5.0, data=data['x'])", (1.0, None)),  # a variable, as BFCL spells it
        ("geometry.area(base=10, height=5.0, mod=None)", (1.0, None)),  # null default
        ("geometry.area(base=3, height=5.0)", (0.0, "param base: value 3 not in [10]")),
        ("geometry.area(base=10, height=5.0, color='red')", (0.0, "unexpected param color")),
        ("geometry.area(base=10)", (0.0, "missing required param height")),
        ("geometry.volume(base=10, height=5.0)", (0.0, "wrong function: got geometry.volume expected geometry.area")),
        ("geometry.area(base='10', height=5.0)", (0.0, "param base: expected integer, got string")),
        ("geometry.area(base=10.0, height=5.0)", (0.0, "param base: expected integer, got float")),
        ("geometry.area(base=True, height=5.0)", (0.0, "param base: expected integer, got boolean")),
        ("geometry.area(base=10, height=5.0, unit='mm')", (0.0, "param unit: value 'mm' not in ['cm']")),
        (
            "geometry.area(base=10, height=5.0, data=[2.0, 1.5])",
            (0.0, "param data: value [2.0, 1.5] not in [[1.5, 2.0], \"data['x']\"]"),
        ),
        (
            "geometry.area(base=10, height=5.0, shape={'kind': 'round'})",
            (0.0, "param shape: key 'kind': value 'round' not in ['Right Angled']"),
        ),
        ("geometry.area(base=10, height=5.0, shape={'sides': 3})", (0.0, "param shape: missing key 'kind'")),
        ("geometry.area(10, 5.0)", (0.0, "2 positional argument(s): parameters must be named")),
        (
            "[geometry.area(base=10, height=5.0), geometry.area(base=10, height=5.0)]",
            (0.0, "1 call expected, 2 produced"),
        ),
        ("The area is 25.", (0.0, "no call parsed")),
    ],
)
def test_simple_verdicts(output, verdict):
    assert _verdict("simple", [AREA], AREA_TRUTH, output) == verdict


def test_optional_param_without_blank_must_be_given():
    truth = [{"geometry.area": {"base": [10], "height": [5.0], "unit": ["cm"]}}]
    assert _verdict("simple", [AREA], truth, "geometry.area(base=10, height=5.0)") == (
        0.0,
        "missing param unit (expected one of ['cm'])",
    )
    assert _verdict("simple", [AREA], truth, "geometry.area(base=10, height=5.0, unit='cm')") == (1.0, None)


def test_param_in_schema_but_not_in_answer_is_unexpected():
    truth = [{"geometry.area": {"base": [10], "height": [5.0]}}]
    assert _verdict("simple", [AREA], truth, "geometry.area(base=10, height=5.0, unit='cm')") == (
        0.0,
        "unexpected param unit",
    )


def test_multiple_picks_the_right_function():
    truth = [{"spotify.play": {"artist": ["Taylor Swift"], "duration": [20]}}]
    assert _verdict("multiple", [AREA, PLAY], truth, "spotify.play(artist='taylor swift', duration=20)") == (1.0, None)
    assert _verdict("multiple", [AREA, PLAY], truth, "geometry.area(base=1, height=2.0)") == (
        0.0,
        "wrong function: got geometry.area expected spotify.play",
    )


PAR_TRUTH = [
    {"spotify.play": {"artist": ["Taylor Swift"], "duration": [20]}},
    {"spotify.play": {"artist": ["Maroon 5"], "duration": [15]}},
]


@pytest.mark.parametrize(
    "output, verdict",
    [
        (
            "[spotify.play(artist='Taylor Swift', duration=20), spotify.play(artist='Maroon 5', duration=15)]",
            (1.0, None),
        ),
        (
            "[spotify.play(artist='Maroon 5', duration=15), spotify.play(artist='Taylor Swift', duration=20)]",
            (1.0, None),
        ),
        ("[spotify.play(artist='Maroon 5', duration=15)]", (0.0, "2 calls expected, 1 produced")),
        (
            "[spotify.play(artist='Maroon 5', duration=15), spotify.play(artist='Maroon 5', duration=15)]",
            (0.0, "spotify.play: param artist: value 'Maroon 5' not in ['Taylor Swift']"),
        ),
        (
            "[spotify.play(artist='Taylor Swift', duration=20), spotify.play(artist='Maroon 5', duration=30)]",
            (0.0, "spotify.play: param duration: value 30 not in [15]"),
        ),
    ],
)
def test_parallel_verdicts(output, verdict):
    assert _verdict("parallel", [PLAY], PAR_TRUTH, output) == verdict


def test_parallel_matching_is_greedy_as_in_bfcl():
    # BFCL gives each expected call, in order, the first free produced call that
    # fits: the first takes 'Adele' and leaves 'Bono' to the second, which wants
    # 'Adele'. The best assignment would pass; BFCL fails it, and so do we.
    truth = [
        {"spotify.play": {"artist": ["Adele", "Bono"], "duration": [1]}},
        {"spotify.play": {"artist": ["Adele"], "duration": [1]}},
    ]
    out = "[spotify.play(artist='Adele', duration=1), spotify.play(artist='Bono', duration=1)]"
    assert _verdict("parallel", [PLAY], truth, out) == (
        0.0,
        "spotify.play: param artist: value 'Bono' not in ['Adele']",
    )
    assert _kind(truth, out, [PLAY]) == "cannot_find_match"
    assert _verdict("parallel", [PLAY], truth, out, lenient=True) == (1.0, None)


def test_parallel_reasons_name_the_missing_call():
    truth = [
        {"spotify.play": {"artist": ["Adele"], "duration": [1]}},
        {"geometry.area": {"base": [2], "height": [3.0]}},
    ]
    out = "[spotify.play(artist='Adele', duration=1), spotify.play(artist='Adele', duration=1)]"
    assert _verdict("parallel_multiple", [AREA, PLAY], truth, out) == (0.0, "no call to geometry.area")


def test_parallel_multiple_mixes_functions():
    truth = [
        {"geometry.area": {"base": [2], "height": [3.0]}},
        {"spotify.play": {"artist": ["Adele"], "duration": [5]}},
    ]
    out = (
        '<tool_call>{"name": "spotify.play", "arguments": {"artist": "Adele", "duration": 5}}</tool_call>\n'
        '<tool_call>{"name": "geometry.area", "arguments": {"base": 2, "height": 3}}</tool_call>'
    )
    assert _verdict("parallel_multiple", [AREA, PLAY], truth, out) == (1.0, None)
    assert _verdict("parallel_multiple", [AREA, PLAY], truth, out.split("\n")[0]) == (
        0.0,
        "2 calls expected, 1 produced",
    )


@pytest.mark.parametrize(
    "output, verdict",
    [
        ("I cannot compute a BMI from a triangle.", (1.0, None)),
        ("[]", (1.0, None)),
        ("geometry.area(base=10, height=5.0)", (0.0, "expected no call, got geometry.area(base=10, height=5.0)")),
        (
            '<tool_call>{"name": "spotify.play", "arguments": {"artist": "x"}}</tool_call>',
            (0.0, "expected no call, got spotify.play(artist='x')"),
        ),
    ],
)
def test_irrelevance(output, verdict):
    assert _verdict("irrelevance", [AREA, PLAY], None, output) == verdict


def test_accuracy_averages_outputs_and_reason_is_the_first():
    task, sample = _sample("simple", [AREA], AREA_TRUTH)
    score = task.score(sample, ["geometry.area(base=1, height=5.0)", "geometry.area(base=10, height=5.0)"])
    assert score.metrics == {"accuracy": 0.5}
    assert score.reason == "param base: value 1 not in [10]"
    assert score.details == {"calls": [{"name": "geometry.area", "arguments": {"base": 1, "height": 5.0}}]}
    json.dumps(score.details)  # stored in results.json


# ---------------------------------------------------------------- where BFCL's checker is strict

MEAN = {
    "name": "stats.mean",
    "description": "Weighted mean.",
    "parameters": {
        "type": "dict",
        "required": ["values"],
        "properties": {
            "values": {"type": "array", "items": {"type": "integer"}},
            "weights": {"type": "array", "items": {"type": "float"}},
            "span": {"type": "tuple", "items": {"type": "integer"}},
            "label": {"type": "string"},
        },
    },
}
MEAN_TRUTH = [
    {
        "stats.mean": {
            "values": [[1, 2]],
            "weights": [[0.5, 2.0], OMIT],
            "span": [[1, 5], OMIT],
            "label": ["New York", OMIT],
        }
    }
]
WEIGHTED = [{"stats.mean": {"values": [[1, 2]], "weights": [[0.5, 2.0]]}}]  # weights without the blank
FACT = {
    "name": "math.factorial",
    "description": "n!",
    "parameters": {"type": "dict", "required": ["number"], "properties": {"number": {"type": "integer"}}},
}
FACT_TRUTH = [{"math.factorial": {"number": [5]}}]

# One output per looser reading: BFCL's verdict and the kind of check that fails.
STRICT_CASES = [
    (
        "tuple for an array",
        MEAN_TRUTH,
        "stats.mean(values=(1, 2))",
        "param values: expected array, got tuple",
        "type_error:simple",
    ),
    (
        "tab for a space",
        MEAN_TRUTH,
        "stats.mean(values=[1, 2], label='New\tYork')",
        "param label: value 'New\\tYork' not in ['New York']",
        "value_error:string",
    ),
    (
        "newline for a space",
        MEAN_TRUTH,
        '<tool_call>{"name": "stats.mean", "arguments": {"values": [1, 2], "label": "New\\nYork"}}</tool_call>',
        "param label: value 'New\\nYork' not in ['New York']",
        "value_error:string",
    ),
    (
        "float among integers",
        MEAN_TRUTH,
        "stats.mean(values=[1.0, 2.0])",
        "param values: item 0: expected integer, got float",
        "type_error:nested",
    ),
    (
        "int among floats",
        WEIGHTED,
        "stats.mean(values=[1, 2], weights=[0.5, 2])",
        "param weights: item 1: expected float, got integer",
        "type_error:nested",
    ),
]


@pytest.mark.parametrize("what, truth, output, reason, kind", STRICT_CASES, ids=[c[0] for c in STRICT_CASES])
def test_bfcl_verdicts_where_a_loose_reading_would_pass(what, truth, output, reason, kind):
    assert _verdict("simple", [MEAN], truth, output) == (0.0, reason)
    assert _kind(truth, output, [MEAN]) == kind


def test_what_bfcl_accepts_around_those():
    for out in (
        "stats.mean(values=[1, 2], label='new  york')",  # spaces and case still ignored
        "stats.mean(values=[1, 2], span=(1, 5))",  # a tuple is right for a tuple
        "stats.mean(values=[1, 2], weights=[0.5, 2.0])",
    ):
        assert _verdict("simple", [MEAN], MEAN_TRUTH, out) == (1.0, None), out
    # Items are held against each allowed list; an allowed value that is no list
    # (the blank, a variable name) asks nothing of them, and an allowed list's own
    # first item type is accepted too: BFCL's rules, not ours.
    assert _verdict("simple", [MEAN], MEAN_TRUTH, "stats.mean(values=[1, 2], weights=[0.5, 2])") == (1.0, None)
    truth = [{"stats.mean": {"values": [[1, 2]], "weights": [[2, 0.5]]}}]
    assert _verdict("simple", [MEAN], truth, "stats.mean(values=[1, 2], weights=[2, 0.5])") == (1.0, None)
    assert normalise("New\tYork") != normalise("New York") == normalise("New  York")


@pytest.mark.parametrize("functions_in", ["system", "tools"])  # BFCL's prompt mode, its function calling mode
def test_the_function_is_named_as_shown(functions_in):
    task, sample = _sample("simple", [FACT], FACT_TRUTH, functions_in=functions_in)
    if sample.request.tools:
        assert sample.request.tools[0]["function"]["name"] == "math.factorial"
    assert _verdict("simple", [FACT], FACT_TRUTH, "math.factorial(number=5)", functions_in=functions_in) == (1.0, None)
    assert _verdict("simple", [FACT], FACT_TRUTH, "math_factorial(number=5)", functions_in=functions_in) == (
        0.0,
        "wrong function: got math_factorial expected math.factorial",
    )
    assert _kind(FACT_TRUTH, "math_factorial(number=5)", [FACT]) == "wrong_func_name"


def test_function_calling_with_underscore_names_accepts_only_those():
    options = {"functions_in": "tools", "tool_names": "underscore"}
    _, sample = _sample("simple", [FACT], FACT_TRUTH, **options)
    assert sample.request.tools[0]["function"]["name"] == "math_factorial"
    assert _verdict("simple", [FACT], FACT_TRUTH, "math_factorial(number=5)", **options) == (1.0, None)
    assert _verdict("simple", [FACT], FACT_TRUTH, "math.factorial(number=5)", **options) == (
        0.0,
        "wrong function: got math.factorial expected math_factorial",
    )
    assert _kind(FACT_TRUTH, "math.factorial(number=5)", [FACT], Rules(underscore_names=True)) == "wrong_func_name"


def test_lenient_restores_the_looser_readings():
    for _, truth, out, _, _ in STRICT_CASES:
        assert _verdict("simple", [MEAN], truth, out, lenient=True) == (1.0, None), out
        assert match_calls(parse_calls(out), truth, [MEAN], Rules(lenient=True)) is None
    for options in ({"functions_in": "system"}, {}, {"tool_names": "underscore"}):
        for name in ("math_factorial", "math.factorial"):
            assert _verdict("simple", [FACT], FACT_TRUTH, f"{name}(number=5)", lenient=True, **options) == (
                1.0,
                None,
            ), (name, options)
    assert normalise("New\tYork", lenient=True) == normalise("New York")
    # the greedy case: see test_parallel_matching_is_greedy_as_in_bfcl


def test_lenient_and_tool_names_options():
    from evals.suite import parse_entry

    assert BFCL().rules == OFFICIAL == Rules(lenient=False, underscore_names=False)
    assert BFCL(lenient=True).rules.lenient
    entry = parse_entry({"task": "bfcl", "category": "simple", "lenient": True}, "suite.tasks[0]")
    assert entry.options == {"category": "simple", "lenient": True}  # recorded with the results
    assert entry.name == "bfcl_simple_lenient"
    for bad in ({"lenient": "yes"}, {"tool_names": "dots"}, {"functions_in": "system", "tool_names": "underscore"}):
        with pytest.raises(FactoryError, match="task bfcl"):
            BFCL(**bad)


def test_reasons_carry_their_kind_and_stay_plain_data():
    import pickle

    miss = match_calls(parse_calls("stats.mean(values=(1, 2))"), MEAN_TRUTH, [MEAN])
    assert isinstance(miss, Miss) and pickle.loads(pickle.dumps(miss)).kind == "type_error:simple"
    task, sample = _sample("simple", [MEAN], MEAN_TRUTH)
    score = task.score(sample, ["stats.mean(values=(1, 2))"])
    assert type(score.reason) is str
    assert isinstance(parse_calls("f(a=(1, 2))")[0].args["a"], PyTuple)
    assert json.loads(json.dumps(score.details)) == {"calls": [{"name": "stats.mean", "arguments": {"values": [1, 2]}}]}


def test_normalise():
    assert normalise("New York, NY") == normalise("new york ny") == "newyorkny"
    assert normalise("2021-01-28") == normalise("2021/01/28") == "20210128"
    assert normalise("O'Brien") == 'o"brien'
    assert normalise("Paris") != normalise("Pari s!")


def _calls(text):
    got = parse_calls(text)
    return None if got is None else [(c.name, c.args, c.positional) for c in got]


@pytest.mark.parametrize(
    "text, calls",
    [
        ('<tool_call>\n{"name": "f", "arguments": {"a": 1, "b": 2.5}}\n</tool_call>', [("f", {"a": 1, "b": 2.5}, [])]),
        (
            'Sure.\n<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>\n'
            '<tool_call>{"name": "g.h", "arguments": {}}</tool_call> done',
            [("f", {"a": 1}, []), ("g.h", {}, [])],
        ),
        (
            '<tool_call>[{"name": "f", "arguments": {"a": true}}, {"name": "g", "arguments": {"b": null}}]</tool_call>',
            [("f", {"a": True}, []), ("g", {"b": None}, [])],
        ),
        ('<tool_call>{"name": "f", "arguments": {"a": 1}}', [("f", {"a": 1}, [])]),  # unclosed at the end
        ('{"name": "f", "parameters": {"a": "x"}}', [("f", {"a": "x"}, [])]),  # Llama style
        (
            '[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {"b": 2}}]',
            [("f", {"a": 1}, []), ("g", {"b": 2}, [])],
        ),
        ('{"name": "f", "arguments": "{\\"a\\": [1, 2]}"}', [("f", {"a": [1, 2]}, [])]),  # OpenAI: a JSON string
        ('{"type": "function", "function": {"name": "f", "arguments": "{}"}}', [("f", {}, [])]),
        ('{"tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}', [("f", {"a": 1}, [])]),
        ('{"name": "f", "arguments": {"a": 1}}; {"name": "g", "arguments": {}}', [("f", {"a": 1}, []), ("g", {}, [])]),
        ("[func(a=1, b='x'), other(c=2)]", [("func", {"a": 1, "b": "x"}, []), ("other", {"c": 2}, [])]),
        ("math.factorial(number=5)", [("math.factorial", {"number": 5}, [])]),
        (
            "a.b.c(x=-1.5e3, y=(1, 2), z={'k': [True, None]})",
            [("a.b.c", {"x": -1500.0, "y": [1, 2], "z": {"k": [True, None]}}, [])],
        ),
        (
            "f(x=data['sales'], y=some_var, z=[1, n])",
            [("f", {"x": "data['sales']", "y": "some_var", "z": [1, "n"]}, [])],
        ),
        ("f(1, 'two', k=3)", [("f", {"k": 3}, [1, "two"])]),
        ("f(a=1)\ng(b=2)", [("f", {"a": 1}, []), ("g", {"b": 2}, [])]),
        ("Here you go:\n```python\n[f(a=1)]\n```", [("f", {"a": 1}, [])]),
        ('```json\n{"name": "f", "arguments": {"a": 1}}\n```', [("f", {"a": 1}, [])]),
        ("{'name': 'f', 'arguments': {'a': 1}}", [("f", {"a": 1}, [])]),  # a Python literal
        ("<think>maybe f(a=2)?</think>[f(a=1)]", [("f", {"a": 1}, [])]),
        ('<|python_tag|>{"name": "f", "parameters": {}}', [("f", {}, [])]),
        ("[]", []),
        ("", None),
        ("I don't know.", None),
        ("Use f(x) to compute it.", None),  # a call inside prose is not an answer
        ("f(", None),
        ("f(**kw)", None),
        ("x = f(a=1)", None),
        ("42", None),
        ('{"name": 3, "arguments": {}}', None),
        ('{"name": "f", "arguments": "{not json"}', None),
        ("<tool_call>garbage</tool_call>", None),
        ("[" * 5000 + "]" * 5000, None),
    ],
)
def test_parse_calls(text, calls):
    assert _calls(text) == calls


def test_parsed_calls_are_data():
    (call,) = parse_calls("f(a=1j, b=b'x', c={1, 2}, d=...)")
    assert call.args == {"a": "1j", "b": "b'x'", "c": [1, 2], "d": "Ellipsis"}
    json.dumps(call.args)
    assert parse_calls("f(a=1)") == [Call("f", {"a": 1})]


def test_schema_conversion():
    schema = {
        "type": "dict",
        "required": ["a"],
        "properties": {
            "a": {"type": "float", "description": "x", "default": {"type": "dict"}},
            "b": {"type": "tuple", "items": {"type": "float"}, "optional": True},
            "type": {"type": "string", "enum": ["dict", "float"]},
            "c": {"type": "array", "items": {"type": "dict", "properties": {"d": {"type": "any"}}}},
            "e": {"type": "dict", "additionalProperties": {"type": "integer"}},
        },
    }
    assert to_json_schema(schema) == {
        "type": "object",
        "required": ["a"],
        "properties": {
            "a": {"type": "number", "description": "x", "default": {"type": "dict"}},
            "b": {"type": "array", "items": {"type": "number"}},
            "type": {"type": "string", "enum": ["dict", "float"]},
            "c": {"type": "array", "items": {"type": "object", "properties": {"d": {}}}},
            "e": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    }
    assert schema["type"] == "dict"  # the input is left as it was
    tool = to_tool(AREA)
    assert tool["type"] == "function" and tool["function"]["name"] == "geometry.area"
    assert tool["function"]["parameters"]["properties"]["height"] == {"type": "number", "description": "height"}
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])


def test_requests():
    task, sample = _sample("simple", [AREA, PLAY], AREA_TRUTH)
    assert sample.request.messages == [{"role": "user", "content": "Do it."}]
    assert [t["function"]["name"] for t in sample.request.tools] == ["geometry.area", "spotify.play"]
    assert sample.request.sampling.max_tokens == 512
    sys_task = BFCL("live_simple", max_tokens=64, functions_in="system")
    item = {
        "id": "x",
        "function": [PLAY],
        "ground_truth": PAR_TRUTH[:1],
        "question": [[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Play."}]],
    }
    s = sys_task.sample(item)
    assert s.request.tools is None and s.request.sampling.max_tokens == 64
    assert [m["role"] for m in s.request.messages] == ["system", "user"]
    system = s.request.messages[0]["content"]
    assert '"name": "spotify.play"' in system and system.endswith("Be terse.")
    assert item["question"][0][0]["content"] == "Be terse."  # the data is not modified


def test_options_are_checked():
    assert get_task("bfcl", category="parallel").stem == "parallel"
    assert get_task("bfcl").stem == "simple_python"
    for bad in ({"category": "multi_turn"}, {"functions_in": "prompt"}, {"max_tokens": 0}):
        with pytest.raises(FactoryError, match="task bfcl"):
            BFCL(**bad)
    with pytest.raises(FactoryError, match="unknown option 'shots'"):
        get_task("bfcl", shots=3)


TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _render(tok, sample):
    return tok.apply_chat_template(
        sample.request.messages, tools=sample.request.tools, tokenize=False, add_generation_prompt=True
    )


def test_renders_through_a_chat_template_with_tools():
    from factory.sources.tiny import byte_tokenizer

    tok = byte_tokenizer()
    tok.chat_template = TOOLS_TEMPLATE
    _, sample = _sample("multiple", [AREA, PLAY], PAR_TRUTH[:1])
    text = _render(tok, sample)
    lines = text.split("\n")
    assert [json.loads(line) for line in lines[2:4]] == sample.request.tools
    assert text.endswith("<|im_start|>user\nDo it.<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------- real data (downloads bfcl-eval once)

COUNTS = {
    "simple": 400,
    "multiple": 200,
    "parallel": 200,
    "parallel_multiple": 200,
    "irrelevance": 240,
    "live_simple": 258,
}


def _concrete(value):
    """A value that satisfies an allowed value: dicts of alternatives resolved
    to their first alternative (left out when that is the blank)."""
    if isinstance(value, dict):
        firsts = {k: (v if isinstance(v, list) else [v]) for k, v in value.items()}
        return {k: _concrete(v[0]) for k, v in firsts.items() if v and v[0] != OMIT}
    if isinstance(value, list):
        return [_concrete(v) for v in value]
    return value


def _answer(sample):
    """The calls built from the first possible value of each parameter. Params
    the schema requires skip the blank; params that are not in the schema at
    all (two data slips in parallel_multiple, both allowing the blank) are left out."""
    schemas = {f["name"]: f["parameters"] for f in sample.data["function"]}
    calls = []
    for expected in sample.data["ground_truth"]:
        ((name, params),) = expected.items()
        required, props = schemas[name].get("required", []), schemas[name]["properties"]
        args = {}
        for p, allowed in params.items():
            options = [a for a in allowed if a != OMIT] if p in required else allowed
            options = options or [[]]  # see bfcl_match.value_error
            if p in props and options[0] != OMIT:
                args[p] = _concrete(options[0])
        calls.append((name, args))
    return calls


def _as_python(calls):
    return "[" + ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for n, a in calls) + "]"


def _as_tool_calls(calls):
    return "\n".join(f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>" for n, a in calls)


@pytest.mark.slow
@pytest.mark.parametrize("category", list(COUNTS))
def test_real_data_is_self_consistent(category):
    from factory.sources.tiny import byte_tokenizer

    task = BFCL(category)
    samples = task.samples()
    assert len(samples) == COUNTS[category]
    assert len({s.id for s in samples}) == len(samples)
    tok = byte_tokenizer()
    tok.chat_template = TOOLS_TEMPLATE
    failures = []
    for s in samples:
        text = _render(tok, s)
        assert all(f'"name": "{f["name"]}"' in text for f in s.data["function"])
        if category == "irrelevance":
            assert task.score(s, ["None of these functions can answer that."]).metrics["accuracy"] == 1.0
            calls = [(f["name"], {}) for f in s.data["function"][:1]]
            assert task.score(s, [_as_python(calls)]).metrics["accuracy"] == 0.0
            continue
        calls = _answer(s)
        for out in (_as_python(calls), _as_tool_calls(calls)):
            score = task.score(s, [out])
            if score.metrics["accuracy"] != 1.0:
                failures.append((s.id, score.reason, out[:200]))
        # and the checker is not blind: drop a call, or break the function name
        broken = (
            task.score(s, [_as_python(calls[:-1])])
            if len(calls) > 1
            else task.score(s, [_as_python([(calls[0][0] + "_x", calls[0][1])])])
        )
        assert broken.metrics["accuracy"] == 0.0, s.id
    assert failures == []


def test_parsing_prose_emits_no_syntax_warning():
    """Prose like "the 3rd call" makes ``ast.parse`` warn before it fails; scoring
    thousands of answers must not fill stderr with that."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert parse_calls("Call it on the 3rd day, then the 2nd.") is None
        assert parse_calls("f(a='\\d+')") == [Call("f", {"a": "\\d+"})]
    assert [str(w.message) for w in seen] == []
