"""The nemo engine: job specs (golden), validation of what it cannot do, the
dry run through the CLI, and the job-side pieces that run without NeMo.

Regenerate the goldens after an intended change with
    FACTORY_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/factory/engines/nemo/test_jobs.py -q
and read the diff of tests/golden/nemo/ before committing it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from factory.cli import main
from factory.recipe import load_recipe
from foundation.errors import ConfigError, FactoryError
from tests.conftest import RECIPES, ROOT, write

GOLDEN = ROOT / "tests" / "golden" / "nemo"
UPDATE = os.environ.get("FACTORY_UPDATE_GOLDEN") == "1"
# recipe -> overrides that put it on the nemo engine (the default recipe's budget search stays native)
GOLDEN_RECIPES = {
    "paper/llama31-minitron-4b-width.yaml": [],
    "paper/llama31-minitron-4b-depth.yaml": [],
    "paper/mn-minitron-8b.yaml": [],
    "smollm2-minitron.yaml": ["engine=nemo", "engines.prune=native", "nemo.gpus_per_node=4"],
}


def dry_run(recipe: Path, overrides: list[str], runs: Path, *flags: str) -> Path:
    rc = main(["run", str(recipe), *overrides, "--dry-run", "--runs-dir", str(runs), "--no-progress", *flags])
    assert rc == 0
    return runs / load_recipe(recipe, overrides).name


def golden_files(run_dir: Path) -> dict[str, str]:
    """What is pinned: each job's spec and run.sh (no absolute paths) and the engine of every stage."""
    plan = json.loads((run_dir / ".nemo" / "plan.json").read_text())
    out = {
        "plan.json": json.dumps({p["stage"]: p.get("backend", p["engine"]) for p in plan["stages"]}, indent=2) + "\n"
    }
    for p in plan["stages"]:
        if p["engine"] == "nemo":
            job = Path(p["job_dir"])
            out[f"{p['stage']}.config.yaml"] = (job / "config.yaml").read_text()
            out[f"{p['stage']}.run.sh"] = (job / "run.sh").read_text()
    return out


@pytest.mark.parametrize("name", sorted(GOLDEN_RECIPES))
def test_golden_job_specs(name, tmp_path):
    recipe = RECIPES / name
    files = golden_files(dry_run(recipe, GOLDEN_RECIPES[name], tmp_path))
    folder = GOLDEN / Path(name).stem
    if UPDATE:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for fname, text in files.items():
            (folder / fname).write_text(text)
    want = {p.name: p.read_text() for p in sorted(folder.iterdir())} if folder.is_dir() else {}
    assert sorted(files) == sorted(want), f"jobs differ from {folder}; FACTORY_UPDATE_GOLDEN=1 regenerates"
    for fname in files:
        assert files[fname] == want[fname], f"{folder / fname} differs; FACTORY_UPDATE_GOLDEN=1 regenerates"


def spec_of(run_dir: Path, stage: str) -> dict:
    return yaml.safe_load((run_dir / ".nemo" / stage / "config.yaml").read_text())


def test_paper_numbers_reach_the_jobs(tmp_path):
    width = dry_run(RECIPES / "paper/llama31-minitron-4b-width.yaml", [], tmp_path)
    depth = dry_run(RECIPES / "paper/llama31-minitron-4b-depth.yaml", [], tmp_path)
    mn = dry_run(RECIPES / "paper/mn-minitron-8b.yaml", [], tmp_path)
    assert spec_of(width, "prune")["nemo2"]["pruning_config"] == {
        "target_ffn_hidden_size": 9216,
        "target_hidden_size": 3072,
    }
    assert spec_of(mn, "prune")["nemo2"]["pruning_config"] == {
        "target_ffn_hidden_size": 11520,
        "target_hidden_size": 4096,
    }
    # layers 16..31 counted from 1: the first 15 and the last survive
    assert spec_of(depth, "prune")["nemo2"]["pruning_config"] == {"drop_layers": list(range(16, 32))}
    d4, d8 = spec_of(width, "distill")["nemo2"], spec_of(mn, "distill")["nemo2"]
    assert (d4["trainer"]["max_steps"], d4["scheduler"]["warmup_steps"], d4["data"]["global_batch_size"]) == (
        9961,
        40,
        1152,
    )
    assert (d8["trainer"]["max_steps"], d8["scheduler"]["warmup_steps"], d8["data"]["global_batch_size"]) == (
        60400,
        60,
        768,
    )
    assert d4["optimizer"]["lr"] == 1e-4 and d4["scheduler"]["min_lr"] == pytest.approx(1e-5)
    assert d8["scheduler"]["min_lr"] == pytest.approx(4.5e-7)
    assert d4["distillation"] == {
        "logit_layers": ["output_layer", "output_layer"],
        "intermediate_layer_pairs": [],
        "skip_lm_loss": True,
        "kd_loss_scale": 1.0,
    }
    assert spec_of(width, "correct")["tokens"] == 13458 * 1152 * 8192  # ~127B
    plan = json.loads((width / ".nemo" / "plan.json").read_text())
    assert {p["stage"]: p["engine"] for p in plan["stages"]} == {
        "correct": "nemo",
        "prune": "nemo",
        "distill": "nemo",
        "sft": "native",
        "dpo": "native",
        "evaluate": "native",
    }


