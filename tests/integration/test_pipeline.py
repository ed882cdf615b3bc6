"""Stages end to end on tiny models: artifacts, caching, invalidation, corruption."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from factory.cli import main
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.artifacts import read_manifest
from tests.conftest import RECIPES, ROOT

SMOKE = RECIPES / "smoke.yaml"

CHAIN = """
name: chain
seed: 0
models:
  teacher: {tiny: {num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 64}}
datasets:
  corpus: {path: %s, doc_chars: 300}
stages:
  first: {kind: correct, model: teacher, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 256, eval_tokens: 128, lr: 1.0e-3}
  second: {kind: correct, model: first, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 256, eval_tokens: 128, lr: 1.0e-3}
  side: {kind: correct, model: teacher, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 128, eval_tokens: 128, lr: 1.0e-3}
"""


@pytest.fixture
def chain(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN % (RECIPES / "data" / "smoke.txt"))
    return path


def _events(runs, name):
    lines = (runs / name / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _ran(runs, name, since=0):
    return [e["stage"] for e in _events(runs, name)[since:] if e["event"] == "start"]


def test_smoke_run_writes_hf_artifacts_and_rerun_is_cached(runs, capsys):
    assert main(["run", str(SMOKE), "--until", "distill", "--runs-dir", str(runs), "--no-progress"]) == 0
    art = runs / "smoke" / "correct"
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
        "metrics.jsonl",
        "manifest.json",
    ):
        assert (art / name).is_file(), name
    m = read_manifest(art)
    for key in ("kind", "config", "config_hash", "inputs", "files", "versions", "tokens", "wall_s", "metrics"):
        assert key in m, key
    assert set(m["versions"]) >= {"python", "torch", "transformers", "factory"}
    assert m["tokens"] == 4096 and m["config"]["max_tokens"] == 4096
    assert set(m["inputs"]) == {"teacher", "corpus"}
    assert m["metrics"]["eval_loss_after"] < m["metrics"]["eval_loss_before"] - 1.0
    rows = [json.loads(x) for x in (art / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 17))
    assert not (runs / "smoke" / ".work").exists() or not any((runs / "smoke" / ".work").iterdir())

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(art)
    tok = AutoTokenizer.from_pretrained(art)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    n_before = len(_events(runs, "smoke"))
    assert main(["run", str(SMOKE), "--until", "distill", "--runs-dir", str(runs), "--no-progress"]) == 0
    assert _ran(runs, "smoke", n_before) == []
    capsys.readouterr()
    assert main(["plan", str(SMOKE), "--runs-dir", str(runs)]) == 0
    assert "cached" in capsys.readouterr().out
    assert main(["ls", "--runs-dir", str(runs)]) == 0
    assert "smoke/correct" in capsys.readouterr().out
    assert main(["show", str(art)]) == 0
    assert "all match their sha256" in capsys.readouterr().out


def test_golden_smoke_losses(runs):
    """The smoke line's numbers must not drift silently (recorded in tests/golden)."""
    golden = json.loads((ROOT / "tests" / "golden" / "smoke_correct.json").read_text())
    Pipeline(load_recipe(SMOKE), runs, progress=False).run(until="correct")
    m = read_manifest(runs / "smoke" / "correct")["metrics"]
    for key, value in golden.items():
        assert m[key] == pytest.approx(value, rel=1e-3), key


def test_change_invalidates_only_dependents(chain, runs, capsys):
    assert main(["run", str(chain), "--runs-dir", str(runs), "--no-progress"]) == 0
    assert _ran(runs, "chain") == ["first", "second", "side"]
    n = len(_events(runs, "chain"))
    # a downstream key: only that stage reruns
    assert main(["run", str(chain), "stages.second.lr=2e-3", "--runs-dir", str(runs), "--no-progress"]) == 0
    assert _ran(runs, "chain", n) == ["second"]
    n = len(_events(runs, "chain"))
    # an upstream key: it and its dependents rerun, the independent branch does not
    capsys.readouterr()
    assert main(["plan", str(chain), "stages.first.lr=2e-3", "stages.second.lr=2e-3", "--runs-dir", str(runs)]) == 0
    plan = capsys.readouterr().out
    assert "first" in plan and "config changed" in plan and "upstream stage 'first' will run" in plan
    assert (
        main(
            [
                "run",
                str(chain),
                "stages.first.lr=2e-3",
                "stages.second.lr=2e-3",
                "--runs-dir",
                str(runs),
                "--no-progress",
            ]
        )
        == 0
    )
    assert _ran(runs, "chain", n) == ["first", "second"]
    n = len(_events(runs, "chain"))
    # a knob that cannot change results (checkpoint cadence) reruns nothing
    # (overrides may also follow the options)
    assert (
        main(
            [
                "run",
                str(chain),
                "--runs-dir",
                str(runs),
                "--no-progress",
                "stages.first.lr=2e-3",
                "stages.second.lr=2e-3",
                "stages.first.checkpoint_every=3",
            ]
        )
        == 0
    )
    assert _ran(runs, "chain", n) == []


