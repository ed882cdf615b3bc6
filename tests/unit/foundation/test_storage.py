"""foundation.storage: atomic writes that fail in one line (disk full, quota, permission,
read-only) leaving no partial file, sha256-checked files, byte-reproducible safetensors."""

import errno
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from foundation import storage
from foundation.storage import StorageError
from tests.conftest import ROOT


class _FailingFile:
    """A binary file whose writes fail with ``code`` once ``limit`` bytes have been written."""

    def __init__(self, real, code: int, limit: int):
        self.real, self.code, self.limit, self.written = real, code, limit, 0

    def write(self, data):
        if self.written + len(data) > self.limit:
            self.real.write(data[: self.limit - self.written])  # a partial write, as a full disk leaves
            self.written = self.limit
            raise OSError(self.code, "injected", None)
        self.written += len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def _inject(monkeypatch, code: int, limit: int = 100) -> None:
    """Make every file ``foundation.storage`` opens for writing fail with ``code`` after ``limit`` bytes."""
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return _FailingFile(f, code, limit) if "w" in mode else f

    monkeypatch.setattr(storage, "open", fake_open, raising=False)


def _only(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "a.json"
    storage.write_text(target, "old", "a test file")
    storage.write_text(target, "new", "a test file")
    assert target.read_text() == "new"
    assert _only(target) == ["a.json"]


@pytest.mark.parametrize(
    "code, says",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
        (errno.EROFS, "read-only file system"),
    ],
)
def test_a_failed_write_is_one_line_naming_the_path_and_leaves_the_old_file(tmp_path, monkeypatch, code, says):
    target = tmp_path / "ckpt.bin"
    storage.write_bytes(target, b"previous", "a checkpoint", checked=True)
    _inject(monkeypatch, code)
    with pytest.raises(StorageError) as e:
        storage.write_bytes(target, b"x" * 1000, "a checkpoint", checked=True)
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    assert msg.startswith(f"cannot write a checkpoint {target}: {says}")
    assert "free there" in msg and "rerun" in msg
    assert _only(target) == ["ckpt.bin", "ckpt.bin.sha256"]  # the partial temporary file is gone
    assert target.read_bytes() == b"previous" and storage.problem(target) is None


def test_a_full_disk_at_the_sha256_record_leaves_nothing_unverifiable(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.bin"
    storage.write_bytes(target, b"previous", "a checkpoint", checked=True)
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return _FailingFile(f, errno.ENOSPC, 0) if "w" in mode and ".sha256." in str(path) else f

    monkeypatch.setattr(storage, "open", fake_open, raising=False)
    with pytest.raises(StorageError, match=rf"^cannot write a checkpoint {target}: no space left on device"):
        storage.write_bytes(target, b"new", "a checkpoint", checked=True)
    assert list(tmp_path.iterdir()) == []  # the new file had no record: it is not left to be trusted


def test_record_first_keeps_the_previous_pair_when_the_record_does_not_fit(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    storage.write_bytes(target, b"previous", "a checkpoint", checked=True, record_first=True)
    assert storage.problem(target) is None and _only(target) == ["checkpoint.pt", "checkpoint.pt.sha256"]
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return _FailingFile(f, errno.ENOSPC, 0) if "w" in mode and ".sha256." in str(path) else f

    monkeypatch.setattr(storage, "open", fake_open, raising=False)
    with pytest.raises(StorageError, match=rf"^cannot write a checkpoint {target}: no space left on device"):
        storage.write_bytes(target, b"new", "a checkpoint", checked=True, record_first=True)
    assert _only(target) == ["checkpoint.pt", "checkpoint.pt.sha256"]
    assert target.read_bytes() == b"previous" and storage.problem(target) is None


def test_record_first_has_the_record_in_place_before_the_file_appears(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    seen = []
    real_replace = storage.os.replace

    def replace(src, dst):
        if dst == target:
            seen.append(storage.sidecar(target).is_file())
        return real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", replace)
    storage.write_bytes(target, b"data", "a checkpoint", checked=True, record_first=True)
    assert seen == [True] and storage.problem(target) is None


def test_torch_save_on_a_full_disk_is_one_line_not_unexpected_pos(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    _inject(monkeypatch, errno.ENOSPC, limit=4096)
    with pytest.raises(StorageError, match=r"^cannot write training checkpoint .*checkpoint.pt: no space left"):
        with storage.atomic_file(target, "training checkpoint", checked=True) as f:
            torch.save({"w": torch.zeros(10_000)}, f)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_at_fsync_removes_the_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full)
    with pytest.raises(StorageError, match="no space left"):
        storage.write_bytes(target, b"data", "a file")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_and_still_remove_the_partial_file(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(ValueError, match="boom"):
        with storage.atomic_file(target, "a file") as f:
            f.write(b"partial")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_storage_error_reads_safetensors_and_torch_messages(tmp_path):
    st = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    torch_err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 92160 vs 92048")
    assert "no space left" in str(storage.storage_error(st, tmp_path / "model.safetensors", "weights"))
    assert "no space left" in str(storage.storage_error(torch_err, tmp_path / "c.pt", "checkpoint"))
    ro = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "f"))
    assert str(storage.storage_error(ro)).startswith(f"cannot write {tmp_path / 'f'}: read-only file system")
    assert storage.storage_error(RuntimeError("something else"), tmp_path) is None
    assert storage.storage_error(OSError(errno.ENOENT, "missing"), tmp_path) is None


# -- checked files ------------------------------------------------------------


def _checked(tmp_path, data=b"0123456789" * 100):
    path = tmp_path / "cache.bin"
    storage.write_bytes(path, data, "a cache", checked=True)
    return path


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "it has 100 bytes, 1000 were written"),
        (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), "does not match the sha256 recorded"),
        (lambda p: storage.sidecar(p).unlink(), "no sha256 was recorded"),
        (lambda p: storage.sidecar(p).write_text("{"), "unreadable"),
    ],
)
def test_a_damaged_checked_file_is_reported_in_one_line_and_discarded(tmp_path, capsys, damage, why):
    path = _checked(tmp_path)
    assert storage.problem(path) is None
    damage(path)
    assert storage.load_checked(path, "a cache", lambda p: p.read_bytes(), "rebuilding it") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err
    assert err.startswith(f"warning: {path}: a cache discarded, ") and err.rstrip().endswith("; rebuilding it")
    assert list(tmp_path.iterdir()) == []


