"""``nemo.tokenize_on: cluster``: a stage's text dataset is tokenized by a Slurm CPU job,
not on the submitting host. `factory run` (against the fake Slurm of fake_slurm.py)
submits that job first and the stage's job after it with afterok; the tokenize job
runs ``python -m factory.engines.nemo.prepare tokenize`` and writes the same shard
bytes the host path writes; the stage's job starts only once it has completed; both
show in jobs.jsonl and `factory status`. Other launchers refuse the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from factory.cli import main
from factory.engines.base import SourceHashes
from factory.engines.nemo import executor, prepare, status
from factory.recipe import load_recipe
from foundation.errors import ConfigError
from tests.conftest import ROOT, write
from tests.unit.factory.engines.nemo import fake_slurm

RECIPE = """
name: tokjob
engine: nemo
nemo: {gpus_per_node: 1, workers: 2, launcher: slurm, tokenize_on: cluster,
       slurm: {signal_grace: 3, time: "00:01:00", cpu_partition: cpu, tokenize_time: "00:30:00"}}
models: {teacher: {tiny: {num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2,
                          num_key_value_heads: 1, intermediate_size: 64}}}
datasets: {text: {path: corpus.txt, licence: CC0-1.0, doc_chars: 300}}
stages:
  correct: {kind: correct, model: teacher, data: text, seq_len: 32, batch_size: 2, max_tokens: 2048,
            eval_tokens: 64}
"""

# The stage's job body (NeMo reduced to what this test looks at): `run` notes whether the
# shards the tokenize job writes are there when training starts; `export` leaves a model.
BODY = """
import os, sys
from pathlib import Path
import yaml
import walltime

cmd, config = sys.argv[1], sys.argv[2]
spec = yaml.safe_load(open(config))
run_dir, job = Path(os.environ["RUN_DIR"]), Path(os.environ["JOB_DIR"])
if cmd == "run":
    tokens = run_dir / spec["data"]["tokens"]
    with open(job / "body.log", "a") as log:
        print("shards" if (tokens / "corpus.json").is_file() else "no shards", file=log)
    walltime.write_progress(job, 1, 1, done=True)
elif cmd == "export":
    out = run_dir / spec["work"] / "hf"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text("{}")