def test_forced_rerun_is_deterministic_so_dependents_stay_cached(chain, runs):
    Pipeline(load_recipe(chain), runs, progress=False).run()
    before = read_manifest(runs / "chain" / "first")["hash"]
    n = len(_events(runs, "chain"))
    Pipeline(load_recipe(chain), runs, progress=False).run(force=("first",))
    assert read_manifest(runs / "chain" / "first")["hash"] == before
    assert _ran(runs, "chain", n) == ["first"]


def test_only_runs_one_stage_and_needs_fresh_inputs(chain, runs, capsys):
    assert main(["run", str(chain), "--only", "second", "--runs-dir", str(runs)]) == 2
    assert "upstream stage 'first' is not up to date" in capsys.readouterr().err
    assert main(["run", str(chain), "--only", "first", "--runs-dir", str(runs), "--no-progress"]) == 0
    assert _ran(runs, "chain") == ["first"]
    assert main(["run", str(chain), "--only", "nope", "--runs-dir", str(runs)]) == 2
    assert "no stage 'nope'" in capsys.readouterr().err


def test_corrupted_artifact_is_reported_not_reused(runs, capsys):
    Pipeline(load_recipe(SMOKE), runs, progress=False).run(until="distill")
    weights = runs / "smoke" / "correct" / "model.safetensors"
    good = {k: v.clone() for k, v in load_file(weights).items()}  # load_file maps the file
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["plan", str(SMOKE), "--runs-dir", str(runs)]) == 0
    assert "CORRUPTED" in capsys.readouterr().out
    assert main(["run", str(SMOKE), "--until", "distill", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors does not match its sha256" in err and "--force correct" in err
    assert main(["show", str(runs / "smoke" / "correct")]) == 1
    assert (
        main(["run", str(SMOKE), "--until", "distill", "--runs-dir", str(runs), "--force", "correct", "--no-progress"])
        == 0
    )
    fixed = load_file(weights)
    assert all(torch.equal(good[k], fixed[k]) for k in good)


def test_source_change_reruns(tmp_path, runs):
    corpus = tmp_path / "c.txt"
    shutil.copy(RECIPES / "data" / "smoke.txt", corpus)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        SMOKE.read_text().replace("data/smoke.txt", str(corpus)).replace("path: data/", f"path: {RECIPES / 'data'}/")
    )
    p = Pipeline(load_recipe(recipe), runs, progress=False)
    p.run(until="distill")
    assert {d.action for d in Pipeline(load_recipe(recipe), runs).plan()[:3]} == {"cached"}
    corpus.write_text(corpus.read_text() + "\n\nOne more paragraph about planes and chisels.")
    first, second, *_ = Pipeline(load_recipe(recipe), runs).plan()
    assert first.action == "run" and first.reason == "input corpus changed"
    assert second.action == "run" and second.reason == "upstream stage 'correct' will run"


def test_lock_blocks_concurrent_runs(runs):
    import fcntl

    from foundation.errors import FactoryError

    p = Pipeline(load_recipe(SMOKE), runs, progress=False)
    p.run_dir.mkdir(parents=True)
    with open(p.run_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(FactoryError, match="in use by another factory run"):
            p.run()


def test_plan_says_a_damaged_checkpoint_means_starting_over(chain, runs):
    """`factory plan` must not promise a resume that the stage will refuse: a checkpoint
    whose sha256 record is missing or whose size differs is discarded when the stage starts."""
    from foundation import storage

    pipe = Pipeline(load_recipe(chain), runs)
    inputs = pipe.plan()[0].inputs
    work = pipe.work_dir("first", inputs)
    work.mkdir(parents=True)
    storage.write_bytes(work / "checkpoint.pt", b"x" * 100, "training checkpoint", checked=True)
    assert pipe.plan()[0].reason.endswith("(will resume from its last checkpoint)")

    with open(work / "checkpoint.pt", "r+b") as f:  # a kill or a full disk cut it short
        f.truncate(40)
    assert pipe.plan()[0].reason.endswith(
        "(its last checkpoint is unusable, it has 40 bytes, 100 were written: it will start over)"
    )
    storage.sidecar(work / "checkpoint.pt").unlink()
    assert "no sha256 was recorded for it" in pipe.plan()[0].reason


def test_a_replaced_artifact_left_aside_by_a_kill_is_swept_at_the_next_run(chain, runs):
    """A kill between replace_dir's two renames leaves `.trash-<stage>-*` (a full copy of the
    old weights); the next run, holding the lock, removes it and still finishes."""
    assert main(["run", str(chain), "--until", "first", "--runs-dir", str(runs), "--no-progress"]) == 0
    trash = runs / "chain" / ".trash-first-123-456"
    shutil.copytree(runs / "chain" / "first", trash)
    assert main(["run", str(chain), "--until", "first", "--runs-dir", str(runs), "--no-progress"]) == 0
    assert not trash.exists()
    assert read_manifest(runs / "chain" / "first") is not None
