"""The CLI's last resort for storage failures no safe-write path caught: one line, exit 2."""

import errno

import pytest

from factory import pipeline as pipeline_module
from factory.cli import main
from tests.conftest import RECIPES

SMOKE = RECIPES / "smoke.yaml"


def _failing_run(monkeypatch, err: BaseException) -> None:
    def run(self, *a, **kw):
        raise err

    monkeypatch.setattr(pipeline_module.Pipeline, "run", run)


@pytest.mark.parametrize(
    "code, says, fix",
    [
        (errno.EACCES, "access {}: permission denied", "make it writable and rerun the same command to resume"),
        (errno.EPERM, "access {}: permission denied", "make it writable and rerun the same command to resume"),
        (errno.EROFS, "write {}: read-only file system", "remount it writable or use another --runs-dir, then rerun"),
        (errno.ENOSPC, "write {}: no space left on device", "free some space and rerun the same command to resume"),
        (errno.EDQUOT, "write {}: disk quota exceeded", "free some space and rerun the same command to resume"),
    ],
)
def test_an_oserror_naming_its_file_is_one_line(tmp_path, monkeypatch, capsys, code, says, fix):
    lock = tmp_path / "smoke" / ".lock"
    _failing_run(monkeypatch, OSError(code, "injected", str(lock)))
    assert main(["run", str(SMOKE), "--runs-dir", str(tmp_path), "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: cannot {says.format(lock)} (") and line.endswith(f" free there); {fix}")


def test_a_torch_write_failure_names_the_runs_dir(tmp_path, monkeypatch, capsys):
    _failing_run(monkeypatch, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 92160 vs 92048"))
    assert main(["run", str(SMOKE), "--runs-dir", str(tmp_path), "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: cannot write files under {tmp_path}: no space left on device (")


def test_a_command_without_a_runs_dir_still_says_what_failed(tmp_path, monkeypatch, capsys):
    import factory.cli as cli

    def full(args):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cli, "cmd_validate", full)
    assert main(["validate", str(SMOKE)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: cannot write a file: no space left on device; free some space and rerun the same command to resume"
    ]


def test_other_errors_are_not_disguised(tmp_path, monkeypatch):
    _failing_run(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", str(SMOKE), "--runs-dir", str(tmp_path), "--no-progress"])