def test_dpo_maps_to_aligner_keys(tmp_path):
    run = dry_run(
        RECIPES / "paper/llama31-minitron-4b-depth.yaml",
        ["stages.dpo.preference_loss=rpo", "stages.dpo.sft_loss_weight=0.5", "stages.dpo.ref_policy_kl_penalty=0.05"],
        tmp_path,
    )
    train = spec_of(run, "dpo")["steps"]["train"]
    assert train[1] == "$ALIGNER_DIR/examples/nlp/gpt/train_gpt_dpo.py"
    assert {
        "model.dpo.ref_policy_kl_penalty=0.05",
        "model.dpo.preference_loss=dpo",
        "model.dpo.sft_loss_weight=0.5",
        "model.global_batch_size=64",
    } <= set(train)


# -- what the nemo engine cannot do: one line, naming the YAML path --------------------------------

PAPER_MN = RECIPES / "paper/mn-minitron-8b.yaml"
PAPER_WIDTH = RECIPES / "paper/llama31-minitron-4b-width.yaml"


def nemo_error(recipe: Path, overrides: list[str], native: list[str] = ("engine=native",)) -> str:
    load_recipe(recipe, overrides + list(native))  # the native engine accepts it
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe, overrides)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(recipe))
    return message


@pytest.mark.parametrize(
    "overrides, where, why",
    [
        (["stages.prune.target_hidden_size=3040"], "stages.prune.target_hidden_size", "not a multiple of 64"),
        (
            [
                "stages.prune.target_hidden_size=null",
                "stages.prune.target_ffn_hidden_size=null",
                "stages.prune.target_params=6B",
            ],
            "stages.prune.target_params",
            "explicit targets",
        ),
        (
            [
                "stages.prune.target_hidden_size=null",
                "stages.prune.target_ffn_hidden_size=null",
                "stages.prune.target_num_layers=32",
            ],
            "stages.prune.depth_criterion",
            "contiguous blocks",
        ),
        (["stages.distill.temperature=2.0"], "stages.distill.temperature", "no temperature"),
        (["stages.distill.kd_loss=reverse_kl"], "stages.distill.kd_loss", "forward KL"),
        (["stages.dpo.label_smoothing=0.1"], "stages.dpo.label_smoothing", "no label smoothing"),
        (["stages.distill.eval_at_tokens=[1000,2000]"], "stages.distill.eval_at_tokens", "eval_every"),
        (
            ["stages.distill.batch_size=17", "stages.distill.grad_accum=47"],
            "stages.distill.batch_size",
            "global batch 799",
        ),
        (["nemo.launcher=docker"], "nemo.launcher", "one node"),
        (["nemo.stages.prune.pipeline_parallel=1"], "nemo.stages.prune", "pipeline_parallel to the GPU count"),
    ],
)
def test_nemo_refuses_with_one_line(overrides, where, why):
    message = nemo_error(PAPER_MN, overrides)
    assert f": {where}: " in message and why in message, message


def test_head_dim_mismatch_keeps_alignment_native():
    message = nemo_error(PAPER_WIDTH, ["engines.sft=nemo"], native=["engines.sft=native"])
    assert "stages.sft.model" in message and "(3072 / 32)" in message and "head_dim 128" in message


