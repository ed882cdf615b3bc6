"""lm-eval's logged samples as the suite's records: (Sample, [chosen answer], Score)."""

from __future__ import annotations

from evals.api import Request, Sample, Score
from evals.harness.docs import winogrande_gold


def answer_texts(task: str, doc: dict) -> list[str]:
    """The answers the choices stand for, as a reader would name them (MMLU's
    choices are the letters; the answer is the option text behind one)."""
    if task in ("arc_easy", "arc_challenge"):
        return list(doc["choices"]["text"])
    if task == "hellaswag":
        return list(doc["choices"])
    if task == "piqa":
        return [doc["sol1"], doc["sol2"]]
    if task == "winogrande":
        return [doc["option1"], doc["option2"]]
    if task.startswith("mmlu_"):
        return list(doc["choices"])
    raise KeyError(task)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def to_record(task: str, logged: dict) -> tuple[Sample, list[str], Score]:
    """One logged sample (``simple_evaluate(log_samples=True)``) as a record."""
    doc = logged["doc"]
    lls = [float(r[0]) for r in logged["filtered_resps"]]
    answers = answer_texts(task, doc)
    chosen = _argmax(lls)  # what `acc` judges; `acc_norm` divides by each choice's length first
    metrics = {m: float(logged[m]) for m in ("acc", "acc_norm") if m in logged}
    gold = winogrande_gold(doc) if task == "winogrande" else logged["target"]
    prompt = logged["arguments"][0][0]
    sample = Sample(
        id=f"{task}/{logged['doc_id']}",
        request=Request(prompt=prompt),
        data={"task": task, "doc": doc, "answers": answers, "gold": gold},
    )
    reason = None
    if metrics.get("acc", 1.0) != 1.0:
        reason = f"chose {answers[chosen]!r}, gold {answers[gold]!r}"
    score = Score(
        metrics=metrics,
        reason=reason,
        details={"loglikelihoods": lls, "chosen": chosen, "is_greedy": [bool(r[1]) for r in logged["filtered_resps"]]},
    )
    return sample, [answers[chosen]], score


def to_records(samples: dict[str, list[dict]]) -> list[tuple[Sample, list[str], Score]]:
    """All tasks' records, in task then document order."""
    out = []
    for task in samples:
        for logged in sorted(samples[task], key=lambda s: s["doc_id"]):
            out.append(to_record(task, logged))
    return out
