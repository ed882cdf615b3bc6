"""Every generated job of the paper recipes, run on a CPU up to its first CUDA call.

Runs only in the NeMo environment (``make nemo-check``); skipped elsewhere. For
each paper recipe, the same recipe on a tiny random checkpoint of the paper's
architecture (Llama-3.1: llama3 rope scaling, GQA; Mistral-NeMo: head_dim apart
from hidden / heads, no sliding window; both untied) is rendered by the nemo
engine's own executor, the host does its part (sources linked, corpora tokenized
into Megatron shards, conversations exported), and then each job's steps run as
run.sh runs them:

- the prepare step (HF -> NeMo 2 import, chat rendering) and the
  job body (``job.py run``) of every NeMo 2 job must end, or stop at a CUDA
  requirement; never an argparse error, a TypeError, an import error or a
  missing file;
- every script invocation of every step (NeMo's converters and preprocessing,
  our own scripts) is checked against that script's real argument parser.

Where each job stops (the raising file:line, and the CUDA calls met on the way)
is written to ``gpu-boundary.json`` in the test's tmp dir and printed at the end.
NeMo's scripts/ ship in no wheel or sdist of nemo-toolkit: NEMO_SRC names a
NeMo source checkout (default: $VIRTUAL_ENV/share/nemo-src, which
scripts/nemo-env.sh fills); NeMo-Aligner's examples/ are in neither of its
packages, so its training scripts are checked in the NGC image instead
(containers/gpu-check.sh), and the Aligner jobs' NeMo 1 converters, which need
the NLP collection that NeMo 2.7 no longer has, only against their parsers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

llm = pytest.importorskip("nemo.collections.llm", reason="needs the NeMo environment (scripts/nemo-env.sh)")

from tests.nemo_env import argv_check, boundary  # noqa: E402

NEMO_SRC = Path(os.environ.get("NEMO_SRC", Path(sys.prefix) / "share" / "nemo-src"))
ALIGNER_SRC = Path(os.environ.get("ALIGNER_SRC", Path(sys.prefix) / "share" / "nemo-aligner-0.7.0"))
OWN = {"job.py": "nemo2_job.py", "job_tools.py": "job_tools.py", "render_chat.py": "render_chat.py"}
SCRIPTS = boundary.ROOT / "factory" / "engines" / "nemo" / "scripts"
# the nemo stages of each paper recipe (the width model's alignment runs natively: head_dim 128 x 32 != 3072)
JOBS = {
    "llama31-minitron-4b-width": ("correct", "prune", "distill"),
    "llama31-minitron-4b-depth": ("correct", "prune", "distill", "sft", "dpo"),
    "mn-minitron-8b": ("correct", "prune", "distill", "sft", "dpo"),
}
CASES = [(r, s) for r, stages in JOBS.items() for s in stages]
CUDA = re.compile(r"No supported gpu backend|CUDA|cuda|NVIDIA driver|nccl|NCCL|GPU", re.I)
NEVER = ("ImportError", "ModuleNotFoundError", "TypeError", "FileNotFoundError", "SystemExit: 2")
# The NeMo 1 scripts of the Aligner jobs import nemo.collections.nlp, which NeMo 2.7 no longer ships:
# they run in the Aligner image (NeMo 2.x with the NLP collection), not here.
NEMO1_ONLY = "No module named 'nemo.collections.nlp'"

pytestmark = pytest.mark.skipif(
    not (NEMO_SRC / "scripts" / "checkpoint_converters").is_dir(),
    reason=f"no NeMo source checkout at {NEMO_SRC} (set NEMO_SRC; scripts/nemo-env.sh makes one)",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """The tiny checkpoints, every recipe's rendered run dir, and where the records go."""
    root = tmp_path_factory.mktemp("gpu-boundary")
    teachers = {arch: boundary.save_checkpoint(cfg, root / arch) for arch, cfg in boundary.ARCHS.items()}
    runs = {}
    for name, (arch, _) in boundary.RECIPES.items():
        runs[name] = boundary.render_run(name, teachers[arch], root)
    state = {"root": root, "runs": runs, "done": {}}
    yield state
    report = {}
    for recipe, result in state["done"].items():
        for stage in JOBS[recipe]:
            report[f"{recipe}/{stage}"] = [
                dict(r, label=r["label"].split(":", 1)[1])
                for r in result["steps"]
                if r["label"].startswith(f"{stage}:")
            ]
    report = {"cpu_stack": next(iter(state["done"].values()))["cpu_stack"] if state["done"] else [], "jobs": report}
    (root / "gpu-boundary.json").write_text(json.dumps(report, indent=2))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print_report(root / "gpu-boundary.json", report)


def print_report(path: Path, report: dict) -> None:
    """Per job and step: how it ended, where it was raised, and the CUDA calls met on the way."""
    print(f"\n[gpu-boundary] {path}")
    for job, steps in report["jobs"].items():
        for step in steps:
            print(f"  {job:34} {step['label']:11} {step['status']:6} {step.get('exception', '')[:90]}")
            if step.get("at"):
                print(f"  {'':46} at {step['at']} (via {entry(step['frames'])})")
            for call in step.get("cuda_calls", []):
                print(f"  {'':46} met {call}")


