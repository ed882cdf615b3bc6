"""Every setting an evaluate stage carries is checked at ``factory validate``,
before any stage runs: the stage's engine settings (names and values), the
suite's own engine settings, and each task's options, inline or in a suite file."""

import pytest

from evals.engines import check_engine_settings
from evals.suite import check_suite, parse_suite
from factory.cli import main
from foundation.errors import ConfigError

HF_SETTINGS = "dtype, device, max_batch, prefill_tokens, attention, threads, trust_remote_code"


def _validate(capsys, *args) -> tuple[int, list[str]]:
    code = main(["validate", *map(str, args)])
    return code, capsys.readouterr().err.strip().splitlines()


def test_an_unknown_engine_setting_fails_validation(capsys):
    code, err = _validate(capsys, "recipes/smoke.yaml", "stages.evaluate.engine_settings.bogus_key=1")
    assert code == 2
    assert err == [
        "error: recipes/smoke.yaml: stages.evaluate.engine_settings.bogus_key: unknown setting of "
        f"engine hf (known: {HF_SETTINGS})"
    ]


@pytest.mark.parametrize(
    "override,expected",
    [
        (
            "stages.evaluate.engine_settings.max_batch=0",
            "stages.evaluate.engine_settings: engine hf: setting 'max_batch' must be a positive integer (got 0)",
        ),
        (
            "stages.evaluate.engine_settings.dtype=fp8",
            "stages.evaluate.engine_settings: engine hf: setting 'dtype' must be one of float32, bfloat16, float16",
        ),
        (
            "stages.evaluate.suite.engine_settings.hf.batch=4",
            "stages.evaluate.suite.engine_settings.hf.batch: unknown setting of engine hf",
        ),
        (
            "stages.evaluate.suite.engine_settings.vllm.max_num_seqs=0",
            "stages.evaluate.suite.engine_settings.vllm: engine vllm: setting 'max_num_seqs' must be a positive integer",
        ),
        ("stages.evaluate.engine=vllm", None),  # the smoke suite's settings hold for vllm too
    ],
)
def test_nested_engine_settings_fail_validation(capsys, override, expected):
    code, err = _validate(capsys, "recipes/smoke.yaml", override)
    if expected is None:
        assert code == 0 and err == []
    else:
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: recipes/smoke.yaml: {expected}"), err


RECIPE = """
name: ev
models:
  base: {tiny: {num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 1,
                intermediate_size: 64}}
stages:
  evaluate: {kind: evaluate, models: base, suite: %s}
"""


@pytest.mark.parametrize(
    "suite,expected",
    [
        (
            "{name: s, tasks: [{task: gsm8k, shots: 3}]}",
            "r.yaml: stages.evaluate.suite.tasks[0]: task gsm8k: shots must be 0 or 8, got 3",
        ),
        (
            "{name: s, tasks: [{task: bfcl, category: nope}]}",
            "r.yaml: stages.evaluate.suite.tasks[0]: task bfcl: unknown category 'nope'",
        ),
        (
            "{name: s, tasks: [{task: harness, tasks: [arc_easy], num_fewshot: -1}]}",
            "r.yaml: stages.evaluate.suite.tasks[0]: ",
        ),
        ("suite.yaml", "suite.yaml: engine_settings.hf.bogus: unknown setting of engine hf"),
        ("nowhere.yaml", "r.yaml: stages.evaluate.suite: "),
    ],
)
def test_task_options_and_suite_files_fail_validation(tmp_path, capsys, suite, expected):
    (tmp_path / "suite.yaml").write_text("name: s\nengine_settings: {hf: {bogus: 1}}\ntasks: [{task: gsm8k}]\n")
    (tmp_path / "r.yaml").write_text(RECIPE % suite)
    code, err = _validate(capsys, tmp_path / "r.yaml")
    assert code == 2 and len(err) == 1 and expected in err[0], err


def test_a_suite_file_engine_settings_over_it_are_checked(tmp_path, capsys):
    (tmp_path / "suite.yaml").write_text("name: s\nengine: vllm\ntasks: [{task: gsm8k}]\n")
    (tmp_path / "r.yaml").write_text(RECIPE % "suite.yaml")
    assert _validate(capsys, tmp_path / "r.yaml") == (0, [])
    code, err = _validate(capsys, tmp_path / "r.yaml", "stages.evaluate.engine_settings.max_batch=8")
    assert code == 2 and err == [
        f"error: {tmp_path / 'r.yaml'}: stages.evaluate.engine_settings.max_batch: "
        "unknown setting of engine vllm (known: dtype, tensor_parallel_size, "
        "data_parallel_size, max_num_seqs, max_model_len, gpu_memory_utilization, "
        "kv_cache_memory_bytes, enforce_eager, seed, trust_remote_code, engine_args)"
    ]
    code, err = _validate(
        capsys, tmp_path / "r.yaml", "stages.evaluate.engine=hf", "stages.evaluate.engine_settings.max_batch=8"
    )
    assert (code, err) == (0, [])


def test_check_engine_settings_names_the_setting():
    check_engine_settings("openai", {"concurrency": 4, "base_url": "http://h/v1"})
    with pytest.raises(ConfigError) as e:
        check_engine_settings("openai", {"concurency": 4})
    assert e.value.where == "concurency" and "unknown setting of engine openai" in e.value.message
    with pytest.raises(ConfigError) as e:
        check_engine_settings("openai", {"retries": -1})
    assert (
        e.value.where == "" and e.value.message == "engine openai: setting 'retries' must be an integer >= 0 (got -1)"
    )


def test_check_suite_is_separate_from_parsing():
    suite = parse_suite(
        {"name": "s", "engine_settings": {"hf": {"batch_size": 4}}, "tasks": [{"task": "gsm8k"}]}, "s.yaml"
    )
    assert suite.settings_for("hf") == {"batch_size": 4}  # parsed as written
    with pytest.raises(ConfigError) as e:
        check_suite(suite)
    assert str(e.value).startswith("s.yaml: engine_settings.hf.batch_size: unknown setting of engine hf")
    check_suite(parse_suite({"name": "s", "tasks": [{"task": "gsm8k", "shots": 8}]}, "s.yaml"))