def test_a_checked_file_that_does_not_load_is_discarded(tmp_path, capsys):
    path = _checked(tmp_path)

    def load(p):
        raise RuntimeError("PytorchStreamReader failed reading zip archive:\nfailed finding central directory")

    assert storage.load_checked(path, "a checkpoint", load, "starting over") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not load (PytorchStreamReader failed" in err
    assert not path.exists()


def test_a_good_checked_file_loads_and_an_absent_one_is_none(tmp_path, capsys):
    path = _checked(tmp_path)
    assert storage.load_checked(path, "a cache", lambda p: p.read_bytes(), "x") == b"0123456789" * 100
    assert storage.load_checked(tmp_path / "nope", "a cache", lambda p: p.read_bytes(), "x") is None
    assert capsys.readouterr().err == ""


def test_only_the_owner_reports_and_removes(tmp_path, capsys):
    path = _checked(tmp_path)
    path.write_bytes(b"short")
    assert storage.load_checked(path, "a cache", lambda p: p.read_bytes(), "x", owner=False) is None
    assert capsys.readouterr().err == "" and path.exists()


# -- byte-reproducible safetensors --------------------------------------------

TENSORS = {
    "b": torch.arange(15, dtype=torch.float64).reshape(3, 5),
    "a": torch.arange(7, dtype=torch.int32),
    "c": torch.tensor(True),
    "d": torch.linspace(0, 1, 4).to(torch.bfloat16),
    "e": torch.zeros(0, 3),
}
META = {f"k{i}": str(i) for i in range(8)}  # eight keys: a hash map's order would almost never repeat


def test_write_safetensors_reads_back_with_the_safetensors_library(tmp_path):
    path = tmp_path / "t.safetensors"
    storage.write_safetensors(path, TENSORS, META, "tensors")
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == META
        for k, want in TENSORS.items():
            got = f.get_tensor(k)
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), k


_WRITE = """
import sys, torch
from factory.pruning.importance import Importance
t = lambda *s: torch.arange(int(torch.tensor(s).prod()), dtype=torch.float64).reshape(*s)
imp = Importance(ffn_sum=t(2, 8), ffn_sumsq=t(2, 8), heads_sum=t(2, 4), heads_sumsq=t(2, 4),
                 hidden_sum=t(5, 6), hidden_sumsq=t(5, 6), bi_sum=t(2), tokens=640, samples=10)
imp.save(sys.argv[1], {f"k{i}": str(i) for i in range(6)} | {"aggregation": "l2"})
"""


def test_importance_files_are_byte_identical_across_processes(tmp_path):
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for p in paths:  # fresh processes: the hash maps' seeds differ
        subprocess.run([sys.executable, "-c", _WRITE, str(p)], check=True, cwd=ROOT)
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    header = json.loads(paths[0].read_bytes()[8 : 8 + int.from_bytes(paths[0].read_bytes()[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