def entry(frames: list[str]) -> str:
    """The last frame of the job or of NeMo before the library that raised."""
    ours = [f for f in frames if ("job.py:" in f or f.startswith("nemo/")) and not f.startswith("nemo/lightning/io/")]
    return ours[-1] if ours else "-"


def spec_of(job_dir: Path) -> dict:
    return yaml.safe_load((job_dir / "config.yaml").read_text())


def job_env(world, recipe: str, stage: str) -> tuple[dict, Path, Path]:
    _, run_dir, jobs = world["runs"][recipe]
    job_dir = jobs[stage]
    return boundary.job_env(job_dir, run_dir, NEMO_SRC, ALIGNER_SRC), run_dir, job_dir


def outcome(world, recipe: str, stage: str) -> dict:
    """The driver's records of the job's prepare steps and body (labels "prepare[i]", "train").
    All jobs of a recipe run in one process, prepare then body, job after job, in plan order."""
    if recipe not in world["done"]:
        steps = []
        for name in JOBS[recipe]:
            env, _, job_dir = job_env(world, recipe, name)
            spec = spec_of(job_dir)
            argvs = [(f"{name}:prepare[{i}]", a) for i, a in enumerate(spec["steps"]["prepare"])]
            if spec["backend"] == "nemo2":
                argvs.append((f"{name}:train", spec["steps"]["train"]))
            own = {k: env[k] for k in ("JOB_DIR", "PYTHONPATH")}
            steps += [(label, boundary.python_argv(boundary.expand(a, env)), own) for label, a in argvs]
        records = world["root"] / "records"
        records.mkdir(exist_ok=True)
        env = job_env(world, recipe, JOBS[recipe][0])[0]
        world["done"][recipe] = boundary.run_steps(steps, env, records / f"{recipe}.json")
    result = world["done"][recipe]
    mine = [dict(r, label=r["label"].split(":", 1)[1]) for r in result["steps"] if r["label"].startswith(f"{stage}:")]
    return {"cpu_stack": result["cpu_stack"], "steps": mine}


def test_every_nemo_stage_is_rendered(world):
    assert {r: tuple(jobs) for r, (_, _, jobs) in world["runs"].items()} == JOBS


def test_run_sh_runs_the_spec_steps(world):
    """The driver runs config.yaml's steps: run.sh must say the same commands."""
    from factory.engines.nemo.render import shell_line

    for recipe, stage in CASES:
        job_dir = world["runs"][recipe][2][stage]
        text, steps = (job_dir / "run.sh").read_text(), spec_of(job_dir)["steps"]
        for argv in [*steps["prepare"], steps["train"], *steps["finish"]]:
            line = "  " + shell_line(argv).replace("\n", "\n  ")  # as run.sh indents a step
            assert line in text, f"{job_dir}/run.sh lacks {argv[:2]}"


def is_nemo2(world, recipe: str, stage: str) -> bool:
    return spec_of(world["runs"][recipe][2][stage])["backend"] == "nemo2"


@pytest.mark.parametrize("recipe,stage", CASES, ids=[f"{r}/{s}" for r, s in CASES])
def test_prepare_steps_run(world, recipe, stage):
    """The HF -> NeMo 2 import (a NeMo 2 checkpoint saved) and chat rendering
    finish on a CPU; the Aligner jobs' NeMo 1 converters need the Aligner image."""
    result = outcome(world, recipe, stage)
    bad = []
    for step in result["steps"]:
        if step["label"] == "train" or step["status"] == "ok":
            continue
        if not is_nemo2(world, recipe, stage) and NEMO1_ONLY in step["exception"]:
            continue
        bad.append(f"{step['label']} {Path(step['argv'][0]).name}: {step['exception']} at {step.get('at')}")
    assert bad == []
    env, run_dir, job_dir = job_env(world, recipe, stage)
    spec = spec_of(job_dir)
    if spec["backend"] == "nemo2":
        for out in spec["nemo2"]["imports"].values():
            assert (run_dir / out / "context").is_dir() and (run_dir / out / "weights" / ".metadata").is_file()
    else:
        for split in ("train", "valid"):
            lines = (run_dir / spec["work"] / "data" / f"{split}.aligner.jsonl").read_text().splitlines()
            assert lines and all(json.loads(x) for x in lines)


def test_a_nemo2_checkpoint_is_saved():
    """NeMo 2.7.3 saves through megatron-core's dist_checkpointing (0.16 lacks the strategy it
    imports: "megatron-core was not found"); the import of the tiny Llama-3.1 saved one."""
    import importlib.metadata as md

    from nemo.utils.callbacks import dist_ckpt_io

    assert dist_ckpt_io.HAVE_MEGATRON_CORE and md.version("megatron-core") == "0.15.3"


