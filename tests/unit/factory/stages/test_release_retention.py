"""A release's ``retention`` file puts the retention-against-size curve into the model
card: checked before use (exists, parses, every schema key present, the release's own
teacher), hashed into the stage's config so a changed curve renders the card again. The
card's evaluation table shows each task's chance level and generation cap."""

import copy
import json

import pytest

from evals import results as res
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from factory.retention import Teacher, check_teacher, load_retention, retention_section
from factory.stages.release import eval_rows
from foundation.errors import FactoryError
from tests.unit.factory.tiny_models import tiny_llama

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
TINY["intermediate_size"] = 128
HOST = {"cpu": "Test CPU", "cpus": 2, "torch_threads": 2, "fp32_matmul_gflops": 10.0}


def _curve(teacher: str, params: int) -> dict:
    """A hand-written retention file: the teacher and one student at half its size."""
    return {
        "teacher": {"name": teacher, "params": params, "sha256": None},
        "host": HOST,
        "budget": {"distill_tokens": 57344},
        "suite": {"arc_easy": {"n": 40}},
        "points": [
            {
                "label": "teacher",
                "params": params,
                "fraction": 1.0,
                "scores": {"arc_easy/acc": {"value": 0.5, "lo": 0.35, "hi": 0.65, "n": 40}},
            },
            {
                "label": "p50",
                "params": params // 2,
                "fraction": 0.5,
                "scores": {"arc_easy/acc": {"value": 0.425, "lo": 0.275, "hi": 0.575, "n": 40}},
                "delta": {"arc_easy/acc": {"value": -0.075, "lo": -0.2, "hi": 0.05, "p": 0.123}},
            },
        ],
    }


def _write(path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def test_the_section_shows_every_point_score_interval_n_and_change(tmp_path):
    lines = retention_section(_curve("smollm2-135m-instruct", 134515008), "bench/retention.json", "ab" * 32)
    text = "\n".join(lines)
    assert lines[0] == "## Retention against size"
    assert "| teacher | 134,515,008 | 100.0% | arc_easy/acc | 0.500 [0.350, 0.650] | 40 | - | - |" in lines
    assert (
        "| p50 | 67,257,504 | 50.0% | arc_easy/acc | 0.425 [0.275, 0.575] | 40 | -0.075 [-0.200, +0.050] | 0.123 |"
        in lines
    )
    assert "Suite: arc_easy: n=40. Budget: distill_tokens=57344." in lines
    assert (
        "Measured on Test CPU, 2 torch threads of 2 CPUs; fp32 matmul probe 10.0 GFLOP/s; "
        f"from `bench/retention.json` (sha256 {'ab' * 8})."
    ) in text


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d.pop("points"), "missing key points"),
        (lambda d: d["teacher"].pop("name"), "missing key teacher.name"),
        (lambda d: d["points"][1].pop("scores"), "missing key points[1].scores"),
        (lambda d: d["points"][1]["scores"]["arc_easy/acc"].pop("n"), "missing key points[1].scores.arc_easy/acc.n"),
        (lambda d: d["points"][1]["delta"]["arc_easy/acc"].pop("hi"), "missing key points[1].delta.arc_easy/acc.hi"),
        (lambda d: d["points"][0].update(params="134M"), "points[0].params is str, expected an integer"),
        (lambda d: d.update(points=[]), "points is empty"),
    ],
)
def test_a_missing_key_is_named(tmp_path, edit, problem):
    data = copy.deepcopy(_curve("t", 10))
    edit(data)
    _write(tmp_path / "r.json", data)
    with pytest.raises(FactoryError) as e:
        load_retention(tmp_path / "r.json", "stages.release.retention")
    assert str(e.value) == f"stages.release.retention: {tmp_path / 'r.json'}: {problem}"


def test_a_missing_or_unparsable_file_is_one_line(tmp_path):
    with pytest.raises(FactoryError, match=r"^stages.rel.retention: no such file: .*nothere.json$"):
        load_retention(tmp_path / "nothere.json", "stages.rel.retention")
    (tmp_path / "bad.json").write_text('{"teacher": {\n  "name": }\n')
    with pytest.raises(FactoryError) as e:
        load_retention(tmp_path / "bad.json", "stages.rel.retention")
    assert str(e.value).startswith(f"stages.rel.retention: {tmp_path / 'bad.json'}:2: not valid JSON")


def test_the_teacher_must_be_the_releases_own(tmp_path):
    path = tmp_path / "r.json"
    packaged = Teacher("packaged smollm2-135m-instruct", frozenset({"smollm2-135m-instruct"}), 134515008)
    check_teacher(_curve("SmolLM2-135M-Instruct", 1), packaged, path, "stages.release.retention")  # by name
    with pytest.raises(FactoryError) as e:
        check_teacher(_curve("qwen2.5-0.5b-instruct", 134515008), packaged, path, "stages.release.retention")
    assert str(e.value) == (
        f"stages.release.retention: {path} measures teacher 'qwen2.5-0.5b-instruct' (134,515,008 params), "
        "but this release's teacher is packaged smollm2-135m-instruct (134,515,008 params)"
    )
    tiny = Teacher("tiny random Llama 2x64", frozenset(), 1000)  # no name: by parameter count
    check_teacher(_curve("whatever", 1000), tiny, path, "w")
    with pytest.raises(FactoryError, match=r"measures teacher 'whatever' \(999 params\), but this release's teacher"):
        check_teacher(_curve("whatever", 999), tiny, path, "w")
    with pytest.raises(FactoryError, match="cannot tell whether it measures this release's teacher"):
        check_teacher(_curve("whatever", 1000), Teacher("unknown", frozenset(), None), path, "w")


