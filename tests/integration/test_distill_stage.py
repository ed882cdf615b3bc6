"""The distill stage end to end on tiny models."""

import json

import pytest
import torch
from safetensors.torch import load_file

from factory.cli import main
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.artifacts import read_manifest
from tests.conftest import RECIPES, ROOT

SMOKE = RECIPES / "smoke.yaml"


def test_distillation_lowers_heldout_kl(runs):
    Pipeline(load_recipe(SMOKE), runs, progress=False).run(until="distill")
    m = read_manifest(runs / "smoke" / "distill")
    met = m["metrics"]
    assert met["heldout_kl_after"] < 0.5 * met["heldout_kl_before"]
    assert set(m["inputs"]) == {"prune", "correct", "corpus"}
    assert met["peak_memory_gib"] > 0
    rows = [json.loads(x) for x in (runs / "smoke" / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert all("kd_loss" in r for r in rows if "loss" in r)
    golden = json.loads((ROOT / "tests" / "golden" / "smoke_distill.json").read_text())
    for key, value in golden.items():
        assert met[key] == pytest.approx(value, rel=1e-3), key


def test_self_distillation_has_zero_loss(runs):
    recipe = load_recipe(SMOKE, ["stages.distill.student=correct", "stages.distill.max_tokens=512"])
    Pipeline(recipe, runs, progress=False).run(until="distill")
    met = read_manifest(runs / "smoke" / "distill")["metrics"]
    assert met["heldout_kl_before"] == pytest.approx(0.0, abs=1e-6)
    rows = [json.loads(x) for x in (runs / "smoke" / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["kd_loss"] == pytest.approx(0.0, abs=1e-6)


def test_intermediate_states_with_projection_and_lm_loss(runs):
    recipe = load_recipe(
        SMOKE,
        [
            "stages.distill.intermediate_layer_pairs=[[0,0],[1,1]]",
            "stages.distill.skip_lm_loss=false",
            "stages.distill.max_tokens=1024",
        ],
    )
    Pipeline(recipe, runs, progress=False).run(until="distill")
    rows = [json.loads(x) for x in (runs / "smoke" / "distill" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert all({"kd_loss", "lm_loss", "intermediate_loss"} <= set(r) for r in train)
    assert train[-1]["intermediate_loss"] < train[0]["intermediate_loss"]
    # the projection (width 48 -> 64) is auxiliary: the released student is a plain checkpoint
    weights = load_file(runs / "smoke" / "distill" / "model.safetensors")
    assert not any(k.startswith("proj") or k.startswith("student.") for k in weights)


@pytest.mark.usefixtures("cpu_only")
def test_crash_after_checkpoint_resumes_to_the_same_weights(runs, tmp_path, monkeypatch):
    overrides = ["stages.distill.intermediate_layer_pairs=[[1,1]]"]
    Pipeline(load_recipe(SMOKE, overrides), tmp_path / "ref", progress=False).run(until="distill")
    import factory.training.loop as loop

    real = loop._save_checkpoint
    calls = []

    def crash_after_second_save(path, model, optimizer, step, extra):
        real(path, model, optimizer, step, extra)
        if "distill" in str(path):
            calls.append(step)
            if len(calls) == 2:
                raise KeyboardInterrupt  # as if killed right after step 8's checkpoint

    monkeypatch.setattr(loop, "_save_checkpoint", crash_after_second_save)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(load_recipe(SMOKE, overrides), runs, progress=False).run(until="distill")
    monkeypatch.setattr(loop, "_save_checkpoint", real)
    Pipeline(load_recipe(SMOKE, overrides), runs, progress=False).run(until="distill")
    assert read_manifest(runs / "smoke" / "distill")["resumed_from_step"] == 8
    a = load_file(tmp_path / "ref" / "smoke" / "distill" / "model.safetensors")
    b = load_file(runs / "smoke" / "distill" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _mismatched_teacher(tmp_path, vocab_size=None, swap=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.sources.models import ModelSpec, materialize
    from factory.sources.tiny import TinyLlamaSpec

    src = materialize(ModelSpec(tiny=TinyLlamaSpec()), tmp_path)
    model = AutoModelForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    out = tmp_path / "other"
    if vocab_size:
        model.resize_token_embeddings(vocab_size)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if swap:
        data = json.loads((out / "tokenizer.json").read_text())
        vocab = data["model"]["vocab"]
        a, b = "a", "b"
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (out / "tokenizer.json").write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("kind", ["vocab_size", "token_ids"])
def test_tokenizer_mismatch_is_one_line(kind, tmp_path, runs, capsys):
    other = _mismatched_teacher(tmp_path, vocab_size=300 if kind == "vocab_size" else None, swap=kind == "token_ids")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        SMOKE.read_text().replace("path: data/", f"path: {RECIPES / 'data'}/")
        + "\n  other_distill:\n    kind: distill\n    student: prune\n    teacher: alien\n    data: corpus\n"
        "    seq_len: 64\n    max_tokens: 256\n    eval_tokens: 128\n"
    )
    text = recipe.read_text().replace("models:\n", f"models:\n  alien: {{path: {other}}}\n", 1)
    recipe.write_text(text)
    rc = main(["run", str(recipe), "--until", "other_distill", "--runs-dir", str(runs), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: stages.other_distill: the student's")
    assert ("vocabulary (259" in err[-1]) if kind == "vocab_size" else ("maps tokens to ids differently" in err[-1])
    assert (runs / "smoke" / "prune" / "manifest.json").exists()  # finished artifacts stay intact


def test_teacher_must_be_a_model(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        SMOKE.read_text()
        .replace("teacher: correct", "teacher: corpus")
        .replace("path: data/", f"path: {RECIPES / 'data'}/")
    )
    assert main(["validate", str(recipe)]) == 2
    assert "stages.distill.teacher: 'corpus' is neither a models: entry nor a stage" in capsys.readouterr().err
