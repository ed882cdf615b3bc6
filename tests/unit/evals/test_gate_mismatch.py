"""The gate refuses two results that were not run alike (task options, sampling,
sample ids, prompts), in one line and with exit 2, unless told to compare anyway;
then it lists each difference and the exit code follows the comparison."""

import copy
import json
from pathlib import Path

import pytest

from evals import gate
from evals import results as res
from factory.cli import main
from factory.engines.base import manifest_head
from factory.recipe import load_recipe
from factory.stages.base import StageContext
from factory.stages.gate import GateConfig
from factory.stages.gate import run as run_gate_stage
from foundation.errors import FactoryError

GREEDY = {"max_tokens": 192, "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": 0, "stop": None}
HINT = "pass --allow-mismatch to compare anyway"
SMOKE = Path(__file__).resolve().parents[3] / "recipes" / "smoke.yaml"


def _sample(task: str, i: int, metric: str, value: float) -> dict:
    rec = {"task": task, "id": str(i), "outputs": ["..."], "metrics": {metric: value}, "reason": None}
    if task == "gsm8k":
        rec["prompt"] = f"Question {i}: how many?\nAnswer:"
    else:
        rec["messages"] = [{"role": "user", "content": f"{task} item {i}"}]
    if task.startswith("bfcl"):
        rec["tools"] = [{"type": "function", "function": {"name": f"f{i}", "parameters": {}}}]
    return rec


def _results(spec: dict, engine: dict | None = None, model: str = "m", suite: str = "quick") -> dict:
    """A results file as the runner writes it. ``spec``: task name -> (registered task,
    options, limit, max_tokens or None for a log-likelihood task, metric, values per sample id)."""
    tasks, samples = {}, []
    for name, (task, options, limit, max_tokens, metric, values) in spec.items():
        recs = [_sample(name, i, metric, v) for i, v in enumerate(values)]
        samples += recs
        tasks[name] = {
            "task": task,
            "options": options,
            "limit": limit,
            "sampling": None if max_tokens is None else {**GREEDY, "max_tokens": max_tokens},
            "licence": "MIT",
            "headline": metric,
            "n": len(recs),
            "wall_s": 1.0,
            "metrics": res.summarize(recs, (metric,)),
        }
    return {
        "format": res.FORMAT,
        "model": {"path": f"/models/{model}", "hash": model * 8, "label": model},
        "engine": engine or {"name": "hf", "settings": {"max_batch": 8}},
        "suite": {"name": suite, "hash": suite * 8, "file": f"{suite}.yaml"},
        "limit": None,
        "sampling_overrides": {},
        "bootstrap": {"resamples": 1000, "seed": 0, "level": 0.95},
        "versions": {"python": "3.11"},
        "created": "2026-01-01T00:00:00+0000",
        "wall_s": 1.0,
        "tasks": tasks,
        "samples": samples,
    }


def _alternating(n: int) -> list[float]:
    return [float(i % 2 == 0) for i in range(n)]


def smoke_result() -> dict:
    """recipes/smoke.yaml's evaluate suite: few samples, 16 tokens."""
    return _results(
        {
            "ifeval": ("ifeval", {}, 4, 16, "prompt_level_strict_acc", _alternating(4)),
            "gsm8k": ("gsm8k", {}, 4, 16, "accuracy", _alternating(4)),
            "humaneval": ("humaneval", {}, 2, 16, "pass@1", [1.0, 0.0]),
            "bfcl_simple": ("bfcl", {"category": "simple"}, 2, 16, "accuracy", [1.0, 0.0]),
            "arc_easy": ("harness", {"tasks": ["arc_easy"]}, 8, None, "acc", _alternating(8)),
        },
        model="aligned",
        suite="smoke",
    )


def quick_result() -> dict:
    """evals/suites/quick.yaml run with --tasks ifeval,gsm8k,bfcl_simple: more samples, 192 tokens
    (128 for BFCL)."""
    return _results(
        {
            "ifeval": ("ifeval", {}, 24, 192, "prompt_level_strict_acc", _alternating(24)),
            "gsm8k": ("gsm8k", {}, 16, 192, "accuracy", _alternating(16)),
            "bfcl_simple": ("bfcl", {"category": "simple"}, 12, 128, "accuracy", _alternating(12)),
        },
        model="teacher",
        suite="quick",
    )


