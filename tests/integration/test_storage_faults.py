"""The smoke line under storage faults: damaged caches and checkpoints outside the artifacts
are reported in one line and rebuilt; a forced prune that reproduces its scores reproduces its
artifact byte for byte; a full or read-only disk stops the run in one line, exit 2, with no
partial file, and the run resumes to the uninterrupted run's artifacts once space is freed."""

import shutil
import subprocess
import sys

import pytest

from factory import pipeline as pipeline_module
from factory.cli import main
from foundation import storage
from foundation.artifacts import read_manifest
from tests.conftest import RECIPES, ROOT

SMOKE = RECIPES / "smoke.yaml"
TRAINED = ["correct", "prune", "distill", "sft", "dpo"]


def _factory(runs, *args):
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", "run", str(SMOKE), "--runs-dir", str(runs), "--no-progress", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def _hashes(run_dir, stages):
    return {s: read_manifest(run_dir / s)["hash"] for s in stages}


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("warning:", "error:"))]


def test_a_truncated_importance_cache_is_recomputed_and_the_forced_prune_reproduces_its_artifact(runs):
    first = _factory(runs, "--until", "distill")
    assert first.returncode == 0, first.stderr
    run = runs / "smoke"
    before = _hashes(run, ["prune", "distill"])
    (cache,) = (run / ".cache" / "prune").glob("importance-*.safetensors")
    cache.write_bytes(cache.read_bytes()[:100])

    again = _factory(runs, "--force", "prune", "--until", "distill")  # a fresh process: hash maps reseeded
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert _warnings(again.stderr) == [
        f"warning: {cache}: importance cache discarded, it has 100 bytes, {cache.stat().st_size} were written; "
        "recomputing the importance"
    ]
    assert storage.problem(cache) is None  # rebuilt, with its sha256 recorded
    assert _hashes(run, ["prune", "distill"]) == before  # same scores, same bytes: distill stays cached
    assert f"[factory] distill: cached ({run / 'distill'})" in again.stderr


class _Stop(Exception):
    pass


def test_a_truncated_distill_checkpoint_is_reported_and_the_stage_starts_over(tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert main(["run", str(SMOKE), "--runs-dir", str(reference), "--no-progress", "--until", "distill"]) == 0

    runs = tmp_path / "runs"
    publish = pipeline_module.Pipeline._publish

    def stop_before_distill_is_published(self, stage, inputs, outcome):
        if stage == "distill":
            raise _Stop  # as if killed: the work dir keeps its checkpoints
        return publish(self, stage, inputs, outcome)

    monkeypatch.setattr(pipeline_module.Pipeline, "_publish", stop_before_distill_is_published)
    with pytest.raises(_Stop):
        main(["run", str(SMOKE), "--runs-dir", str(runs), "--no-progress", "--until", "distill"])
    monkeypatch.undo()
    (ckpt,) = (runs / "smoke" / ".work").glob("distill-*/checkpoint.pt")
    size = ckpt.stat().st_size
    ckpt.write_bytes(ckpt.read_bytes()[: size // 2])
    capsys.readouterr()

    assert (
        main(["run", str(SMOKE), "--runs-dir", str(runs), "--no-progress", "--force", "distill", "--until", "distill"])
        == 0
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err and "resumed from" not in err
    assert _warnings(err) == [
        f"warning: {ckpt}: training checkpoint discarded, it has {size // 2} bytes, "
        f"{size} were written; distill (distill) starts over from step 0"
    ]
    assert _hashes(runs / "smoke", ["distill"]) == _hashes(reference / "smoke", ["distill"])


def _can_mount(tmp_path) -> str:
    """Why a tmpfs cannot be mounted in a private mount namespace here ("" when it can)."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = tmp_path / "probe"
    probe.mkdir()
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"], capture_output=True, text=True
    )
    return "" if r.returncode == 0 else f"mounting a tmpfs is not permitted here ({r.stderr.strip()[:100]})"


def _in_namespace(tmp_path, script: str) -> None:
    """Run ``script`` (sh) in a private mount namespace, where it may mount over tmp_path/mnt."""
    (tmp_path / "mnt").mkdir()
    r = subprocess.run(["unshare", "-m", "sh", "-e", "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_a_full_disk_stops_in_one_line_leaves_no_partial_file_and_resumes_once_freed(tmp_path):
    why = _can_mount(tmp_path)
    if why:
        pytest.skip(why)
    cmd = f"{sys.executable} -m factory.cli run {SMOKE} --no-progress --until dpo"
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    out.mkdir()
    _in_namespace(
        tmp_path,
        f"""
        mount -t tmpfs -o size=1200k tmpfs {mnt}
        rc=0; {cmd} --runs-dir {mnt} 2> {out}/full.err || rc=$?; echo $rc > {out}/full.rc
        cp -a {mnt} {out}/after-full
        mount -o remount,size=300m {mnt}
        rc=0; {cmd} --runs-dir {mnt} 2> {out}/freed.err || rc=$?; echo $rc > {out}/freed.rc
        cp -a {mnt} {out}/after-freed
    """,
    )
    assert (out / "full.rc").read_text().strip() == "2"
    err = (out / "full.err").read_text()
    assert "Traceback" not in err
    (line,) = _warnings(err)
    assert line.startswith(f"error: cannot write training checkpoint {mnt}/smoke/.work/correct-")
    assert "no space left on device" in line and "free there" in line

    state = out / "after-full"
    assert not [p for p in state.rglob("*") if p.name.endswith(".tmp")], "a partial file was left behind"
    for ckpt in state.rglob("checkpoint.pt"):
        assert storage.problem(ckpt) is None, ckpt  # what was kept is whole

    assert (out / "freed.rc").read_text().strip() == "0", (out / "freed.err").read_text()
    assert "correct (correct): resumed from step" in (out / "freed.err").read_text()
    reference = tmp_path / "reference"
    ref = _factory(reference, "--until", "dpo")
    assert ref.returncode == 0, ref.stderr
    assert _hashes(out / "after-freed" / "smoke", TRAINED) == _hashes(reference / "smoke", TRAINED)


def test_a_read_only_runs_dir_is_one_line(tmp_path):
    why = _can_mount(tmp_path)
    if why:
        pytest.skip(why)
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    out.mkdir()
    _in_namespace(
        tmp_path,
        f"""
        mount -t tmpfs -o size=1m,ro tmpfs {mnt}
        rc=0; {sys.executable} -m factory.cli run {SMOKE} --no-progress --runs-dir {mnt} 2> {out}/err || rc=$?
        echo $rc > {out}/rc
    """,
    )
    assert (out / "rc").read_text().strip() == "2"
    assert (out / "err").read_text().splitlines() == [
        f"error: cannot write {mnt}/smoke: read-only file system (1.0 MiB free there); "
        "remount it writable or use another --runs-dir, then rerun"
    ]
