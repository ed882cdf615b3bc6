"""containers/nemo_stack.py: the pinned NVIDIA versions and the check that fails an image build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
# What NVIDIA's release manifest lists for nemo:26.02 (Megatron-Bridge docs/releases/software-versions.md).
SHIPPED_26_02 = {"nemo-toolkit": "2.7.0", "nvidia-modelopt": "0.41.0", "megatron-core": "0.16.0"}
PINNED = {"nemo-toolkit": "2.7.3", "nvidia-modelopt": "0.37.0", "megatron-core": "0.15.3"}


def package_info(root: Path, module: str, major: int, minor: int, patch: int, pre: str = "") -> None:
    path = root.joinpath(*module.split("."))
    path.mkdir(parents=True)
    (path / "package_info.py").write_text(
        f"MAJOR = {major}\nMINOR = {minor}\nPATCH = {patch}\nPRE_RELEASE = {pre!r}\n"
        "VERSION = (MAJOR, MINOR, PATCH, PRE_RELEASE)\n__version__ = '.'.join(map(str, VERSION[:3]))\n"
    )


def test_package_info_is_read_without_importing_it(nemo_stack):
    text = "MAJOR = 2\nMINOR = 7\nPATCH = 0\nPRE_RELEASE = 'rc1'\nraise SystemExit('imported')\n"
    assert nemo_stack.version_from_package_info(text) == "2.7.0rc1"
    assert nemo_stack.version_from_package_info("MAJOR = 2\nMINOR = 7\n") is None


def test_source_version_follows_the_import_path(nemo_stack, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    package_info(first, "nemo", 2, 7, 0)
    (first / "nemo" / "__init__.py").write_text("")
    package_info(second, "nemo", 2, 7, 3)
    (second / "nemo" / "__init__.py").write_text("")
    package_info(second, "megatron.core", 0, 15, 3)  # a namespace package: no megatron/__init__.py
    path = [str(first), str(second)]
    assert nemo_stack.source_version("nemo", path) == "2.7.0"  # the first on the path wins, as import does
    assert nemo_stack.source_version("nemo", path[1:]) == "2.7.3"
    assert nemo_stack.source_version("megatron.core", path) == "0.15.3"
    assert nemo_stack.source_version("nemo_aligner", path) is None


def test_installed_version_reads_pip_metadata(nemo_stack):
    assert nemo_stack.installed_version("PyYAML") == yaml.__version__
    assert nemo_stack.installed_version("no-such-distribution-anywhere") is None


def test_exact_pins_pass_and_every_difference_is_named(nemo_stack):
    assert nemo_stack.mismatches(PINNED, dict(PINNED)) == []
    assert nemo_stack.mismatches(PINNED, {**PINNED, "nemo-toolkit": "2.7.3+nv26.2"}) == []  # a local build tag
    wrong = nemo_stack.mismatches(PINNED, SHIPPED_26_02)
    assert wrong == [
        "nemo-toolkit 2.7.0 (pinned 2.7.3)",
        "nvidia-modelopt 0.41.0 (pinned 0.37.0)",
        "megatron-core 0.16.0 (pinned 0.15.3)",
    ]
    assert nemo_stack.mismatches(PINNED, {**PINNED, "megatron-core": None}) == [
        "megatron-core not installed (pinned 0.15.3)"
    ]


def test_the_default_base_passes_the_series_check_and_fails_the_exact_one(nemo_stack):
    """26.02 ships the 2.7 line, so it may be brought to the pins; as shipped it is not what was checked."""
    assert nemo_stack.BASES["nemo"] == "nvcr.io/nvidia/nemo:26.02"
    series = nemo_stack.verdict("nemo", SHIPPED_26_02, {}, series=True)
    assert series == "ok    nemo base image: nemo-toolkit 2.7.0"
    exact = nemo_stack.verdict("nemo", SHIPPED_26_02, {})
    assert exact.startswith("FAIL  nemo image: nemo-toolkit 2.7.0 (pinned 2.7.3); ") and "\n" not in exact
    assert "nemo:26.02" in exact
    # 25.11 ships NeMo 2.6.0 (with ModelOpt 0.37.0): refused before anything is installed over it
    shipped_25_11 = {"nemo-toolkit": "2.6.0", "nvidia-modelopt": "0.37.0", "megatron-core": "0.15.0"}
    assert nemo_stack.verdict("nemo", shipped_25_11, {}, series=True).startswith(
        "FAIL  nemo base image: nemo-toolkit 2.6.0 (the jobs need the 2.7 line)"
    )
    # 26.04 ships no NeMo at all
    assert "nemo-toolkit not installed" in nemo_stack.verdict("nemo", {}, {}, series=True)


def test_sources_that_shadow_the_installed_package_fail(nemo_stack):
    assert nemo_stack.verdict("nemo", PINNED, {"nemo-toolkit": "2.7.3", "megatron-core": "0.15.3"}).startswith("ok")
    line = nemo_stack.verdict("nemo", PINNED, {"nemo-toolkit": "2.7.0", "megatron-core": "0.15.3"})
    assert line.startswith("FAIL  nemo image: nemo-toolkit imports 2.7.0 sources, not the installed 2.7.3")


def test_aligner_image_needs_aligner_0_7_0(nemo_stack):
    assert nemo_stack.verdict("aligner", {"nemo-aligner": "0.7.0"}, {"nemo-aligner": "0.7.0"}).startswith("ok")
    line = nemo_stack.verdict("aligner", {"nemo-aligner": "0.7.0rc0"}, {})
    assert line.startswith("FAIL  aligner image: nemo-aligner 0.7.0rc0 (pinned 0.7.0)")
    assert nemo_stack.OVERLAY["aligner"] == ()  # nothing of the Aligner image is replaced


def run(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "containers" / "nemo_stack.py"), *args], capture_output=True, text=True
    )


def test_command_line_prints_requirements_and_fails_outside_an_image():
    done = run("requirements", "nemo")
    assert done.returncode == 0
    assert done.stdout.split() == ["nemo-toolkit==2.7.3", "nvidia-modelopt==0.37.0", "megatron-core==0.15.3"]
    assert run("requirements", "aligner").stdout == ""  # an empty file: the Dockerfile runs no pip
    done = run("check", "nemo")  # the project's environment has no NeMo
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL  nemo image: nemo-toolkit not installed (pinned 2.7.3)")
    assert len(done.stdout.splitlines()) == 1
    done = run("check", "nemo2")
    assert done.returncode == 2 and "usage: nemo_stack.py" in done.stderr


def test_pins_are_the_versions_the_check_environment_installs(nemo_stack):
    """scripts/nemo-env.sh builds the environment `make nemo-check` runs in: the same versions."""
    from factory.engines.nemo.capabilities import MODELOPT_VERSION

    env = (ROOT / "scripts" / "nemo-env.sh").read_text()
    assert re.search(r"nemo_version=\$\{NEMO_VERSION:-([\d.]+)\}", env)[1] == nemo_stack.PINS["nemo"]["nemo-toolkit"]
    assert (
        re.search(r"aligner_version=\$\{ALIGNER_VERSION:-([\d.]+)\}", env)[1]
        == (nemo_stack.PINS["aligner"]["nemo-aligner"])
    )
    lock = ROOT / "scripts" / "nemo-env.lock"
    pins = env + (lock.read_text() if lock.exists() else "")
    assert f"megatron-core=={nemo_stack.PINS['nemo']['megatron-core']}" in pins
    assert nemo_stack.PINS["nemo"]["nvidia-modelopt"] == MODELOPT_VERSION


def dockerfile_check(stack: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The Dockerfile's version step, run as the build runs it (``python`` is this interpreter,
    which has no NeMo; ``pip`` must not be reached)."""
    text = (ROOT / "containers" / "Dockerfile.nemo").read_text().replace("\\\n", " ")
    run_line = next(ln for ln in text.splitlines() if ln.startswith("RUN ") and "nemo_stack.py check" in ln)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "pip").write_text("#!/bin/sh\necho pip was run >&2\nexit 99\n")
    (bin_dir / "pip").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STACK": stack, "TMPDIR": str(tmp_path)}
    command = run_line.removeprefix("RUN ").replace("/tmp/nemo-stack.txt", str(tmp_path / "stack.txt"))
    return subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, env=env)


def test_the_dockerfile_stops_on_a_base_without_the_pinned_stack(tmp_path):
    done = dockerfile_check("nemo", tmp_path)
    assert done.returncode == 1, done.stderr
    assert "FAIL  nemo base image: nemo-toolkit not installed (pinned 2.7.3)" in done.stdout
    assert "pip was run" not in done.stderr
    done = dockerfile_check("aligner", tmp_path / "a")
    assert done.returncode == 1, done.stderr
    assert "FAIL  aligner image: nemo-aligner not installed (pinned 0.7.0)" in done.stdout
    assert "pip was run" not in done.stderr  # nothing is installed over an Aligner image
