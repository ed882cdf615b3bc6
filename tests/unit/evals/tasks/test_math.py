"""GSM8K and MATH-500: answer extraction, equivalence, request construction,
and (slow) the real data: counts, and every gold answer scoring 1.0."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from evals.api import Request, Sample
from evals.tasks import get_task
from evals.tasks.math import (
    GSM8K,
    Math500,
    answers_match,
    canonical,
    extract_answer,
    gsm8k_number,
    last_boxed,
    math_verify_equal,
    own_part,
    parse_exemplars,
    pick_shots,
    to_number,
)
from foundation.errors import FactoryError

try:
    import lm_eval
except ImportError:  # the lm-eval cross-checks skip without it
    lm_eval = None


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"so $x = \boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{1} then \boxed{\{a, \{b\}\}}", r"\{a, \{b\}\}"),
        (r"\boxed {42}", "42"),
        (r"the answer is \boxed 5.", "5."),
        (r"\fbox{7}", "7"),
        (r"\boxed{\frac{1}{2}", None),  # cut off inside the box
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She has 3 apples. 3 + 15 = 18. The answer is 18.", "18"),
        ("Reasoning... #### 1,234", "1,234"),
        ("#### Step 1\nWe add 2 and 3 to get 5.", "5"),  # a markdown heading is not an answer
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("So the final answer is: **42**.", "42"),
        ("The answer is $18 a day, $126 a week.", "$18 a day, $126 a week"),
        ("The answer is \\(3\\sqrt{2}\\).", "3\\sqrt{2}"),
        ("First 3.5, then 7, finally 1,234,567 apples", "1,234,567"),
        ("It costs -4 degrees", "-4"),
        ("x = 5", "x = 5"),
        ("Lots of words but no digits", None),
        ("Thus \\boxed{12}. The answer is 13.", "12"),  # a box beats a phrase
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "span,expected",
    [
        ("18 dollars", "18"),
        ("5 + 3 = 8", "8"),
        ("$1,234.50", "$1,234.50"),
        ("$18 a day, $126 a week", "18"),
        (None, None),
    ],
)
def test_gsm8k_number(span, expected):
    assert gsm8k_number(span) == expected


@pytest.mark.parametrize(
    "text,value",
    [
        ("1,234", 1234),
        ("-0.5", -0.5),
        ("$18", 18),
        ("\\$18.50", 18.5),
        ("25%", 25),
        ("25\\%", 25),
        ("90^\\circ", 90),
        ("3/4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("\\dfrac34", 0.75),
        ("-\\frac12", -0.5),
        ("12 \\text{ cm}", 12),
        ("18 dollars", 18),
        ("10,\\!080", 10080),
        (".5", 0.5),
        ("3, 5, 7", None),
        ("x", None),
        ("1/0", None),
        ("\\frac{\\sqrt{3}}{3}", None),
    ],
)
def test_to_number(text, value):
    got = to_number(text)
    assert (got is None) if value is None else float(got) == value


@pytest.mark.parametrize(
    "pred,gold,same",
    [
        ("1/2", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\dfrac12", "1/2", True),
        ("\\frac12", "\\frac{1}{2}", True),
        ("\\dfrac12", "0.5", True),
        ("1,234", "1234", True),
        ("$18", "18", True),
        ("18.00", "18", True),
        ("25%", "25", True),
        ("90^\\circ", "90", True),
        ("10080", "10,\\!080", True),
        ("Evelyn", "\\text{Evelyn}", True),
        ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
        ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("x^2+2x+1", "(x+1)^2", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("x=5", "5", True),
        ("2", "3", False),
        ("0.333", "\\frac{1}{3}", False),
        ("-18", "18", False),
        ("(1,2)", "(2,1)", False),
        ("\\sqrt{2}", "2", False),
        (None, "5", False),
        ("", "5", False),
    ],
)
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same


def test_text_after_an_invented_next_problem_is_ignored():
    out = "3 + 2 = 5. The answer is 5.\n\nQuestion: Tom has 7 pens... The answer is 7."
    assert extract_answer(own_part(out)) == "5"


def _sample(task, gold, question="How many?"):
    return Sample(
        id="0",
        request=Request(messages=[{"role": "user", "content": question}]),
        data={"answer": gold, "question": question},
    )


def test_gsm8k_score_and_reason():
    task = GSM8K()
    assert task.score(_sample(task, "2,125"), ["So she pays $2,125 in total. The answer is $2,125."]).metrics == {
        "exact_match": 1.0
    }
    assert task.score(_sample(task, "25"), ["That is 25% of the class. The answer is 25%."]).reason is None
    wrong = task.score(_sample(task, "8"), ["3 + 4 = 7. The answer is 7 apples."])
    assert wrong.metrics == {"exact_match": 0.0}
    assert wrong.reason == "extracted '7', gold '8'"
    assert wrong.details == {"extracted": "7", "gold": "8"}
    assert task.score(_sample(task, "8"), ["The answer is 8.", "The answer is 9."]).metrics["exact_match"] == 0.5
    assert task.score(_sample(task, "8"), []).reason == "no output"


def test_math500_score_and_reason():
    task = Math500()
    assert task.score(_sample(task, "\\frac{1}{2}"), ["Hence $x = \\boxed{0.5}$."]).metrics["exact_match"] == 1.0
    wrong = task.score(_sample(task, "\\left( 3, \\frac{\\pi}{2} \\right)"), ["\\boxed{(3, \\pi)}"])
    assert wrong.metrics["exact_match"] == 0.0
    assert wrong.reason == "extracted '(3, \\\\pi)', gold '\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)'"


CONTEXT = (
    "Question: Ann has 2 cats and gets 3 more. How many cats?\nAnswer: 2 + 3 = 5. So the answer is 5.\n\n"
    "Question: Bob had 9 eggs and ate 4. How many are left?\nAnswer: 9 - 4 = 5. So the answer is 5.\n\n"
    "Question: The test problem?\nAnswer:"
)


def test_parse_exemplars_skips_the_open_question():
    pairs = parse_exemplars(CONTEXT)
    assert [q for q, _ in pairs] == [
        "Ann has 2 cats and gets 3 more. How many cats?",
        "Bob had 9 eggs and ate 4. How many are left?",
    ]
    assert pairs[1][1] == "9 - 4 = 5. So the answer is 5."


def test_pick_shots_never_picks_the_item_itself():
    pool = [(f"Problem number {i}?", f"So the answer is {i}.") for i in range(12)]
    shots = pick_shots(pool, "Problem  number 3?", 8)  # whitespace differences do not hide it
    assert len(shots) == 8
    assert "Problem number 3?" not in [q for q, _ in shots]
    assert shots[-1][0] == "Problem number 8?"


def test_gsm8k_requests_zero_and_eight_shot():
    pool = [(f"Problem number {i}?", f"So the answer is {i}.") for i in range(12)]
    zero = GSM8K(shots=0).messages("Problem number 3?", pool)
    assert len(zero) == 1 and zero[0]["role"] == "user"
    assert zero[0]["content"].endswith("Problem: Problem number 3?")
    assert "The answer is N." in zero[0]["content"]
    eight = GSM8K(shots=8).messages("Problem number 3?", pool)
    assert len(eight) == 17
    assert [m["role"] for m in eight] == ["user", "assistant"] * 8 + ["user"]
    assert eight[-1] == zero[0]
    assert all("Problem number 3?" not in m["content"] for m in eight[:-1])
    assert eight[1]["content"] == "So the answer is 0."


def test_gsm8k_options():
    assert get_task("gsm8k", shots=8).shots == 8
    assert get_task("math500").name == "math500"
    with pytest.raises(FactoryError, match="shots must be 0 or 8, got 5"):
        get_task("gsm8k", shots=5)
    with pytest.raises(FactoryError, match="unknown option 'shot'"):
        get_task("gsm8k", shot=8)


# -------------------------------------------------------------- real data


@pytest.mark.slow
def test_gsm8k_real_data_counts_shots_and_gold():
    zero = GSM8K(shots=0).samples()
    assert len(zero) == 1319 and len({s.id for s in zero}) == 1319
    assert zero[0].data["answer"] == "18" and "Janet" in zero[0].request.messages[0]["content"]
    eight = GSM8K(shots=8).samples()
    for s in eight:
        msgs = s.request.messages
        assert len(msgs) == 17
        assert all(s.data["question"] not in m["content"] for m in msgs[:-1])
    task = GSM8K()
    for s in zero:
        for response in (f"Reasoning.\nThe answer is {s.data['answer']}.", f"Work...\n#### {s.data['answer']}"):
            assert task.score(s, [response]).metrics["exact_match"] == 1.0, (s.id, response)


@pytest.mark.slow
def test_math500_real_data_counts_and_gold():
    samples = Math500().samples()
    assert len(samples) == 500 and len({s.id for s in samples}) == 500
    assert samples[0].data["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    task = Math500()
    for s in samples:
        gold = s.data["answer"]
        for response in (
            f"So \\boxed{{{gold}}}.",
            f"Final Answer: The final answer is ${gold}$. I hope it is correct.",
            gold,
        ):
            assert task.score(s, [response]).metrics["exact_match"] == 1.0, (s.id, response)


def test_shipped_exemplars_come_first_and_the_reserve_fills_in():
    docs = [
        {"question": "Ann has 2 cats and gets 3 more. How many cats?", "choices": ["2 + 3 = 5. So the answer is 5."]},
        {"question": "Cy has 4 hats.", "choices": ["So the answer is 4."]},
    ]
    records = [("f: record 1", {"request": {"context": CONTEXT}}, docs[0]), ("f: record 2", {}, docs[1])]
    task = GSM8K(shots=8)
    pool = task._pool(records)
    assert [q for q, _ in pool[:2]] == [
        "Ann has 2 cats and gets 3 more. How many cats?",
        "Bob had 9 eggs and ate 4. How many are left?",
    ]
    msgs = task.messages(docs[0]["question"], pool)
    shots = [m["content"] for m in msgs[:-1:2]]
    assert len(shots) == 2  # Bob (shipped) and Cy (reserve); Ann is the item itself
    assert not any(docs[0]["question"] in s for s in shots)


# ------------------------------------------------------- matrices: row breaks

PMATRIX = r"\begin{pmatrix} %s \end{pmatrix}"


@pytest.mark.parametrize(
    "pred,same",
    [
        (PMATRIX % r"1 \\ -2", True),  # as the gold writes it
        (r"\begin{pmatrix}1\\-2\end{pmatrix}", True),  # no spaces
        (PMATRIX % r"1\\ -2", True),
        (PMATRIX % r"1 \\-2", True),
        (PMATRIX % r"1 \-2", False),  # one backslash: no row break (once credited: "\\ " was dropped from the gold)
        (r"\begin{pmatrix}1\-2\end{pmatrix}", False),
        (PMATRIX % r"1 \ -2", False),  # a TeX space, not a row break
        (PMATRIX % r"1 & -2", False),  # a row, not a column
        (PMATRIX % r"-2 \\ 1", False),
    ],
)
def test_matrix_answers_need_their_row_breaks(pred, same):
    gold = PMATRIX % r"1 \\ -2"
    assert answers_match(pred, gold) is same


def test_canonical_keeps_a_row_break_whole():
    assert canonical(PMATRIX % r"1 \\ -2") == r"\begin{pmatrix}1\\-2\end{pmatrix}"
    assert canonical(PMATRIX % r"1 \-2") == r"\begin{pmatrix}1\-2\end{pmatrix}"
    assert canonical(r"x\ =\,5") == "x=5"  # spacing commands still go


def _synthetic_matrices(count: int, seed: int = 0):
    """(gold, the same matrix spaced differently, the matrix with its row breaks malformed)."""
    rng = random.Random(seed)
    for _ in range(count):
        r, c = rng.choice([(2, 1), (3, 1), (2, 2), (3, 3)])
        rows = [[str(rng.randint(-9, 9)) for _ in range(c)] for _ in range(r)]

        def write(sep, col=" & ", rows=rows):
            return PMATRIX % sep.join(col.join(row) for row in rows)

        gold = write(r" \\ ")
        good = write(rng.choice([r"\\", r" \\ ", r"\\ ", r" \\"]), rng.choice(["&", " & "]))
        bad = write(rng.choice([" \\", "\\", " \\ "]))  # one backslash where two belong
        yield gold, good, bad


def test_synthetic_matrices_agree_with_math_verify():
    """Correct spellings of a matrix still match; malformed row breaks, which
    math-verify rejects, are no longer credited by the cheap string test."""
    triples = list(_synthetic_matrices(60))
    assert all(answers_match(good, gold) for gold, good, _ in triples)
    assert not any(answers_match(bad, gold) for gold, _, bad in triples)
    assert not any(math_verify_equal(gold, bad) for gold, _, bad in triples[:20])


# ------------------------------------------------------ lm-eval's GSM8K prompts

LM_EVAL_GSM8K = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" if lm_eval else None


def test_gsm8k_lm_eval_zero_shot_is_a_plain_question_answer_prompt():
    task = GSM8K(prompt="lm-eval")
    req = task.request("Ann has 2 cats and gets 3 more. How many cats?", [])
    assert req.messages is None
    assert req.prompt == "Question: Ann has 2 cats and gets 3 more. How many cats?\nAnswer:"
    assert req.sampling.stop == ["Question:", "</s>", "<|im_end|>"] and req.sampling.max_tokens == 256
    assert req.sampling.temperature == 0.0
    chat = GSM8K().request("Ann has 2 cats?", [])
    assert chat.prompt is None and chat.messages[0]["role"] == "user" and chat.sampling.max_tokens == 512


def test_gsm8k_lm_eval_eight_shot_is_its_cot_prompt_with_the_shipped_exemplars():
    pool = [(f"Problem number {i}?", f"{i} + 0 = {i}. So the answer is {i}.") for i in range(12)]
    prompt = GSM8K(shots=8, prompt="lm-eval").request("Problem number 3?", pool).prompt
    blocks = prompt.split("\n\n")
    assert len(blocks) == 9 and blocks[-1] == "Q: Problem number 3?\nA:"
    assert blocks[0] == "Q: Problem number 0?\nA: 0 + 0 = 0. The answer is 0."
    assert "Problem number 3?\nA: 3" not in prompt  # the problem is never its own exemplar
    assert GSM8K(shots=8, prompt="lm-eval").request("x", pool).sampling.stop == ["Q:", "</s>", "<|im_end|>"]


@pytest.mark.skipif(lm_eval is None, reason="lm-eval is not installed")
@pytest.mark.parametrize("shots,yaml_name", [(0, "gsm8k.yaml"), (8, "gsm8k-cot.yaml")])
def test_gsm8k_lm_eval_prompt_equals_lm_evals_own_rendering(shots, yaml_name):
    """The installed lm-eval's task YAML, rendered as lm-eval assembles a few-shot context
    (text, a space, the target; blank lines between), gives our prompt to the character,
    with the exemplars spelled as the data package ships them ("So the answer is N.")."""
    from lm_eval.utils import apply_template

    config = yaml.safe_load((LM_EVAL_GSM8K / yaml_name).read_text())
    exemplars = (config.get("fewshot_config") or {}).get("samples", [])[:shots]
    assert len(exemplars) == shots
    question = "Janet's ducks lay 16 eggs per day. How many are left?"
    expected = "\n\n".join(
        [apply_template(config["doc_to_text"], ex) + " " + ex["target"] for ex in exemplars]
        + [apply_template(config["doc_to_text"], {"question": question})]
    )
    pool = [(ex["question"], ex["target"].replace("The answer is", "So the answer is")) for ex in exemplars]
    request = GSM8K(shots=shots, prompt="lm-eval").request(question, pool)
    assert request.prompt == expected
    assert request.sampling.stop == config["generation_kwargs"]["until"]


def test_gsm8k_prompt_option_is_checked():
    assert get_task("gsm8k", prompt="lm-eval").prompt == "lm-eval"
    with pytest.raises(FactoryError, match="prompt must be one of chat, lm-eval, got 'lmeval'"):
        get_task("gsm8k", prompt="lmeval")
