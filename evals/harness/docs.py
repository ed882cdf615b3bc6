"""Document functions the task YAMLs name with ``!function``. Each reproduces
what lm-eval's built-in task of the same name does to a document, so that the
prompts, and therefore the accuracies, are the same."""

from __future__ import annotations

import re

_BRACKETED = re.compile(r"\[.*?\]")


def _clean(text: str) -> str:
    # HellaSwag's WikiHow half carries markup such as "[title]" and "[step]":
    # a title marker becomes a sentence break, every other bracket goes, and one
    # pass folds the double spaces that leaves behind.
    text = text.strip().replace(" [title]", ". ")
    text = _BRACKETED.sub("", text)
    return text.replace("  ", " ")


def _hellaswag_doc(doc: dict) -> dict:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": _clean(doc["activity_label"] + ": " + context),
        "choices": [_clean(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def hellaswag_docs(dataset):
    """The cleaned query, the four cleaned endings and the gold index per document."""
    return dataset.map(_hellaswag_doc)


def winogrande_gold(doc: dict) -> int:
    """Index of the right option ("1" or "2" in the data)."""
    return int(doc["answer"]) - 1


def winogrande_contexts(doc: dict) -> list[str]:
    """The sentence up to the blank, completed by each option."""
    head = doc["sentence"][: doc["sentence"].index("_")]
    return [head + doc["option1"], head + doc["option2"]]


def winogrande_rest(doc: dict) -> str:
    """The sentence after the blank: the continuation every context is scored on."""
    sentence = doc["sentence"]
    return sentence[sentence.index("_") + 1 :].strip()