def test_stage_kind_without_a_job(tmp_path):
    from dataclasses import dataclass

    from factory.stages import base
    from foundation.configs import field

    @dataclass
    class QuantizeConfig:
        kind: str = field("quantize", help="stage kind")
        model: str = field(None, ref="model", help="model")

    base.register("quantize", QuantizeConfig, "test-only kind")(lambda ctx: None)
    try:
        recipe = write(
            tmp_path / "r.yaml",
            "name: q\nengine: nemo\nmodels: {m: {hub: meta-llama/Llama-3.1-8B}}\n"
            "stages: {q: {kind: quantize, model: m}}\n",
        )
        with pytest.raises(
            ConfigError,
            match=r"stages\.q\.kind: the nemo engine has no job for stage kind "
            r"'quantize' .*set engines\.q: native",
        ):
            load_recipe(recipe)
        assert load_recipe(recipe, ["engines.q=native"]).engine_of("q") == "native"
    finally:
        base._REGISTRY.pop("quantize")


def test_engines_block_is_validated():
    with pytest.raises(ConfigError, match=r"engines\.nope: no such stage"):
        load_recipe(PAPER_MN, ["engines.nope=native"])
    with pytest.raises(ConfigError, match=r"engines\.sft: unknown engine 'vllm'"):
        load_recipe(PAPER_MN, ["engines.sft=vllm"])
    with pytest.raises(ConfigError, match=r"nemo\.gpus_per_node: must be positive"):
        load_recipe(PAPER_MN, ["nemo.gpus_per_node=0"])


def test_engine_is_part_of_the_config_hash():
    nemo = load_recipe(PAPER_WIDTH)
    native = load_recipe(PAPER_WIDTH, ["engine=native"])
    assert nemo.config_hash("distill") != native.config_hash("distill")  # another engine, another artifact
    assert nemo.config_hash("sft") == native.config_hash("sft")  # pinned to native in engines:


# -- the CLI -------------------------------------------------------------------------------------------


