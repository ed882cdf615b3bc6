"""Artifacts: an HF checkpoint directory plus ``manifest.json``.

The manifest is written last, inside a temporary directory that is then
renamed into place, so a directory with a manifest is always complete. Its
``hash`` covers the content of every file except the metrics log (which holds
timings), so identical results give identical hashes."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import foundation
from foundation import storage
from foundation.errors import ArtifactError
from foundation.hashing import hash_tree, list_files, sha256_file, sha256_json

MANIFEST = "manifest.json"
FORMAT = 1
VOLATILE = ("metrics.jsonl",)  # excluded from the content hash


def versions() -> dict[str, str]:
    import torch  # heavy, and only a manifest writer needs it
    import transformers  # likewise

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "factory": foundation.__version__,
    }


def content_hash(files: dict[str, str]) -> str:
    return sha256_json({k: v for k, v in files.items() if k not in VOLATILE})


def write_manifest(out_dir: Path, body: dict) -> dict:
    """Hash every file in ``out_dir`` and write the manifest; returns it."""
    files = hash_tree(out_dir, exclude=(MANIFEST,))
    manifest = {
        "format": FORMAT,
        **body,
        "files": files,
        "hash": content_hash(files),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    storage.write_text(
        out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n", "the artifact manifest"
    )
    return manifest


def read_manifest(artifact_dir: Path) -> dict | None:
    """The manifest, or None if the directory holds no complete artifact."""
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: unreadable manifest ({e.msg}, line {e.lineno})") from e
    for key in ("kind", "config_hash", "inputs", "files", "hash"):
        if key not in manifest:
            raise ArtifactError(f"{path}: manifest lacks {key!r}")
    return manifest


@dataclass
class Verification:
    ok: bool
    problem: str = ""


_verified: dict[tuple[str, float], Verification] = {}


def verify(artifact_dir: Path, manifest: dict) -> Verification:
    """Check every file against the manifest's sha256 (memoised per process)."""
    artifact_dir = Path(artifact_dir)
    key = (str(artifact_dir.resolve()), (artifact_dir / MANIFEST).stat().st_mtime)
    if key in _verified:
        return _verified[key]
    result = Verification(True)
    for rel, want in manifest["files"].items():
        path = artifact_dir / rel
        if not path.is_file():
            result = Verification(False, f"{rel} is missing")
            break
        if sha256_file(path) != want:
            result = Verification(False, f"{rel} does not match its sha256 in the manifest")
            break
    if result.ok:
        present = set(list_files(artifact_dir)) - {MANIFEST}
        extra = sorted(present - set(manifest["files"]))
        if extra:
            result = Verification(False, f"{extra[0]} is not listed in the manifest")
    _verified[key] = result
    return result


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an older ``dst`` with as short a gap as renames allow."""
    trash = None
    if dst.exists():
        trash = dst.with_name(f".trash-{dst.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(dst, trash)
    os.replace(src, dst)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def sweep_trash(parent: Path) -> list[str]:
    """Remove what a kill between ``replace_dir``'s two renames left in ``parent`` (the
    old copy, renamed aside); the caller holds the lock that makes it no one's. Returns
    the names removed."""
    removed = []
    for trash in sorted(Path(parent).glob(".trash-*")):
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(trash.name)
    return removed
