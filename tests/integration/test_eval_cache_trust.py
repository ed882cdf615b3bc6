"""The evaluate stage's kept results (``<run>/.cache/evaluate/results-*.json``) are
trusted only when they match the sha256 recorded at their write and their metrics
follow from their samples: a forged metric, a forged metric with its record redone
and a truncated file are each reported in one line, discarded and evaluated again,
and nothing forged reaches the results, report, gate or release card; a summary
edited in the published evaluate artifact (its manifest redone) stops the gate. A SIGKILL
while evaluate writes them, or while release builds or publishes its directory, is
followed by a rerun that ends with the outputs of an uninterrupted run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.cli import main
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from factory.stages.release import eval_rows
from foundation import storage
from foundation.artifacts import content_hash, read_manifest
from foundation.errors import FactoryError
from foundation.hashing import sha256_file
from tests.conftest import RECIPES

SMOKE = RECIPES / "smoke.yaml"
LABELS = ("teacher", "pruned", "distilled", "aligned")
EARLIER = ("correct", "prune", "distill", "sft", "dpo")
RELEASE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "lineage.json")


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """An uninterrupted, unedited run of the smoke recipe (the reference)."""
    runs = tmp_path_factory.mktemp("honest")
    Pipeline(load_recipe(SMOKE), runs, progress=False).run()
    return runs / "smoke"


def _copy(honest: Path, tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(honest, runs / "smoke", symlinks=True)
    for name in drop:
        shutil.rmtree(runs / "smoke" / name)
    return runs


def _kept(run: Path) -> dict[str, Path]:
    """Label -> the kept results file of that model."""
    out = {}
    for p in sorted((run / ".cache" / "evaluate").glob("results-*.json")):
        out[json.loads(p.read_text())["model"]["label"]] = p
    return out


def _section(card: str, title: str) -> str:
    start = card.index(f"## {title}")
    return card[start : card.index("\n## ", start + 1)]


def _published(run: Path) -> dict:
    """What a reader of the run sees: every model's scores and outputs, the evaluate and
    gate manifests' metrics, the release card's scores and verdict, the released files."""
    out = {}
    for label in LABELS:
        r = json.loads((run / "evaluate" / f"results-{label}.json").read_text())
        assert not [k for k in r if k.startswith("_")], f"internal keys published in results-{label}.json"
        out[label] = {
            "tasks": {t: v["metrics"] for t, v in r["tasks"].items()},
            "outputs": [s["outputs"] for s in r["samples"]],
        }
    out["evaluate"] = read_manifest(run / "evaluate")["metrics"]
    out["gate"] = read_manifest(run / "gate")["metrics"]
    card = (run / "release" / "README.md").read_text()
    out["card"] = [_section(card, "Evaluation"), _section(card, "Regression gate")]
    out["release"] = {name: sha256_file(run / "release" / name) for name in RELEASE_FILES}
    out["report"] = [
        line for line in (run / "evaluate" / "report.md").read_text().splitlines() if line.startswith("| ")
    ]
    return out


def _forge(path: Path, task: str, metric: str, value: float, reseal: bool = False) -> None:
    """Edit one metric of a kept results file, leaving valid JSON; ``reseal``: also
    record the sha256 of the edited bytes, as a forger who knows the format would."""
    data = json.loads(path.read_text())
    assert data["tasks"][task]["metrics"][metric]["value"] != value
    data["tasks"][task]["metrics"][metric]["value"] = value
    path.write_text(json.dumps(data, indent=1) + "\n")
    if reseal:
        storage.record_sha256(path, sha256_file(path))


def test_forged_or_truncated_kept_results_are_reported_discarded_and_rebuilt(honest, tmp_path, capsys):
    runs = _copy(honest, tmp_path)
    run = runs / "smoke"
    kept = _kept(run)
    assert sorted(kept) == sorted(LABELS) and all(storage.sidecar(p).is_file() for p in kept.values())
    earlier = {stage: read_manifest(run / stage)["hash"] for stage in EARLIER}

    _forge(kept["aligned"], "arc_easy", "acc", 0.95)  # the edit from the issue: still valid JSON
    _forge(kept["pruned"], "arc_easy", "acc", 0.95, reseal=True)
    written = kept["teacher"].stat().st_size
    kept["teacher"].write_text("".join(kept["teacher"].read_text().splitlines(True)[:5]))  # truncated
    left = kept["teacher"].stat().st_size
    capsys.readouterr()
    assert main(["run", str(SMOKE), "--runs-dir", str(runs), "--no-progress", "--force", "evaluate"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 3, err
    assert (
        f"warning: {kept['aligned']}: kept eval results discarded, it does not match the sha256 recorded "
        "when it was written; evaluating aligned again"
    ) in warned
    assert (
        f"warning: {kept['pruned']}: kept eval results discarded, it does not load "
        "(tasks.arc_easy.metrics.acc is not what its samples give); evaluating pruned again"
    ) in warned
    assert (
        f"warning: {kept['teacher']}: kept eval results discarded, it has {left} bytes, {written} were "
        "written; evaluating teacher again"
    ) in warned
    assert f"distilled: reusing results of the same model, suite and settings ({kept['distilled'].name})" in err
    assert "Traceback" not in err

    assert _published(run) == _published(honest)  # nothing forged got through, the honest scores did
    assert "0.950" not in (run / "evaluate" / "report.md").read_text()
    assert "0.950" not in (run / "release" / "README.md").read_text()
    assert {stage: read_manifest(run / stage)["hash"] for stage in EARLIER} == earlier  # nothing else was lost
    again = _kept(run)  # rebuilt, checked and honest again
    assert sorted(again) == sorted(LABELS)
    for label, path in again.items():
        assert storage.problem(path) is None, label
        data, ref = (json.loads(p.read_text()) for p in (path, honest / ".cache" / "evaluate" / path.name))
        assert {t: v["metrics"] for t, v in data["tasks"].items()} == {t: v["metrics"] for t, v in ref["tasks"].items()}
        assert "_file" not in data


def test_force_evaluate_repairs_a_kept_file_whose_record_is_missing(honest, tmp_path, capsys):
    """A file without its sha256 record (its write never finished) is not trusted either."""
    runs = _copy(honest, tmp_path)
    run = runs / "smoke"
    path = _kept(run)["distilled"]
    storage.sidecar(path).unlink()
    capsys.readouterr()
    assert main(["run", str(SMOKE), "--runs-dir", str(runs), "--no-progress", "--force", "evaluate"]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: {path}: kept eval results discarded, no sha256 was recorded for it (its write did not "
        "finish); evaluating distilled again"
    ) in err.splitlines()
    assert _published(run) == _published(honest) and storage.problem(path) is None


def test_a_forged_published_result_reaches_neither_gate_nor_card(honest, tmp_path, capsys):
    """Even with the evaluate artifact's manifest redone to match the edit, a summary no
    sample gives stops the gate (and would stop the release) in one line naming the file;
    what was published before stays."""
    runs = _copy(honest, tmp_path)
    run = runs / "smoke"
    path = run / "evaluate" / "results-aligned.json"
    _forge(path, "arc_easy", "acc", 0.95)
    manifest = json.loads((run / "evaluate" / "manifest.json").read_text())
    manifest["files"][path.name] = sha256_file(path)
    manifest["hash"] = content_hash(manifest["files"])
    (run / "evaluate" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    before = _published(honest)
    capsys.readouterr()
    assert main(["run", str(SMOKE), "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"error: {path}: tasks.arc_easy.metrics.acc is not what its samples give"
    assert "Traceback" not in err
    assert read_manifest(run / "gate")["metrics"] == before["gate"]
    assert (run / "release" / "README.md").read_text() == (honest / "release" / "README.md").read_text()
    with pytest.raises(FactoryError, match=r"results-aligned.json: tasks.arc_easy.metrics.acc is not what"):
        eval_rows(run / "evaluate", "aligned", "teacher")


# A run of the CLI that SIGKILLs itself at one moment (KILL_AT), standing in for a kill from outside at
# exactly that moment: the file and the moment are named, not left to a race.
DRIVER = r"""
import os, signal, sys
from pathlib import Path