def test_dry_run_through_the_cli_writes_runnable_files(tmp_path, capsys):
    rc = main(
        [
            "run",
            str(RECIPES / "smollm2-minitron.yaml"),
            "engines.prune=native",
            "nemo.gpus_per_node=4",
            "nemo.slurm.account=acct",
            "--engine",
            "nemo",
            "--dry-run",
            "--launcher",
            "slurm",
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    run_dir = (tmp_path / "runs" / "smollm2-minitron").resolve()
    assert f"{run_dir}/.nemo/correct" in capsys.readouterr().out.splitlines()
    job = run_dir / ".nemo" / "correct"
    assert {p.name for p in job.iterdir()} == {
        "config.yaml",
        "run.sh",
        "job.py",
        "job_tools.py",
        "walltime.py",
        "launch.sh",
        "job.sbatch",
        "manifest.template.json",
    }
    for sh in (job / "run.sh", job / "launch.sh", run_dir / ".nemo" / "launch-all.sh"):
        assert subprocess.run(["bash", "-n", str(sh)]).returncode == 0, sh
    sbatch = (job / "job.sbatch").read_text()
    assert (
        "#SBATCH --nodes=1" in sbatch and "#SBATCH --gpus-per-node=4" in sbatch and "#SBATCH --account=acct" in sbatch
    )
    assert f"--container-mounts={run_dir}:{run_dir}" in sbatch and "env DIST=python bash" in sbatch
    all_sh = (run_dir / ".nemo" / "launch-all.sh").read_text()
    assert "--dependency=afterok:${job_correct}" in all_sh  # distill waits for correct
    assert "factory run" in all_sh and "--only prune" in all_sh  # the native stage in between
    template = json.loads((job / "manifest.template.json").read_text())
    assert template["config_hash"] == load_recipe(
        RECIPES / "smollm2-minitron.yaml", ["engine=nemo", "engines.prune=native", "nemo.gpus_per_node=4"]
    ).config_hash("correct")
    assert not (run_dir / "correct").exists()  # nothing ran


def test_dry_run_needs_a_nemo_stage(tmp_path, capsys):
    rc = main(["run", str(RECIPES / "smoke.yaml"), "--dry-run", "--runs-dir", str(tmp_path)])
    assert rc == 2
    assert "every stage of this recipe runs natively; add --engine nemo" in capsys.readouterr().err


def test_docker_launch_command(tmp_path):
    run = dry_run(RECIPES / "smollm2-minitron.yaml", GOLDEN_RECIPES["smollm2-minitron.yaml"], tmp_path)
    launch = (run / ".nemo" / "distill" / "launch.sh").read_text().splitlines()[-1]
    assert launch.startswith("exec docker run --rm --gpus all --ipc=host")
    assert f"-v {run.resolve()}:{run.resolve()}" in launch
    assert launch.endswith(f"minitron-factory-nemo:latest bash {run.resolve()}/.nemo/distill/run.sh all")


# -- job-side pieces that run without NeMo --------------------------------------------------------------


def test_render_chat_splits_exactly_at_the_assistant_turns(tmp_path):
    from transformers import AutoTokenizer

    from factory.engines.nemo.scripts import render_chat
    from factory.sources.tiny import TinyLlamaSpec, build_tiny

    build_tiny(TinyLlamaSpec(), tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    conv = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6"},
        ]
    }
    recs = list(render_chat.sft_records(tok, conv))
    assert len(recs) == 2
    whole = tok.apply_chat_template(conv["messages"], tokenize=False)
    assert recs[1]["input"] + recs[1]["output"] == whole
    assert recs[0]["output"].startswith("4") and recs[1]["output"].startswith("6")
    assert recs[1]["output"].rstrip("\n").endswith(tok.eos_token)  # one end-of-turn in the loss
    pair = {
        "prompt": conv["messages"][:1],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    (dpo,) = render_chat.dpo_records(tok, pair)
    assert dpo["prompt"] == recs[0]["input"] and dpo["chosen_response"] == recs[0]["output"]
    assert dpo["rejected_response"].startswith("5")


def test_finalized_nemo_artifact_is_cached_for_the_native_pipeline(tmp_path):
    """A mixed recipe: the nemo job's exported checkpoint becomes an artifact the
    native pipeline recognises, so a native stage after it runs on it unchanged."""
    from factory.engines.nemo import executor, finalize
    from factory.pipeline import Pipeline
    from factory.sources.tiny import TinyLlamaSpec, build_tiny

    (tmp_path / "corpus.txt").write_text("\n\n".join(f"paragraph {i} " * 20 for i in range(40)))
    recipe_file = write(
        tmp_path / "mixed.yaml",
        """
name: mixed
engine: nemo
engines: {again: native}
nemo: {gpus_per_node: 1}
models: {teacher: {tiny: {num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4,
                          num_key_value_heads: 2, intermediate_size: 128}}}
datasets: {corpus: {path: corpus.txt, licence: CC0-1.0}}
stages:
  correct: {kind: correct, model: teacher, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 128}
  again: {kind: correct, model: correct, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 128}
""",
    )
    recipe = load_recipe(recipe_file)
    runs = tmp_path / "runs"
    executor.dry_run(recipe, runs, [str(recipe_file)])
    run_dir = (runs / "mixed").resolve()
    job = run_dir / ".nemo" / "correct"
    build_tiny(
        TinyLlamaSpec(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
        ),
        job / "hf",
    )  # what `job.py export` leaves
    pipe = Pipeline(recipe, runs, progress=False)
    assert pipe.decide("correct").action == "run"
    assert finalize.main([str(job / "manifest.template.json")]) == 0
    d = pipe.decide("correct")
    assert d.action == "cached", d.reason
    manifest = json.loads((run_dir / "correct" / "manifest.json").read_text())
    assert manifest["engine"] == "nemo" and manifest["job"]["backend"] == "nemo2"
    assert manifest["tokens"] == 128 and not (job / "hf").exists()
    plan = {x.stage: x.action for x in pipe.plan()}
    assert plan == {"correct": "cached", "again": "run"}  # the native stage reads the nemo artifact
    assert pipe.decide("again").inputs == {"correct": manifest["hash"], "corpus": d.inputs["corpus"]}


def test_finalize_refuses_an_empty_export(tmp_path, capsys):
    from factory.engines.nemo import finalize

    job = tmp_path / "run" / ".nemo" / "s"
    job.mkdir(parents=True)
    (job / "manifest.template.json").write_text(json.dumps({"export": ".nemo/s/hf", "output": "s"}))
    assert finalize.main([str(job / "manifest.template.json")]) == 2
    assert "no HF checkpoint" in capsys.readouterr().err


def test_job_tools(tmp_path):
    from factory.engines.nemo.scripts import job_tools

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json", "config.json"):
        (src / name).write_text(name)
    (dst / "generation_config.json").write_text("exported")
    assert job_tools.carry_tokenizer(src, dst) == ["tokenizer.json", "chat_template.jinja"]
    assert (dst / "generation_config.json").read_text() == "exported" and not (dst / "config.json").exists()
    logs = tmp_path / "logs" / "checkpoints"
    logs.mkdir(parents=True)
    (logs / "a.nemo").write_text("old")
    os.utime(logs / "a.nemo", (1, 1))
    (logs / "b.nemo").write_text("new")
    assert job_tools.find_nemo(tmp_path / "logs", tmp_path / "trained.nemo").name == "b.nemo"
    assert (tmp_path / "trained.nemo").read_text() == "new"


def test_launch_failure_is_one_line(tmp_path):
    from factory.engines.nemo import launchers

    with pytest.raises(FactoryError, match="is not installed on this machine"):
        launchers._call(["definitely-not-a-launcher-xyz"])


MIXED = """
name: mixed
engine: nemo
engines: {again: native}
nemo: {gpus_per_node: 1, launcher: LAUNCHER, workers: 1}
models: {teacher: {tiny: {num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4,
                          num_key_value_heads: 2, intermediate_size: 128}}}
datasets: {corpus: {path: corpus.txt, licence: CC0-1.0, doc_chars: 200}}
stages:
  correct: {kind: correct, model: teacher, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 128,
            eval_tokens: 64}
  distill: {kind: distill, student: correct, teacher: teacher, data: corpus, seq_len: 32, batch_size: 2,
            max_tokens: 128, eval_tokens: 64}
  again: {kind: correct, model: correct, data: corpus, seq_len: 32, batch_size: 2, max_tokens: 64,
          eval_tokens: 64, device: cpu}
"""


def _mixed(tmp_path, launcher: str):
    # 40 paragraphs of 260 characters, one document each
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"paragraph {i:02d} " * 20 for i in range(40)))
    return load_recipe(write(tmp_path / "mixed.yaml", MIXED.replace("LAUNCHER", launcher)))


