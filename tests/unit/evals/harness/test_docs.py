"""evals.harness.docs: the document functions the HellaSwag and WinoGrande task YAMLs name."""

from evals.harness.docs import hellaswag_docs, winogrande_contexts, winogrande_gold, winogrande_rest

HELLASWAG = {
    "activity_label": "Home and Garden",
    "ctx_a": "[header] How to plant a tree [title] Dig a hole.",
    "ctx_b": "then water it",
    "endings": [" until the soil is damp. [step] Wait a week.", "[substeps] with  a hose.", "x", "y "],
    "label": "2",
}


class Rows:
    """The one part of a ``datasets.Dataset`` the function uses: ``map``."""

    def __init__(self, rows):
        self.rows = rows

    def map(self, fn):
        return [dict(row, **fn(row)) for row in self.rows]


def test_hellaswag_query_choices_and_gold():
    (doc,) = hellaswag_docs(Rows([HELLASWAG]))
    # ctx_b is capitalised; " [title]" becomes a sentence break; other brackets go; double spaces fold
    assert doc["query"] == "Home and Garden: How to plant a tree. Dig a hole. Then water it"
    # stripping comes before the brackets go, so a leading marker leaves its space (as in lm-eval)
    assert doc["choices"] == ["until the soil is damp. Wait a week.", " with a hose.", "x", "y"]
    assert doc["gold"] == 2
    assert doc["label"] == "2"  # the original fields stay


def test_hellaswag_one_fold_pass_only():
    (doc,) = hellaswag_docs(Rows([dict(HELLASWAG, endings=["a    b", "[x][y]z", "", "c"])]))
    assert doc["choices"] == ["a  b", "z", "", "c"]  # four spaces fold to two, as lm-eval's does


WINO = {
    "sentence": "The trophy did not fit in the suitcase because _ was too big.",
    "option1": "the trophy",
    "option2": "the suitcase",
    "answer": "1",
}


def test_winogrande_gold_is_zero_based():
    assert winogrande_gold(WINO) == 0
    assert winogrande_gold(dict(WINO, answer="2")) == 1


def test_winogrande_contexts_complete_the_sentence_up_to_the_blank():
    assert winogrande_contexts(WINO) == [
        "The trophy did not fit in the suitcase because the trophy",
        "The trophy did not fit in the suitcase because the suitcase",
    ]


def test_winogrande_rest_is_the_continuation_after_the_blank():
    assert winogrande_rest(WINO) == "was too big."
    assert winogrande_rest(dict(WINO, sentence="_ won.")) == "won."