def _write(tmp_path, candidate: dict, baseline: dict) -> list[str]:
    c, b = tmp_path / "cand.json", tmp_path / "base.json"
    res.write(candidate, c)
    res.write(baseline, b)
    return [str(c), str(b)]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_smoke_against_quick_is_refused_in_one_line(tmp_path, capsys):
    """The case of the report: before, this exited 0 with "gate passed: 3 metrics"."""
    files = _write(tmp_path, smoke_result(), quick_result())
    assert main(["gate", *files]) == 2
    err = _err_line(capsys)
    assert err == (
        f"error: gate: candidate and baseline differ in ifeval sampling.max_tokens (16 vs 192) and 5 more; {HINT}"
    ), err
    assert capsys.readouterr().out == ""


def test_smoke_against_quick_allowed_lists_every_difference(tmp_path, capsys):
    verdict = tmp_path / "gate.json"
    files = _write(tmp_path, smoke_result(), quick_result())
    assert main(["gate", *files, "--allow-mismatch", "--json", str(verdict)]) == 0
    captured = capsys.readouterr()
    assert "gate passed: 3 metrics" in captured.out
    expected = [
        "ifeval sampling.max_tokens (16 vs 192)",
        "ifeval sample ids (4 vs 24 samples; 4 shared)",
        "gsm8k sampling.max_tokens (16 vs 192)",
        "gsm8k sample ids (4 vs 16 samples; 4 shared)",
        "bfcl_simple sampling.max_tokens (16 vs 128)",
        "bfcl_simple sample ids (2 vs 12 samples; 2 shared)",
    ]
    assert captured.err.splitlines() == [f"gate: compared anyway, they differ in {line}" for line in expected]
    data = json.loads(verdict.read_text())
    assert data["passed"] is True and [m["line"] for m in data["mismatches"]] == expected
    assert data["mismatches"][0] == {
        "task": "ifeval",
        "what": "sampling.max_tokens",
        "candidate": "16",
        "baseline": "192",
        "note": "",
        "line": expected[0],
    }


def _same_as_quick() -> dict:
    """The quick result's tasks, samples and sampling, from another model served another way."""
    out = quick_result()
    out.update(
        model={"name": "served-model", "hash": "c" * 64, "label": "served"},
        engine={"name": "vllm", "settings": {"tensor_parallel_size": 2, "max_num_seqs": 256}},
        suite={"name": "mine", "hash": "d" * 64, "file": "mine.yaml"},
        versions={"python": "3.12", "vllm": "0.9"},
        bootstrap={"resamples": 200, "seed": 3, "level": 0.9},
    )
    return out


def _set_sampling(key, value):
    def edit(r):
        r["tasks"]["gsm8k"]["sampling"][key] = value

    return edit


def _drop_sample(r):
    r["samples"] = [s for s in r["samples"] if not (s["task"] == "gsm8k" and s["id"] == "3")]


def _rename_sample(r):
    next(s for s in r["samples"] if s["task"] == "gsm8k" and s["id"] == "3")["id"] = "1003"


def _edit_sample(task, i, key, value):
    def edit(r):
        next(s for s in r["samples"] if s["task"] == task and s["id"] == str(i))[key] = value

    return edit


def _options(task, options):
    def edit(r):
        r["tasks"][task]["options"] = options

    return edit


def _registered_task(r):
    r["tasks"]["gsm8k"]["task"] = "math500"


def _digest(r, task, i):
    return gate.prompt_digest(next(s for s in r["samples"] if s["task"] == task and s["id"] == str(i)))[:12]


