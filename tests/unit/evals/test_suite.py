"""Suite YAML validation (one-line errors naming file and key) and the gate's verdicts and exit codes."""

import pytest

from evals.suite import load_suite, parse_suite, shipped
from foundation.errors import FactoryError


class EchoTask:
    """A stand-in task with the kinds of options real tasks have."""

    name = "echo"
    metrics = ("accuracy",)
    licence = "CC0-1.0"

    def __init__(self, shots: int = 0, category: str = "simple", tasks: list[str] | None = None, strict: bool = False):
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
    assert [e.name for e in suite.entries] == [
        "echo",
        "echo_8shot",
        "echo_multiple",
        "arc_easy+piqa_strict",
        "echo_again",
    ]
    assert suite.entries[1].options == {"shots": 8} and suite.entries[1].limit == 5
    assert suite.sampling_for(suite.entries[1]) == {"max_tokens": 128, "stop": ["\n\n"]}
    assert suite.sampling_for(suite.entries[0], {"temperature": 0.5}) == {"max_tokens": 64, "temperature": 0.5}
    assert suite.settings_for("hf") == {"batch_size": 4} and suite.settings_for("vllm") == {}
    assert suite.hash == load_suite(str(_suite(tmp_path, GOOD + "# a comment\n"))).hash


BAD = {
    "yaml_syntax": ("name: x\ntasks: [\n", "s.yaml:3: YAML syntax error"),
    "unknown_task": (
        GOOD.replace("{task: echo, limit: 5}", "{task: gsm9k}"),
        "s.yaml: tasks[0].task: unknown task 'gsm9k'",
    ),
    "unknown_option": (
        GOOD.replace("category: multiple", "categroy: multiple"),
        "s.yaml: tasks[2].categroy: unknown option for task echo",
    ),
    "option_type": (GOOD.replace("shots: 8", "shots: eight"), "s.yaml: tasks[1].shots: expected int, got 'eight'"),
    "limit_type": (GOOD.replace("limit: 5}", "limit: [5]}"), "s.yaml: tasks[0].limit: expected int, got a list"),
    "unknown_top_key": (GOOD + "extra: 1\n", "s.yaml: extra: unknown key"),
    "missing_tasks": ("name: x\n", "s.yaml: tasks: missing required key"),
    "unknown_engine": (GOOD.replace("engine: hf", "engine: tgi"), "s.yaml: engine: unknown engine 'tgi'"),
    "sampling_key": (
        GOOD.replace("max_tokens: 64", "max_token: 64"),
        "s.yaml: sampling.max_token: unknown sampling key",
    ),
    "sampling_range": (
        GOOD.replace("max_tokens: 128", "max_tokens: 0"),
        "s.yaml: tasks[1].sampling.max_tokens: must be at least 1, got 0",
    ),
    "temperature_range": (
        GOOD.replace("max_tokens: 64", "max_tokens: 64, temperature: -0.1"),
        "s.yaml: sampling.temperature: must be >= 0 (0 is greedy), got -0.1",
    ),
    "sampling_type": (
        GOOD.replace("max_tokens: 128", "max_tokens: lots"),
        "s.yaml: tasks[1].sampling.max_tokens: expected int, got 'lots'",
    ),
    "duplicate_name": (
        GOOD.replace("name: echo_again", "name: echo_8shot"),
        "s.yaml: tasks[4].name: 'echo_8shot' is already the name of tasks[1]",
    ),
    "entry_not_mapping": (
        GOOD.replace("  - {task: echo, limit: 5}", "  - echo"),
        "s.yaml: tasks[0]: expected a mapping",
    ),
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
    assert {
        "gsm8k",
        "gsm8k_8shot",
        "bfcl_simple",
        "bfcl_parallel",
        "bfcl_parallel_multiple",
        "bfcl_live_simple",
        "ifeval",
        "humaneval",
        "mbpp",
        "math500",
    } <= names, names
    assert all(e.limit is not None for e in quick.entries)
    assert parse_suite({"name": "x", "tasks": [{"task": "gsm8k"}]}, "inline").entries[0].name == "gsm8k"


def test_gsm8k_prompt_option_is_validated_and_names_the_entry(tmp_path):
    text = "name: x\ntasks:\n  - {task: gsm8k, prompt: lm-eval}\n  - {task: gsm8k, shots: 8, prompt: lm-eval}\n"
    suite = load_suite(str(_suite(tmp_path, text)))
    assert [e.name for e in suite.entries] == ["gsm8k_lm-eval", "gsm8k_8shot_lm-eval"]
    assert suite.entries[1].options == {"shots": 8, "prompt": "lm-eval"}
    with pytest.raises(FactoryError) as e:
        load_suite(str(_suite(tmp_path, "name: x\ntasks:\n  - {task: gsm8k, prompt: lmeval}\n")))
    assert str(e.value) == f"{tmp_path / 's.yaml'}: tasks[0].prompt: expected one of 'chat', 'lm-eval', got 'lmeval'"
