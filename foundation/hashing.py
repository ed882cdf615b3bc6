"""Content hashes: files, directories and canonical JSON."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hash of ``obj`` as canonical JSON (sorted keys, no whitespace)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()


def list_files(root: str | os.PathLike, exclude: tuple[str, ...] = ()) -> list[str]:
    """Relative POSIX paths of all regular files below ``root``, sorted."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in exclude:
                out.append(rel)
    return sorted(out)


def hash_tree(root: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> sha256 for every file below ``root``."""
    return {rel: sha256_file(Path(root) / rel) for rel in list_files(root, exclude)}


def source_digests(root: str | os.PathLike, parts: tuple[str, ...] = (".",)) -> dict[str, str]:
    """Relative path -> sha256 of the source files under ``root`` that ``parts`` name
    (files or folders; "." is all of ``root``), compiled caches (__pycache__) left out.
    What a cache key of "the code this result depends on" hashes."""
    root = Path(root)
    out = {}
    for part in parts:
        if (root / part).is_dir():
            prefix = "" if part == "." else f"{part}/"
            out.update(
                {prefix + rel: digest for rel, digest in hash_tree(root / part).items() if "__pycache__" not in rel}
            )
        else:
            out[part] = sha256_file(root / part)
    return out