import foundation.storage as storage

point = os.environ["KILL_AT"]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def kept(path):
    return Path(path).parent.name == "evaluate" and Path(path).parent.parent.name == ".cache"


real_replace = os.replace


def replace(src, dst, *a, **k):
    if point == "kept-before-rename" and kept(dst) and str(dst).endswith(".json"):
        die()
    if point == "release-publish" and Path(dst).name == "release":
        die()  # the old release, if any, is already moved aside
    return real_replace(src, dst, *a, **k)


os.replace = replace
real_record = storage.record_sha256


def record(path, digest):
    if point == "kept-before-sha256" and kept(path):
        die()
    return real_record(path, digest)


storage.record_sha256 = record
if point == "release-card":
    import factory.stages.release as release

    def card(*a, **k):
        die()

    release.model_card = card

from factory.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _killed(runs: Path, point: str, *args: str) -> None:
    cmd = [sys.executable, "-c", DRIVER, "run", str(SMOKE), "--runs-dir", str(runs), "--no-progress", *args]
    proc = subprocess.run(cmd, env={**os.environ, "KILL_AT": point}, capture_output=True, text=True)
    assert proc.returncode == -9, f"not killed at {point}: {proc.stderr[-2000:]}"


@pytest.mark.parametrize("point", ["kept-before-rename", "kept-before-sha256"])
def test_sigkill_while_evaluate_writes_kept_results_then_rerun(honest, tmp_path, capsys, point):
    runs = _copy(honest, tmp_path, drop=("evaluate", "gate", "release", ".cache/evaluate"))
    run = runs / "smoke"
    _killed(runs, point)
    assert read_manifest(run / "evaluate") is None and read_manifest(run / "dpo") is not None
    cache = run / ".cache" / "evaluate"
    if point == "kept-before-rename":  # the whole file was written beside its name, not renamed to it
        assert len(list(cache.glob(".results-*.tmp"))) == 1 and not list(cache.glob("results-*"))
    capsys.readouterr()
    assert main(["run", str(SMOKE), "--runs-dir", str(runs), "--no-progress"]) == 0
    err = capsys.readouterr().err
    if point == "kept-before-sha256":  # the file landed, its record did not: not trusted
        assert (
            "kept eval results discarded, no sha256 was recorded for it (its write did not finish); "
            "evaluating teacher again" in err
        )
    assert "Traceback" not in err
    assert _published(run) == _published(honest)
    assert all(storage.problem(p) is None for p in _kept(run).values()) and sorted(_kept(run)) == sorted(LABELS)
    assert not list(cache.glob(".*.tmp"))  # what the kill left half-written is gone


@pytest.mark.parametrize("point", ["release-card", "release-publish"])
def test_sigkill_during_release_then_rerun(honest, tmp_path, capsys, point):
    runs = _copy(honest, tmp_path)
    run = runs / "smoke"
    _killed(runs, point, "--force", "release")
    capsys.readouterr()
    assert main(["run", str(SMOKE), "--runs-dir", str(runs), "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert _published(run) == _published(honest)
    assert (run / "release" / "README.md").read_text() == (honest / "release" / "README.md").read_text()
