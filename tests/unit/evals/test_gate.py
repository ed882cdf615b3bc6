"""Suite YAML validation (one-line errors naming file and key) and the gate's verdicts and exit codes."""

import json

import pytest

from evals import gate
from evals import results as res
from factory.cli import main


def _results(per_task: dict[str, list[float]], path=None) -> dict:
    """A results file whose tasks have one 'accuracy' metric over samples 0..n-1."""
    samples = [
        {"task": t, "id": str(i), "metrics": {"accuracy": v}, "outputs": [], "reason": None}
        for t, values in per_task.items()
        for i, v in enumerate(values)
    ]
    tasks = {
        t: {
            "task": t,
            "headline": "accuracy",
            "n": len(v),
            "metrics": res.summarize([s for s in samples if s["task"] == t], ("accuracy",)),
        }
        for t, v in per_task.items()
    }
    data = {
        "format": res.FORMAT,
        "model": {"label": "m"},
        "engine": {"name": "hf"},
        "suite": {"name": "s"},
        "tasks": tasks,
        "samples": samples,
    }
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


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--max-drop", "gsm8k/accuracy"], "--max-drop 'gsm8k/accuracy': expected task/metric=DROP"),
        (["--max-drop", "gsm8k/accuracy=-1"], "expected task/metric=DROP with DROP >= 0"),
        (["--max-drop", "gsm8k/acc=0.1"], "--max-drop gsm8k/acc: no such task or task/metric"),
        (["--default-max-drop", "-0.1"], "--default-max-drop -0.1: must be >= 0"),
        (["--alpha", "1.5"], "--alpha 1.5: must be between 0 and 1"),
    ],
)
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
    for path, expected in (
        (tmp_path / "nope.json", "nope.json: no such results file"),
        (tmp_path / "bad.json", "bad.json:1: not valid JSON"),
        (tmp_path / "other.json", "other.json: not a results file"),
    ):
        assert main(["gate", str(path), str(good)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