def test_local_run_prepares_launches_and_hands_over_to_native(tmp_path, monkeypatch):
    """`factory run` with the job itself stubbed: what a job reads is in place, its
    artifact is published, and the native stage after it trains on it."""
    from factory.corpus import load_corpus
    from factory.engines.nemo import finalize, launchers
    from factory.sources.tiny import TinyLlamaSpec, build_tiny

    recipe = _mixed(tmp_path, "docker")
    launched = []

    def fake_start(settings, job_dir, run_dir, spec, after=()):
        launched.append(spec["stage"])
        for field, rel in spec["inputs"].items():  # inputs are HF checkpoints in the run dir
            assert (run_dir / rel / "config.json").is_file(), (field, rel)
        corpus = load_corpus(run_dir / spec["data"]["tokens"])  # tokenized here: the job reads the shards
        # 64 held-out tokens: one paragraph; then (128 + 64 tokens) x 5 characters: three more of 260
        assert (sum(map(len, corpus.train)), sum(map(len, corpus.heldout))) == (3, 1)
        build_tiny(
            TinyLlamaSpec(
                num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
            ),
            run_dir / spec["work"] / "hf",
        )
        assert finalize.main([str(job_dir / "manifest.template.json")]) == 0

    monkeypatch.setattr(launchers, "start", fake_start)
    runs = tmp_path / "runs"
    assert main(["run", str(recipe.file), "--runs-dir", str(runs), "--no-progress"]) == 0
    assert launched == ["correct", "distill"]
    made = {
        stage: json.loads((runs / "mixed" / stage / "manifest.json").read_text())
        for stage in ("correct", "distill", "again")
    }
    assert [m["job"]["backend"] for m in (made["correct"], made["distill"])] == ["nemo2", "nemo2"]
    assert "job" not in made["again"] and made["again"]["inputs"]["correct"] == made["correct"]["hash"]
    launched.clear()
    assert main(["run", str(recipe.file), "--runs-dir", str(runs), "--no-progress"]) == 0  # everything cached
    assert launched == []


def test_slurm_chains_jobs_and_stops_before_native_work(tmp_path, monkeypatch, capsys):
    from factory.engines.nemo import launchers

    recipe = _mixed(tmp_path, "slurm")
    calls = []

    def fake_call(cmd, capture=False):
        calls.append(cmd)
        return f"{1000 + len(calls)};cluster\n"

    monkeypatch.setattr(launchers, "_call", fake_call)
    assert main(["run", str(recipe.file), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]) == 0
    assert [c[:3] for c in calls] == [
        ["sbatch", "--parsable", calls[0][2]],
        ["sbatch", "--parsable", "--dependency=afterok:1001"],
    ]
    assert calls[0][2].endswith(".nemo/correct/job.sbatch") and calls[1][3].endswith(".nemo/distill/job.sbatch")
    err = capsys.readouterr().err
    assert "again: waits for Slurm jobs 1001 (correct); rerun this command when they have finished" in err