@pytest.mark.parametrize(
    "edit,expected",
    [
        (_registered_task, "gsm8k task (math500 vs gsm8k)"),
        (_options("bfcl_simple", {"category": "multiple"}), "bfcl_simple options.category (multiple vs simple)"),
        (_options("bfcl_simple", {}), "bfcl_simple options.category (absent vs simple)"),
        (_options("gsm8k", {"shots": 8}), "gsm8k options.shots (8 vs absent)"),
        (_set_sampling("max_tokens", 256), "gsm8k sampling.max_tokens (256 vs 192)"),
        (_set_sampling("temperature", 0.8), "gsm8k sampling.temperature (0.8 vs 0.0)"),
        (_set_sampling("top_p", 0.95), "gsm8k sampling.top_p (0.95 vs 1.0)"),
        (_set_sampling("n", 10), "gsm8k sampling.n (10 vs 1)"),
        (_set_sampling("seed", 7), "gsm8k sampling.seed (7 vs 0)"),
        (_set_sampling("stop", ["\n\n"]), 'gsm8k sampling.stop (["\\n\\n"] vs null)'),
        (_drop_sample, "gsm8k sample ids (15 vs 16 samples; 15 shared)"),
        (_rename_sample, "gsm8k sample ids (16 vs 16 samples; 15 shared)"),
        (
            _edit_sample("gsm8k", 5, "prompt", "Question 5: how many? Think step by step.\nAnswer:"),
            "gsm8k prompt of sample 5 ({c} vs {b}; 1 of 16 shared samples differ)",
        ),
        (
            _edit_sample(
                "ifeval",
                2,
                "messages",
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ifeval item 2"}],
            ),
            "ifeval prompt of sample 2 ({c} vs {b}; 1 of 24 shared samples differ)",
        ),
        (
            _edit_sample("bfcl_simple", 0, "tools", []),
            "bfcl_simple prompt of sample 0 ({c} vs {b}; 1 of 12 shared samples differ)",
        ),
    ],
)
def test_each_kind_of_mismatch_is_refused(tmp_path, capsys, edit, expected):
    base, cand = quick_result(), _same_as_quick()
    edit(cand)
    task, _, rest = expected.partition(" ")
    if "{c}" in expected:
        i = rest.split()[3]
        expected = expected.format(c=_digest(cand, task, i), b=_digest(base, task, i))
    assert main(["gate", *_write(tmp_path, cand, base)]) == 2
    assert _err_line(capsys) == f"error: gate: candidate and baseline differ in {expected}; {HINT}"
    with pytest.raises(FactoryError, match="differ in"):
        gate.compare(cand, base)  # the library refuses too, unless told otherwise
    assert [str(m) for m in gate.mismatches(cand, base)] == [expected]


