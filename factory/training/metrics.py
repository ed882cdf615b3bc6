"""Metrics rows as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Append-only JSONL of metrics rows, truncatable to a step on resume."""

    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def _writer() -> bool:
        from factory.training.dist import is_main

        return is_main()  # under torchrun only rank 0 writes

    def write(self, row: dict) -> None:
        if not self._writer():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they will be logged again on resume)."""
        if not self._writer() or not self.path.exists():
            return
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
