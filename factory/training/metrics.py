"""Metrics rows as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from factory.training.dist import is_main
from foundation.errors import FactoryError

EVAL_PREFIX = "eval_"  # held-out metrics are logged as eval_<name>, next to the training rows' loss, lr, ...


class MetricsLog:
    """Append-only JSONL of metrics rows, truncatable to a step on resume."""

    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def _writer() -> bool:
        return is_main()  # under torchrun only rank 0 writes

    def write(self, row: dict) -> None:
        if not self._writer():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def write_evals(self, step: int, tokens: int, evals: dict) -> None:
        """One row of held-out metrics (``evals`` as an eval function returns them) at ``step``."""
        self.write({"step": step, "tokens": tokens, **{f"{EVAL_PREFIX}{k}": v for k, v in evals.items()}})

    def evals_at(self, step: int) -> dict:
        """The held-out metrics of the first eval row logged at ``step``, as ``write_evals`` got them."""
        for line in self.path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            evals = {k[len(EVAL_PREFIX) :]: v for k, v in row.items() if k.startswith(EVAL_PREFIX)}
            if row.get("step") == step and evals:
                return evals
        raise FactoryError(f"{self.path}: no held-out metrics logged at step {step}")

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they will be logged again on resume)."""
        if not self._writer() or not self.path.exists():
            return
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