"""


def _corpus(tmp_path: Path) -> Path:
    text = "\n\n".join(f"paragraph {i:02d}: " + " ".join(f"word{j * i % 97}" for j in range(40)) for i in range(80))
    (tmp_path / "corpus.txt").write_text(text)
    return write(tmp_path / "r.yaml", RECIPE)


@pytest.fixture
def cluster_env(tmp_path, monkeypatch):
    env = fake_slurm.install(tmp_path / "bin", tmp_path / "slurm")
    env.update(PYTHONPATH=str(ROOT), NEMO_DIR=str(tmp_path / "nemo"), ALIGNER_DIR=str(tmp_path / "aligner"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _stub_job(tmp_path: Path, job_dir: Path) -> None:
    """The stage's job.py replaced by BODY, NeMo's own scripts its steps name by empty stubs."""
    (job_dir / "job.py").write_text(BODY)
    spec = yaml.safe_load((job_dir / "config.yaml").read_text())
    for cmd in spec["steps"]["prepare"] + spec["steps"]["finish"]:
        for arg in cmd:
            for var in ("$NEMO_DIR", "$ALIGNER_DIR"):
                if arg.startswith(var + "/"):
                    stub = tmp_path / var[1:].split("_")[0].lower() / arg[len(var) + 1 :]
                    stub.parent.mkdir(parents=True, exist_ok=True)
                    stub.write_text("")


def _shards(tokens: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(tokens)): p.read_bytes() for p in sorted(tokens.rglob("*")) if p.suffix in (".bin", ".idx")
    }


def _host_shards(tmp_path: Path, recipe_file: Path) -> dict[str, bytes]:
    """The same recipe prepared the host way (`factory run`'s steps before a launch)."""
    recipe = load_recipe(recipe_file, ["nemo.tokenize_on=host", "nemo.workers=1"])
    run_dir = (tmp_path / "host-runs" / recipe.name).resolve()
    fingerprint = SourceHashes(recipe)
    spec, _ = executor.NemoExecutor(recipe).render("correct", run_dir, fingerprint)
    prepare.materialize_sources(recipe, "correct", run_dir, fingerprint)
    prepare.export_data(recipe, spec, run_dir)
    return _shards(run_dir / spec["data"]["tokens"])


def test_the_chain_tokenizes_in_a_cpu_job_first_and_the_stage_waits_for_it(tmp_path, cluster_env, capsys):
    recipe_file = _corpus(tmp_path)
    runs = tmp_path / "runs"
    assert main(["run", str(recipe_file), "--runs-dir", str(runs), "--no-progress"]) == 0
    run_dir = (runs / "tokjob").resolve()
    tok_job, stage_job = run_dir / ".nemo" / "correct.tokenize", run_dir / ".nemo" / "correct"
    tokens = stage_job / "tokens"
    assert not (tokens / "corpus.json").exists()  # nothing tokenized on the submitting host
    calls = [json.loads(c) for c in (tmp_path / "slurm" / "calls.log").read_text().splitlines()]
    assert calls == [
        ["sbatch", "--parsable", str(tok_job / "job.sbatch")],
        ["sbatch", "--parsable", "--dependency=afterok:1001", str(stage_job / "job.sbatch")],
    ]
    sbatch = (tok_job / "job.sbatch").read_text()
    for line in ("--cpus-per-task=2", "--partition=cpu", "--time=00:30:00", "--ntasks=1"):
        assert f"#SBATCH {line}\n" in sbatch
    assert "gpus" not in sbatch and "python -m factory.engines.nemo.prepare tokenize" in sbatch
    assert f"--container-mounts={run_dir}:{run_dir},{tmp_path}:{tmp_path}:ro" in sbatch
    _stub_job(tmp_path, stage_job)

    seen = []
    cluster = fake_slurm.Cluster(tmp_path / "slurm", cluster_env, lambda job_id, job: False)
    cluster.run(lambda event, job_id, job: seen.append((event, job_id)), timeout=300)
    assert seen == [("start", "1001"), ("end", "1001"), ("start", "1002"), ("end", "1002")]
    assert (stage_job / "body.log").read_text() == "shards\n"  # training started with the shards there
    assert [r["event"] for r in status.read_log(tok_job)] == ["submitted", "start", "completed"]
    assert [r["event"] for r in status.read_log(stage_job)][-1] == "completed"

    ours = _shards(tokens)
    assert sorted(ours) == [f"shards/{s}-00000.{x}" for s in ("heldout", "train") for x in ("bin", "idx")]
    assert ours == _host_shards(tmp_path, recipe_file)  # byte for byte, made with 2 workers and with 1

    capsys.readouterr()
    assert main(["status", str(run_dir), "--json"]) == 0
    rows = {s["stage"]: s for s in json.loads(capsys.readouterr().out)["stages"]}
    assert (rows["correct.tokenize"]["state"], rows["correct.tokenize"]["jobs"]) == ("completed", ["1001"])
    assert (rows["correct"]["state"], rows["correct"]["jobs"]) == ("completed", ["1002"])


def test_tokenize_on_cluster_is_refused_without_the_slurm_launcher(tmp_path):
    recipe_file = _corpus(tmp_path)
    for launcher in ("docker", "torchrun"):
        with pytest.raises(ConfigError) as err:
            load_recipe(recipe_file, [f"nemo.launcher={launcher}"], check_files=False)
        message = str(err.value)
        assert "\n" not in message and "nemo.tokenize_on" in message
        assert f"it needs launcher slurm, not {launcher}" in message
    assert load_recipe(recipe_file, ["nemo.launcher=docker", "nemo.tokenize_on=host"], check_files=False)
    with pytest.raises(ConfigError, match=r"nemo\.slurm\.tokenize_time: 'soon' is not a Slurm time limit"):
        load_recipe(recipe_file, ["nemo.slurm.tokenize_time=soon"], check_files=False)
