"""Safe writes and checked reads of the files the pipeline keeps on disk.

A write goes to a temporary file beside its target, is flushed to the disk and
then renamed over the target, so a reader sees the old file or the new one and
never half of one. When the disk is full, the quota is spent, the permission is
missing or the file system is read-only, the write fails with one line naming
the file, what it holds and the space left, and the temporary file is removed.

Files the pipeline reads back outside an artifact (importance caches, mid-stage
checkpoints) are *checked*: the sha256 of their bytes is recorded at write in a
sidecar ``<name>.sha256`` written after them, and ``problem`` compares it at read.
A file that does not match is reported, discarded and rebuilt by its caller.

``write_safetensors`` writes safetensors files whose bytes depend only on their
tensors and metadata (the safetensors library orders metadata keys differently
in every process)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from foundation.errors import FactoryError
from foundation.hashing import sha256_file

SIDECAR = ".sha256"  # suffix of the file that records a checked file's sha256

_REASONS = {
    errno.ENOSPC: ("no space left on device", "free some space and rerun the same command to resume"),
    errno.EDQUOT: ("disk quota exceeded", "free some space and rerun the same command to resume"),
    errno.EACCES: ("permission denied", "make it writable and rerun the same command to resume"),
    errno.EPERM: ("permission denied", "make it writable and rerun the same command to resume"),
    errno.EROFS: ("read-only file system", "remount it writable or use another --runs-dir, then rerun"),
}


class StorageError(FactoryError):
    """A file could not be written: out of space, over quota, permission denied or read-only."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.errno = code  # what the operating system said, for a caller that names the file better


def _errno_of(err: BaseException) -> int | None:
    """The storage errno behind ``err``: an OSError's own, the "os error N" a safetensors
    error quotes, or ENOSPC for torch's "unexpected pos" when the disk has no room left."""
    if isinstance(err, (OSError, StorageError)):
        return err.errno
    text = str(err)
    m = re.search(r"os error (\d+)", text)
    if m:
        return int(m.group(1))
    if "unexpected pos" in text or "file write failed" in text:
        return errno.ENOSPC
    return None


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (what ``disk_usage`` can measure)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def storage_error(err: BaseException, path: str | os.PathLike | None = None, what: str = "") -> StorageError | None:
    """``err`` as a one-line StorageError naming ``path`` (or the file the OSError names),
    ``what`` was being written and the free space there; None when ``err`` is not a storage
    failure. Without ``what`` a permission error may have come from a read: "cannot access"."""
    code = _errno_of(err)
    if code not in _REASONS:
        return None
    if path is None:
        path = getattr(err, "filename", None)
    reason, fix = _REASONS[code]
    where = f"{what} {path}" if what and path else (str(path) if path else what or "a file")
    verb = "access" if not what and code in (errno.EACCES, errno.EPERM) else "write"
    return StorageError(f"cannot {verb} {where}: {reason}{_free(path) if path else ''}; {fix}", code)


def _free(path) -> str:
    """ " (N free there)" for the file system holding ``path``, or that its inodes ran out."""
    try:
        where = _existing(Path(path))
        st = os.statvfs(where)
        if st.f_files and not st.f_favail:
            return " (no free inodes left there)"
        return f" ({_size(shutil.disk_usage(where).free)} free there)"
    except OSError:
        return ""


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _HashingWriter:
    """A binary file that hashes what is written to it and keeps the first OSError a write
    raised (libraries that write through it, torch among them, replace it with their own)."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            n = self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha256.update(data)
        return n

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fail(err: BaseException, tmp: Path, path: Path, what: str, recorded: OSError | None = None):
    """Remove the partial ``tmp``; raise ``err`` as a StorageError when it is one (the space
    it quotes is measured first: what the write found)."""
    mapped = None if isinstance(err, StorageError) else storage_error(recorded or err, path, what)
    _remove(tmp)
    if mapped is not None:
        raise mapped from err
    raise err


def _commit(tmp: Path, path: Path, digest: str | None, what: str, record_first: bool) -> None:
    """Rename the synced ``tmp`` to ``path``; with a ``digest`` (a checked file), record it.

    By default the record follows the file: the old record goes before the rename, so a kill
    between rename and record leaves a file without a record (not trusted) rather than one
    with a stale record, and a new file whose record cannot be written is removed. With
    ``record_first`` the record is written beside its name before either rename: a file that
    appears under ``path`` has its record already, and a full disk leaves the old pair intact."""
    if digest is not None and record_first:
        _record_then_rename(tmp, path, digest, what)
        return
    if digest is not None:
        _remove(sidecar(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if digest is not None:
        try:
            record_sha256(path, digest)
        except StorageError as e:
            mapped = storage_error(e, path, what)  # named after the file, measured before it goes
            _remove(path)
            raise mapped from e
        except BaseException:
            _remove(path)
            raise


def _record_then_rename(tmp: Path, path: Path, digest: str, what: str) -> None:
    record = _temp_beside(sidecar(path))
    try:
        with open(record, "w") as f:
            f.write(_record_body(digest, tmp.stat().st_size))
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:  # noqa: BLE001 (the partial record goes whatever stopped the write)
        mapped = storage_error(e, path, what)
        _remove(record)
        if mapped is not None:
            raise mapped from e
        raise
    os.replace(record, sidecar(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def atomic_path(
    path: str | os.PathLike, what: str, checked: bool = False, record_first: bool = False
) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name; once the block
    ends it is synced and renamed to ``path`` (and its sha256 recorded when ``checked``, after
    it or, with ``record_first``, before: see ``_commit``). On failure the temporary file is
    removed and storage failures become a StorageError."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _commit(tmp, path, sha256_file(tmp) if checked else None, what, record_first)
    except BaseException as e:  # noqa: BLE001 (the partial file goes whatever stopped the write)
        _fail(e, tmp, path, what)


@contextmanager
def atomic_file(path: str | os.PathLike, what: str, checked: bool = False, record_first: bool = False) -> Iterator:
    """A binary file object beside ``path``, as ``atomic_path`` (hashed as it is written,
    so a checked file is not read twice)."""
    path = Path(path)
    tmp = _temp_beside(path)
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            yield writer
            writer.flush()
            os.fsync(f.fileno())
        _commit(tmp, path, writer.sha256.hexdigest() if checked else None, what, record_first)
    except BaseException as e:  # noqa: BLE001 (the partial file goes whatever stopped the write)
        _fail(e, tmp, path, what, writer.error if writer is not None else None)


def write_bytes(
    path: str | os.PathLike, data: bytes, what: str, checked: bool = False, record_first: bool = False
) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_file``)."""
    with atomic_file(path, what, checked, record_first) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, what: str, checked: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_file``)."""
    write_bytes(path, text.encode(), what, checked)


# -- checked files -----------------------------------------------------------


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``dst`` as a hard link to ``src`` (no second copy of a large file), a copy where the
    file system refuses links (another device, no link support)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sidecar(path: str | os.PathLike) -> Path:
    """Where the sha256 of the checked file ``path`` is recorded."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR)