def test_allowed_mismatch_exit_code_follows_the_comparison(tmp_path, capsys):
    base = quick_result()
    cand = _same_as_quick()
    _set_sampling("max_tokens", 256)(cand)
    for s in cand["samples"]:  # every ifeval sample now fails: a significant regression
        if s["task"] == "ifeval":
            s["metrics"]["prompt_level_strict_acc"] = 0.0
    verdict = tmp_path / "gate.json"
    assert main(["gate", *_write(tmp_path, cand, base), "--allow-mismatch", "--json", str(verdict)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["gate: compared anyway, they differ in gsm8k sampling.max_tokens (256 vs 192)"]
    assert "gate failed: 1 of 3 metrics regressed: ifeval/prompt_level_strict_acc" in captured.out
    data = json.loads(verdict.read_text())
    assert data["passed"] is False and [m["what"] for m in data["mismatches"]] == ["sampling.max_tokens"]


def test_results_run_alike_pass_and_fail_as_before(tmp_path, capsys):
    """Model, engine and its settings, suite name, versions and bootstrap settings may differ."""
    base, cand = quick_result(), _same_as_quick()
    verdict = tmp_path / "gate.json"
    assert main(["gate", *_write(tmp_path, cand, base), "--json", str(verdict)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "gate passed: 3 metrics" in captured.out
    assert json.loads(verdict.read_text())["mismatches"] == []
    for s in cand["samples"]:
        if s["task"] == "ifeval":
            s["metrics"]["prompt_level_strict_acc"] = 0.0
    assert main(["gate", *_write(tmp_path, cand, base)]) == 1
    captured = capsys.readouterr()
    assert captured.err == "" and "gate failed: 1 of 3 metrics regressed" in captured.out


def test_task_sets_extra_is_not_gated_missing_fails(tmp_path, capsys):
    base = quick_result()
    extra = _same_as_quick()
    math = _results({"math500": ("math500", {}, 12, 192, "accuracy", _alternating(12))})
    extra["tasks"].update(math["tasks"])
    extra["samples"] += math["samples"]
    assert main(["gate", *_write(tmp_path, extra, base)]) == 0
    assert "gate passed: 3 metrics" in capsys.readouterr().out

    fewer = _same_as_quick()
    del fewer["tasks"]["gsm8k"]
    fewer["samples"] = [s for s in fewer["samples"] if s["task"] != "gsm8k"]
    assert main(["gate", *_write(tmp_path, fewer, base)]) == 1
    captured = capsys.readouterr()
    assert captured.err == "" and "gsm8k/accuracy missing" in captured.out


# -- the pipeline's gate stage ---------------------------------------------------


def _stage(tmp_path, candidate: dict, baseline: dict, **config) -> StageContext:
    results = tmp_path / "evaluate"
    res.write(candidate, results / "results-aligned.json")
    res.write(baseline, results / "results-teacher.json")
    cfg = GateConfig(results="evaluate", candidate="aligned", baseline="teacher", **config)
    cfg.check("stages.gate")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return StageContext(
        name="gate",
        config=cfg,
        seed=0,
        base=tmp_path,
        models={"results": results},
        datasets={},
        out_dir=out,
        work_dir=tmp_path / "work",
        progress=False,
    )


def test_stage_refuses_a_mismatch_whatever_on_regression_says(tmp_path):
    for on_regression in ("fail", "record"):
        ctx = _stage(tmp_path, smoke_result(), quick_result(), on_regression=on_regression)
        with pytest.raises(FactoryError) as err:
            run_gate_stage(ctx)
        assert str(err.value) == (
            "stages.gate: aligned and teacher differ in ifeval sampling.max_tokens (16 vs 192) "
            "and 5 more; set stages.gate.allow_mismatch=true to compare anyway"
        )
        assert not (ctx.out_dir / "gate.json").exists()


def test_stage_allowed_mismatch_is_recorded(tmp_path):
    ctx = _stage(tmp_path, smoke_result(), quick_result(), allow_mismatch=True, on_regression="record")
    result = run_gate_stage(ctx)
    assert result.metrics["passed"] is True and result.metrics["metrics_gated"] == 3
    assert result.extra["mismatches"][:2] == [
        "ifeval sampling.max_tokens (16 vs 192)",
        "ifeval sample ids (4 vs 24 samples; 4 shared)",
    ]
    assert len(result.extra["mismatches"]) == 6
    verdict = json.loads((ctx.out_dir / "gate.json").read_text())
    assert [m["line"] for m in verdict["mismatches"]] == result.extra["mismatches"]
    text = (ctx.out_dir / "gate.txt").read_text()
    assert text.startswith("compared anyway, they differ in ifeval sampling.max_tokens (16 vs 192)\n")


def test_stage_results_run_alike_record_no_mismatch(tmp_path):
    base = quick_result()
    cand = copy.deepcopy(base)
    result = run_gate_stage(_stage(tmp_path, cand, base))
    assert result.metrics["passed"] is True and result.extra["mismatches"] == []
    assert not (tmp_path / "out" / "gate.txt").read_text().startswith("compared anyway")


def test_allow_mismatch_is_a_recorded_config_key():
    recipe = load_recipe(SMOKE)
    assert manifest_head(recipe, "gate")["config"]["allow_mismatch"] is False
    on = load_recipe(SMOKE, ["stages.gate.allow_mismatch=true"])
    assert manifest_head(on, "gate")["config"]["allow_mismatch"] is True
    assert on.config_hash("gate") != recipe.config_hash("gate")  # it changes the verdict: it is hashed
