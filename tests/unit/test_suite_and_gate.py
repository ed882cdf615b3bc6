"""Suite YAML validation (one-line errors naming file and key) and the gate's verdicts and exit codes."""

import json

import pytest

from evals import gate
from evals import results as res
from evals.suite import load_suite, parse_suite, shipped
from factory.cli import main
from foundation.errors import FactoryError


class EchoTask:
    """A stand-in task with the kinds of options real tasks have."""

    name = "echo"
    metrics = ("accuracy",)
    licence = "CC0-1.0"

    def __init__(self, shots: int = 0, category: str = "simple", tasks: list[str] | None = None,
                 strict: bool = False):
        self.shots, self.category = shots, category


@pytest.fixture
def echo(monkeypatch):
    from evals import tasks

    monkeypatch.setitem(tasks.TASKS, "echo", EchoTask)


def _suite(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


GOOD = """
name: mini
engine: hf
engine_settings: {hf: {batch_size: 4}}
sampling: {max_tokens: 64}
tasks:
  - {task: echo, limit: 5}
  - {task: echo, shots: 8, limit: 5, sampling: {max_tokens: 128, stop: ["\\n\\n"]}}
  - {task: echo, category: multiple}
  - {task: echo, tasks: [arc_easy, piqa], strict: true}
  - {task: echo, shots: 0, category: simple, name: echo_again}
"""


def test_good_suite_names_and_sampling(tmp_path, echo):
    suite = load_suite(str(_suite(tmp_path, GOOD)))
    assert [e.name for e in suite.entries] == ["echo", "echo_8shot", "echo_multiple", "arc_easy+piqa_strict",
                                               "echo_again"]
    assert suite.entries[1].options == {"shots": 8} and suite.entries[1].limit == 5
    assert suite.sampling_for(suite.entries[1]) == {"max_tokens": 128, "stop": ["\n\n"]}
    assert suite.sampling_for(suite.entries[0], {"temperature": 0.5}) == {"max_tokens": 64, "temperature": 0.5}
    assert suite.settings_for("hf") == {"batch_size": 4} and suite.settings_for("vllm") == {}
    assert suite.hash == load_suite(str(_suite(tmp_path, GOOD + "# a comment\n"))).hash


BAD = {
    "yaml_syntax": ("name: x\ntasks: [\n", "s.yaml:3: YAML syntax error"),
    "unknown_task": (GOOD.replace("{task: echo, limit: 5}", "{task: gsm9k}"), "s.yaml: tasks[0].task: unknown task 'gsm9k'"),
    "unknown_option": (GOOD.replace("category: multiple", "categroy: multiple"),
                       "s.yaml: tasks[2].categroy: unknown option for task echo"),
    "option_type": (GOOD.replace("shots: 8", "shots: eight"), "s.yaml: tasks[1].shots: expected int, got 'eight'"),
    "limit_type": (GOOD.replace("limit: 5}", "limit: [5]}"), "s.yaml: tasks[0].limit: expected int, got a list"),
    "unknown_top_key": (GOOD + "extra: 1\n", "s.yaml: extra: unknown key"),
    "missing_tasks": ("name: x\n", "s.yaml: tasks: missing required key"),
    "unknown_engine": (GOOD.replace("engine: hf", "engine: tgi"), "s.yaml: engine: unknown engine 'tgi'"),
    "sampling_key": (GOOD.replace("max_tokens: 64", "max_token: 64"), "s.yaml: sampling.max_token: unknown sampling key"),
    "sampling_range": (GOOD.replace("max_tokens: 128", "max_tokens: 0"),
                       "s.yaml: tasks[1].sampling.max_tokens: must be at least 1, got 0"),
    "temperature_range": (GOOD.replace("max_tokens: 64", "max_tokens: 64, temperature: -0.1"),
                          "s.yaml: sampling.temperature: must be >= 0 (0 is greedy), got -0.1"),
    "sampling_type": (GOOD.replace("max_tokens: 128", "max_tokens: lots"),
                      "s.yaml: tasks[1].sampling.max_tokens: expected int, got 'lots'"),
    "duplicate_name": (GOOD.replace("name: echo_again", "name: echo_8shot"),
                       "s.yaml: tasks[4].name: 'echo_8shot' is already the name of tasks[1]"),
    "entry_not_mapping": (GOOD.replace("  - {task: echo, limit: 5}", "  - echo"), "s.yaml: tasks[0]: expected a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_suite_is_one_line_naming_file_and_key(tmp_path, echo, case):
    text, expected = BAD[case]
    with pytest.raises(FactoryError) as e:
        load_suite(str(_suite(tmp_path, text)))
    msg = str(e.value)
    assert "\n" not in msg and expected in msg, msg


def test_task_rejecting_an_option_names_the_entry(tmp_path):
    from evals.runner import plan

    suite = load_suite(str(_suite(tmp_path, "name: x\ntasks:\n  - {task: gsm8k, shots: 3}\n")))
    with pytest.raises(FactoryError, match=r"s.yaml: tasks\[0\]: task gsm8k: shots must be 0 or 8"):
        plan(suite, progress=False)


def test_unknown_shipped_suite_and_missing_file(tmp_path):
    with pytest.raises(FactoryError, match="unknown suite 'quik'"):
        load_suite("quik")
    with pytest.raises(FactoryError, match="nope.yaml: no such suite file"):
        load_suite(str(tmp_path / "nope.yaml"))


def test_shipped_suites_validate():
    assert {"quick", "full"} <= set(shipped())
    quick, full = load_suite("quick"), load_suite("full")
    names = {e.name for e in full.entries}
    assert {"gsm8k", "gsm8k_8shot", "bfcl_simple", "bfcl_parallel", "bfcl_parallel_multiple",
            "bfcl_live_simple", "ifeval", "humaneval", "mbpp", "math500"} <= names, names
    assert all(e.limit is not None for e in quick.entries)
    assert parse_suite({"name": "x", "tasks": [{"task": "gsm8k"}]}, "inline").entries[0].name == "gsm8k"


# -- gate --------------------------------------------------------------------

def _results(per_task: dict[str, list[float]], path=None) -> dict:
    """A results file whose tasks have one 'accuracy' metric over samples 0..n-1."""
    samples = [{"task": t, "id": str(i), "metrics": {"accuracy": v}, "outputs": [], "reason": None}
               for t, values in per_task.items() for i, v in enumerate(values)]
    tasks = {t: {"task": t, "headline": "accuracy", "n": len(v),
                 "metrics": res.summarize([s for s in samples if s["task"] == t], ("accuracy",))}
             for t, v in per_task.items()}
    data = {"format": res.FORMAT, "model": {"label": "m"}, "engine": {"name": "hf"},
            "suite": {"name": "s"}, "tasks": tasks, "samples": samples}
    if path is not None:
        res.write(data, path)
    return data


def _acc(n, correct, first_wrong=0):
    """n samples; the ones at first_wrong..first_wrong+(n-correct)-1 are wrong."""
    wrong = set(range(first_wrong, first_wrong + n - correct))
    return [0.0 if i in wrong else 1.0 for i in range(n)]


@pytest.fixture
def files(tmp_path):
    def make(base, cand):
        b, c = tmp_path / "base.json", tmp_path / "cand.json"
        _results(base, b)
        _results(cand, c)
        return str(c), str(b)
    return make


def test_equal_candidate_passes(files, capsys):
    same = {"gsm8k": _acc(200, 160), "ifeval": _acc(50, 20)}
    assert main(["gate", *files(same, same)]) == 0
    out = capsys.readouterr().out
    assert "gate passed" in out and "FAIL" not in out


def test_degraded_candidate_fails(files, capsys, tmp_path):
    base = {"gsm8k": _acc(200, 160)}  # 0.8
    cand = {"gsm8k": _acc(200, 100)}  # 0.5, the 40 old failures still fail
    verdict = tmp_path / "gate.json"
    assert main(["gate", *files(base, cand), "--json", str(verdict)]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("gsm8k/accuracy"))
    assert row.split()[1:5] == ["200", "0.800", "0.500", "-0.300"] and row.split()[-1] == "FAIL"
    data = json.loads(verdict.read_text())
    assert data["passed"] is False and data["rows"][0]["p"] == pytest.approx(1 / 1001)


def test_small_insignificant_drop_passes(files, capsys):
    base = {"gsm8k": _acc(50, 40)}
    cand = {"gsm8k": _acc(50, 39)}  # one more failure: 0.80 -> 0.78
    assert main(["gate", *files(base, cand)]) == 0
    out = capsys.readouterr().out
    assert "noise" in out
    rows = gate.compare(_results(cand), _results(base))
    # delta* >= 0 exactly when the one flipped sample is not drawn: (49/50)^50 = 0.364
    assert rows[0].p == pytest.approx(0.364, abs=0.04) and rows[0].delta == pytest.approx(-0.02)


def test_significant_drop_within_allowance_passes(files):
    base, cand = {"gsm8k": _acc(200, 160)}, {"gsm8k": _acc(200, 100)}
    assert main(["gate", *files(base, cand), "--max-drop", "gsm8k/accuracy=0.35"]) == 0
    assert main(["gate", *files(base, cand), "--max-drop", "gsm8k=0.35"]) == 0
    assert main(["gate", *files(base, cand), "--default-max-drop", "0.31"]) == 0
    assert main(["gate", *files(base, cand), "--default-max-drop", "0.25"]) == 1


def test_missing_task_fails(files, capsys):
    assert main(["gate", *files({"gsm8k": _acc(20, 10), "mbpp": _acc(20, 5)}, {"gsm8k": _acc(20, 10)})]) == 1
    assert "mbpp/accuracy missing" in capsys.readouterr().out


@pytest.mark.parametrize("args,expected", [
    (["--max-drop", "gsm8k/accuracy"], "--max-drop 'gsm8k/accuracy': expected task/metric=DROP"),
    (["--max-drop", "gsm8k/accuracy=-1"], "expected task/metric=DROP with DROP >= 0"),
    (["--max-drop", "gsm8k/acc=0.1"], "--max-drop gsm8k/acc: no such task or task/metric"),
    (["--default-max-drop", "-0.1"], "--default-max-drop -0.1: must be >= 0"),
    (["--alpha", "1.5"], "--alpha 1.5: must be between 0 and 1"),
])
def test_bad_gate_arguments_exit_2(files, capsys, args, expected):
    same = {"gsm8k": _acc(20, 10)}
    assert main(["gate", *files(same, same), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_bad_gate_files_exit_2(tmp_path, capsys):
    good = tmp_path / "good.json"
    _results({"gsm8k": _acc(10, 5)}, good)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"format": 99}')
    for path, expected in ((tmp_path / "nope.json", "nope.json: no such results file"),
                           (tmp_path / "bad.json", "bad.json:1: not valid JSON"),
                           (tmp_path / "other.json", "other.json: not a results file")):
        assert main(["gate", str(path), str(good)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