def test_the_imported_checkpoint_has_the_source_shape(world):
    outcome(world, "llama31-minitron-4b-depth", "correct")
    ckpt = world["runs"]["llama31-minitron-4b-depth"][1] / ".nemo" / "correct" / "nemo" / "model"
    model = yaml.safe_load((ckpt / "context" / "model.yaml").read_text())
    assert model["_target_"] == "nemo.collections.llm.gpt.model.llama.LlamaModel"
    cfg, src = model["config"], boundary.ARCHS["llama31"]
    assert cfg["_target_"].endswith("Llama31Config")  # the llama3 rope scaling was recognised
    assert (cfg["num_layers"], cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["num_query_groups"]) == (
        src["num_hidden_layers"],
        src["hidden_size"],
        src["intermediate_size"],
        src["num_key_value_heads"],
    )
    assert (ckpt / "weights" / ".metadata").is_file() and list((ckpt / "weights").glob("*.distcp"))


@pytest.mark.parametrize(
    "recipe,stage", [c for c in CASES if c[1] in ("correct", "prune", "distill")], ids=lambda v: str(v)
)
def test_job_body_stops_at_cuda(world, recipe, stage):
    """``job.py run`` gets as far as the CPU allows: it stops at a CUDA requirement."""
    step = next(s for s in outcome(world, recipe, stage)["steps"] if s["label"] == "train")
    assert step["status"] == "raised", f"the job body ran through on a CPU: {step}"
    assert not step["exception"].startswith(NEVER), f"{step['exception']} at {step['at']}"
    assert CUDA.search(step["exception"] + " ".join(step.get("chain", []))), f"{step['exception']} at {step['at']}"


# -- every script invocation against the script's own parser ---------------------------------------


def invocations(world) -> list[tuple[str, Path, list[str]]]:
    """(where, script, argv) of every python step of every job; $VARS expanded."""
    out = []
    for recipe, stage in CASES:
        env, _, job_dir = job_env(world, recipe, stage)
        steps = spec_of(job_dir)["steps"]
        for part, argvs in (("prepare", steps["prepare"]), ("train", [steps["train"]]), ("finish", steps["finish"])):
            for argv in argvs:
                words = boundary.python_argv(boundary.expand(argv, env))
                if words and words[0] == "-m":  # python -m factory.engines.nemo.finalize ...
                    path = boundary.ROOT.joinpath(*words[1].split(".")).with_suffix(".py")
                    out.append((f"{recipe}/{stage} {part}", path, words[2:]))
                elif words:
                    out.append((f"{recipe}/{stage} {part}", Path(words[0]), words[1:]))
    return out


def check_invocation(script: Path, argv: list[str]) -> None:
    if script.parent == ALIGNER_SRC / "examples" / "nlp" / "gpt":
        return  # Hydra overrides, checked key by key in test_config_objects.py
    if script.name in OWN or script.is_relative_to(boundary.ROOT / "factory"):
        count, commands = argv_check.own_usage(SCRIPTS / OWN[script.name] if script.name in OWN else script)
        assert len(argv) == count and (not commands or argv[0] in commands), f"{script.name} {argv}"
        return
    assert script.is_file(), f"{script}: not in NeMo's sources"
    argv_check.parse_with(script, argv)


def test_every_script_invocation_parses(world):
    found, bad = invocations(world), []
    assert {p.name for _, p, _ in found} >= {
        "convert_llama_hf_to_nemo.py",
        "convert_llama_nemo_to_hf.py",
        "convert_mistral_7b_hf_to_nemo.py",
        "convert_mistral_7b_nemo_to_hf.py",
        "job.py",
        "job_tools.py",
        "render_chat.py",
        "finalize.py",
    }
    for where, script, argv in found:
        try:
            check_invocation(script, argv)
        except (argv_check.ArgvError, AssertionError) as e:
            bad.append(f"{where}: {e}")
    assert bad == []


def test_the_parser_check_catches_wrong_options():
    """The arguments the Mistral export once passed are refused by the converter's parser."""
    script = NEMO_SRC / "scripts" / "checkpoint_converters" / "convert_mistral_7b_nemo_to_hf.py"
    old = ["--input_name_or_path", "a.nemo", "--output_path", "x.bin", "--hf_input_path", "h", "--hf_output_path", "o"]
    with pytest.raises(argv_check.ArgvError, match="unrecognized arguments: --hf_input_path h --hf_output_path o"):
        argv_check.parse_with(script, old)
    ok = argv_check.parse_with(script, ["--input_name_or_path", "a.nemo", "--output_path", "out"])
    assert (ok.input_name_or_path, ok.output_path, ok.precision) == ("a.nemo", "out", "bf16")
    llama = NEMO_SRC / "scripts" / "checkpoint_converters" / "convert_llama_nemo_to_hf.py"
    with pytest.raises(argv_check.ArgvError, match="required"):
        argv_check.parse_with(llama, ["--output_path", "x"])
