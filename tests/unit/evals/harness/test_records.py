"""evals.harness.records: lm-eval's logged samples turned into the suite's
(Sample, [chosen answer], Score) records."""

import pytest

from evals.api import Request, Sample, Score
from evals.harness.records import answer_texts, to_record, to_records

ARC_DOC = {
    "question": "Which is a gas at room temperature?",
    "choices": {"text": ["iron", "oxygen", "salt", "wood"], "label": ["A", "B", "C", "D"]},
    "answerKey": "B",
}


def logged(doc_id, doc, lls, target, acc, acc_norm=None, prompt="Question: ...\nAnswer:"):
    """One sample as ``simple_evaluate(log_samples=True)`` keeps it in memory."""
    out = {
        "doc_id": doc_id,
        "doc": doc,
        "target": target,
        "arguments": [(prompt, f" {i}") for i in range(len(lls))],
        "filtered_resps": [(ll, i == 0) for i, ll in enumerate(lls)],
        "acc": acc,
    }
    if acc_norm is not None:
        out["acc_norm"] = acc_norm
    return out


@pytest.mark.parametrize(
    "task, doc, answers",
    [
        ("arc_easy", ARC_DOC, ["iron", "oxygen", "salt", "wood"]),
        ("arc_challenge", ARC_DOC, ["iron", "oxygen", "salt", "wood"]),
        ("hellaswag", {"choices": ["a", "b", "c", "d"]}, ["a", "b", "c", "d"]),
        ("piqa", {"sol1": "boil it", "sol2": "freeze it"}, ["boil it", "freeze it"]),
        ("winogrande", {"option1": "Ann", "option2": "Bo"}, ["Ann", "Bo"]),
        ("mmlu_anatomy", {"choices": ["liver", "lung", "heart", "skin"]}, ["liver", "lung", "heart", "skin"]),
    ],
)
def test_answer_texts(task, doc, answers):
    assert answer_texts(task, doc) == answers


def test_answer_texts_of_an_unknown_task_is_a_key_error():
    with pytest.raises(KeyError):
        answer_texts("boolq", {})


def test_a_right_answer():
    sample, chosen, score = to_record(
        "arc_easy",
        logged(7, ARC_DOC, [-4.0, -1.25, -3.0, -9.5], 1, 1.0, 1.0, prompt="Question: Which is a gas?\nAnswer:"),
    )
    assert isinstance(sample, Sample) and isinstance(score, Score)
    assert sample.id == "arc_easy/7"
    assert sample.request == Request(prompt="Question: Which is a gas?\nAnswer:")
    assert sample.data == {"task": "arc_easy", "doc": ARC_DOC, "answers": ["iron", "oxygen", "salt", "wood"], "gold": 1}
    assert chosen == ["oxygen"]
    assert score.metrics == {"acc": 1.0, "acc_norm": 1.0}
    assert score.reason is None
    assert score.details == {
        "loglikelihoods": [-4.0, -1.25, -3.0, -9.5],
        "chosen": 1,
        "is_greedy": [True, False, False, False],
    }


def test_a_wrong_answer_says_what_was_chosen_and_what_was_right():
    _, chosen, score = to_record("arc_easy", logged(0, ARC_DOC, [-0.5, -2.0, -3.0, -4.0], 1, 0.0))
    assert chosen == ["iron"]
    assert score.metrics == {"acc": 0.0}  # only the metrics that were logged
    assert score.reason == "chose 'iron', gold 'oxygen'"


def test_a_tie_goes_to_the_first_choice():
    _, chosen, score = to_record("hellaswag", logged(0, {"choices": ["a", "b", "c"]}, [-2.0, -1.0, -1.0], 2, 0.0))
    assert chosen == ["b"] and score.details["chosen"] == 1
    assert score.reason == "chose 'b', gold 'c'"


def test_winogrande_gold_comes_from_the_document():
    doc = {"option1": "Ann", "option2": "Bo", "answer": "2"}
    sample, chosen, score = to_record("winogrande", logged(3, doc, [-1.0, -2.0], "ignored", 0.0))
    assert sample.data["gold"] == 1
    assert chosen == ["Ann"]
    assert score.reason == "chose 'Ann', gold 'Bo'"


def test_records_in_task_then_document_order():
    piqa = {"sol1": "x", "sol2": "y"}
    samples = {
        "piqa": [logged(2, piqa, [-1.0, -2.0], 0, 1.0), logged(0, piqa, [-2.0, -1.0], 0, 0.0)],
        "arc_easy": [logged(1, ARC_DOC, [-1.0, -2.0, -3.0, -4.0], 0, 1.0)],
    }
    records = to_records(samples)
    assert [s.id for s, _, _ in records] == ["piqa/0", "piqa/2", "arc_easy/1"]
    assert [c for _, c, _ in records] == [["y"], ["x"], ["iron"]]
    assert to_records({}) == []