RECIPE = f"""
name: rel
seed: 0
models:
  teacher: {{tiny: {json.dumps(TINY)}}}
datasets:
  pairs: {{path: pairs.jsonl, format: preference, licence: CC0-1.0 (generated by the test)}}
stages:
  dpo: {{kind: dpo, model: teacher, data: pairs, seq_len: 48, batch_size: 4, epochs: 1, lr: 1.0e-3,
        eval_pairs: 8, checkpoint_every: 0}}
  release: {{kind: release, model: dpo, retention: curves/retention.json}}
"""


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A tiny dpo -> release run whose release names a hand-written retention curve of its teacher."""
    d = tmp_path_factory.mktemp("rel")
    rows = [{"prompt": f"say {i}", "chosen": f"{i}", "rejected": f"no {i}"} for i in range(16)]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "r.yaml").write_text(RECIPE)
    (d / "curves").mkdir()
    params = tiny_llama(**TINY).num_parameters()
    _write(d / "curves" / "retention.json", _curve("tiny-teacher", params))
    Pipeline(load_recipe(d / "r.yaml"), d / "runs", progress=False).run()
    return d, params


def test_the_card_shows_the_curve_of_the_releases_teacher(line):
    d, params = line
    card = (d / "runs" / "rel" / "release" / "README.md").read_text()
    assert "## Retention against size" in card
    assert f"| teacher | {params:,} | 100.0% | arc_easy/acc | 0.500 [0.350, 0.650] | 40 | - | - |" in card
    assert f"| p50 | {params // 2:,} | 50.0% | arc_easy/acc | 0.425 [0.275, 0.575] | 40 |" in card
    assert "from `curves/retention.json` (sha256 " in card


def test_a_changed_curve_changes_the_release_key_only(line):
    d, params = line
    before = load_recipe(d / "r.yaml")
    data = _curve("tiny-teacher", params)
    data["points"][1]["scores"]["arc_easy/acc"]["value"] = 0.45
    _write(d / "curves" / "retention.json", data)
    after = load_recipe(d / "r.yaml")
    assert after.config_hash("release") != before.config_hash("release")
    assert after.config_hash("dpo") == before.config_hash("dpo")
    plan = {x.stage: (x.action, x.reason) for x in Pipeline(after, d / "runs").plan()}
    assert plan["dpo"][0] == "cached" and plan["release"] == ("run", "config changed")
    Pipeline(after, d / "runs", progress=False).run()
    card = (d / "runs" / "rel" / "release" / "README.md").read_text()
    assert "| p50 | " in card and "0.450 [0.275, 0.575]" in card


def test_a_curve_of_another_teacher_is_refused(line):
    d, params = line
    _write(d / "curves" / "retention.json", _curve("tiny-teacher", params + 1))
    with pytest.raises(FactoryError) as e:
        Pipeline(load_recipe(d / "r.yaml"), d / "runs", progress=False).run()
    assert str(e.value) == (
        f"stages.release.retention: {d / 'curves' / 'retention.json'} measures teacher 'tiny-teacher' "
        f"({params + 1:,} params), but this release's teacher is tiny random Llama 2x64 ({params:,} params)"
    )


def test_a_broken_curve_fails_validation_naming_the_key(line):
    d, _ = line
    data = _curve("tiny-teacher", 1)
    del data["points"][0]["fraction"]
    _write(d / "curves" / "retention.json", data)
    with pytest.raises(FactoryError) as e:
        load_recipe(d / "r.yaml")
    assert str(e.value) == (
        f"stages.release.retention: {d / 'curves' / 'retention.json'}: missing key points[0].fraction"
    )


def _results(label: str, samples: list[dict], sampling: dict) -> dict:
    """A results file of ``label`` whose metrics are what its samples give."""
    tasks = {}
    for task in dict.fromkeys(s["task"] for s in samples):
        mine = res.task_samples({"samples": samples}, task)
        names = tuple(dict.fromkeys(m for s in mine for m in s["metrics"]))
        tasks[task] = {"n": len(mine), "sampling": sampling.get(task), "limit": None}
        tasks[task]["metrics"] = res.summarize(mine, names)
    return {"format": 1, "model": {"label": label}, "tasks": tasks, "samples": samples}


def test_the_evaluation_table_shows_chance_and_caps(tmp_path):
    def choice(i, ok, k):
        ll = [-1.0] * k
        return {"task": "arc_easy", "id": str(i), "metrics": {"acc": float(ok)}, "details": {"loglikelihoods": ll}}

    def gen(i, ok):
        return {"task": "ifeval", "id": str(i), "metrics": {"prompt_level_strict_acc": float(ok)}}

    caps = {"ifeval": {"max_tokens": 256}}
    cand = [choice(0, 1, 4), choice(1, 0, 4), choice(2, 1, 4), choice(3, 0, 5), gen(0, 1), gen(1, 0)]
    base = [choice(0, 1, 4), choice(1, 1, 4), choice(2, 1, 4), choice(3, 0, 5), gen(0, 1), gen(1, 1)]
    res.write(_results("aligned", cand, caps), tmp_path / "results-aligned.json")
    res.write(_results("teacher", base, caps), tmp_path / "results-teacher.json")
    rows = eval_rows(tmp_path, "aligned", "teacher")
    chance = (0.25 * 3 + 0.2) / 4  # the mean of 1/choices over the items
    assert rows[0].startswith(f"| arc_easy | acc | 4 | {chance:.3f} | - | 0.500 [")
    assert rows[1].startswith("| ifeval | prompt_level_strict_acc | 2 | - | 256 | 0.500 [")