def _record_body(digest: str, size: int) -> str:
    return json.dumps({"sha256": digest, "bytes": size}, sort_keys=True) + "\n"


def record_sha256(path: str | os.PathLike, digest: str) -> None:
    """Record ``digest`` as the sha256 of ``path`` (written after the file itself)."""
    write_text(sidecar(path), _record_body(digest, Path(path).stat().st_size), "sha256 record")


def _record(path: Path) -> tuple[dict | None, str | None]:
    """(the sha256 record of ``path``, None) or (None, why it cannot be used)."""
    try:
        saved = json.loads(sidecar(path).read_text())
        record = {"sha256": saved["sha256"], "bytes": saved["bytes"]}
    except FileNotFoundError:
        return None, "no sha256 was recorded for it (its write did not finish)"
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"its sha256 record {sidecar(path).name} is unreadable"
    return record, None


def _size_problem(path: Path, record: dict) -> str | None:
    if path.stat().st_size != record["bytes"]:
        return f"it has {path.stat().st_size} bytes, {record['bytes']} were written"
    return None


def quick_problem(path: str | os.PathLike) -> str | None:
    """``problem`` without reading the file: its record and its size only (a plan looks
    at checkpoints of many GB; the full check runs when the file is read)."""
    path = Path(path)
    record, why = _record(path)
    return why if record is None else _size_problem(path, record)


def problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the checked file ``path``, or None when it matches the sha256
    recorded when it was written (``path`` itself must exist)."""
    path = Path(path)
    record, why = _record(path)
    if record is None:
        return why
    try:
        if (why := _size_problem(path, record)) is not None:
            return why
        if sha256_file(path) != record["sha256"]:
            return "it does not match the sha256 recorded when it was written"
    except OSError as e:
        return f"it cannot be read ({e.strerror})"
    return None


def discard(path: str | os.PathLike) -> None:
    """Remove a checked file and its sha256 record."""
    _remove(Path(path))
    _remove(sidecar(path))


def warn(path: str | os.PathLike, what: str, why: str, then: str) -> None:
    """One stderr line: the checked file ``path`` (a ``what``) is not used because ``why``; ``then``."""
    print(f"warning: {path}: {what} discarded, {why}; {then}", file=sys.stderr)


def load_checked(path: str | os.PathLike, what: str, load: Callable[[Path], object], then: str, owner: bool = True):
    """``load(path)`` when ``path`` exists and matches its recorded sha256 (and loads);
    None when it is absent. A corrupted one is reported in one line (``then``: what happens
    instead), removed with its record, and None returned. Of several processes that read
    one file, only the ``owner`` reports and removes it."""
    path = Path(path)
    if not path.exists():
        return None
    why = problem(path)
    if why is None:
        try:
            return load(path)
        except Exception as e:  # noqa: BLE001 (any failure to load a matching file is the same fault)
            why = f"it does not load ({' '.join(str(e).split())[:200]})"
    if owner:
        warn(path, what, why, then)
        discard(path)
    return None


# -- deterministic safetensors ------------------------------------------------

_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def write_safetensors(
    path: str | os.PathLike, tensors: dict, metadata: dict[str, str], what: str, checked: bool = False
) -> None:
    """Write ``tensors`` (name -> CPU torch tensor) and string ``metadata`` to ``path`` in the
    safetensors format, atomically, with every key sorted: the same tensors and metadata give
    the same bytes in every process."""
    import torch  # heavy: only writers of tensors need it

    header: dict = {"__metadata__": {k: str(metadata[k]) for k in sorted(metadata)}} if metadata else {}
    blobs, offset = [], 0
    # widest dtype first, then by name (as the safetensors library lays them out): every tensor stays aligned
    for name in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        t = tensors[name].detach().contiguous().cpu()
        dtype = _DTYPES[str(t.dtype).removeprefix("torch.")]
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()  # little-endian, as the format wants
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as the format advises
    with atomic_file(path, what, checked) as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for data in blobs:
            f.write(data)
