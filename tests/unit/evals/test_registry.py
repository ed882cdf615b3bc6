"""Engines and tasks are registered the way stage kinds are: a decorator where the
class is defined, a lookup, one-line errors listing the known names, and one list
of engine names that the command line, the suite parser and the evaluate stage read."""

import typing

import pytest

from evals import engines, tasks
from foundation.errors import ConfigError, FactoryError
from foundation.registry import Registry


def test_unknown_names_are_one_line_errors_listing_the_known_ones():
    with pytest.raises(FactoryError) as e:
        engines.engine_class("tgi")
    assert str(e.value) == "unknown engine 'tgi' (known: hf, openai, vllm)"
    with pytest.raises(FactoryError) as e:
        tasks.task_class("gsm9k")
    assert str(e.value) == "unknown task 'gsm9k' (known: bfcl, gsm8k, harness, humaneval, ifeval, math500, mbpp)"
    with pytest.raises(FactoryError, match=r"^unknown engine 'tgi' \(known: hf, openai, vllm\)$"):
        engines.make_engine("tgi", "model")
    with pytest.raises(FactoryError, match=r"^suite.yaml: task gsm8k: unknown option 'shot' \(known: shots, prompt\)$"):
        tasks.get_task("gsm8k", where="suite.yaml", shot=8)


def test_every_builtin_name_finds_the_class_registered_under_it():
    found = engines.engine_classes()
    assert list(found) == list(engines.ENGINES) == ["hf", "vllm", "openai"]
    assert {name: cls.name for name, cls in found.items()} == {"hf": "hf", "vllm": "vllm", "openai": "openai"}
    assert all(engines.engine_class(name) is cls for name, cls in found.items())
    found = tasks.task_classes()
    assert sorted(found) == tasks.task_names() == sorted(tasks.BUILTIN)
    assert found["gsm8k"].__name__ == "GSM8K" and found["harness"].__name__ == "HarnessTask"


def test_a_registry_imports_a_module_only_for_its_names():
    reg = Registry("widget", "evals.tasks", {"gsm8k": "math"})
    assert reg.names() == ["gsm8k"] and reg.classes == {}
    with pytest.raises(FactoryError) as e:  # the module is imported, but registers elsewhere
        reg.get("gsm8k")
    assert str(e.value) == "unknown widget 'gsm8k' (known: gsm8k)"

    @reg.register("knob")
    class Knob:
        pass

    assert reg.get("knob") is Knob and reg.names() == ["gsm8k", "knob"]
    with pytest.raises(FactoryError, match=r"^unknown widget 'dial' \(known: gsm8k, knob\)$"):
        reg.get("dial")


def test_a_registered_task_is_found_by_suites(monkeypatch):
    from evals.suite import parse_entry

    class Echo:
        def __init__(self, loud: bool = False):
            self.loud = loud

    monkeypatch.setitem(tasks.TASKS, "echo", Echo)
    assert "echo" in tasks.task_names() and tasks.get_task("echo", loud=True).loud
    assert parse_entry({"task": "echo", "loud": True}, "tasks[0]").name == "echo_loud"
    with pytest.raises(ConfigError, match=r"^tasks\[0\].task: unknown task 'ech' \(known: bfcl, echo, gsm8k,"):
        parse_entry({"task": "ech"}, "tasks[0]")


def test_one_list_of_engine_names():
    import argparse

    from evals.cli import add_commands
    from evals.suite import parse_suite
    from factory.stages.evaluate import EvaluateConfig

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    eval_parser = parser._subparsers._group_actions[0].choices["eval"]
    engine_flag = next(a for a in eval_parser._actions if "--engine" in a.option_strings)
    assert tuple(engine_flag.choices) == engines.ENGINES
    hint = typing.get_type_hints(EvaluateConfig)["engine"]
    assert typing.get_args(typing.get_args(hint)[0]) == engines.ENGINES
    for name in engines.ENGINES:
        assert parse_suite({"name": "s", "engine": name, "tasks": [{"task": "gsm8k"}]}, "s.yaml").engine == name
    with pytest.raises(ConfigError, match=r"^s.yaml: engine: unknown engine 'tgi' \(known: hf, vllm, openai, auto\)$"):
        parse_suite({"name": "s", "engine": "tgi", "tasks": [{"task": "gsm8k"}]}, "s.yaml")
