"""The ``data: {blend: [[weight, corpus], ...]}`` form of a training stage's data:
several tokenized corpora sampled in proportion to their weights."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from foundation.configs import field
from foundation.errors import ConfigError


@dataclass
class Blend:
    """A weighted blend of tokenized corpora, each a ``tokenize`` stage or a datasets:
    entry that points at one. ``corpora`` (the names, derived) are the references
    the recipe resolves and the pipeline waits for; the weights are hashed with the config."""

    blend: Any = field(None, help="[[weight, corpus], ...]: positive finite weights (normalised), corpus names")
    corpora: list[str] = dataclasses.field(
        init=False, default_factory=list, metadata={"ref": "dataset", "help": "the blend's corpus names (derived)"}
    )

    def __post_init__(self):
        entries = self.blend if isinstance(self.blend, list) else []
        self.corpora = [e[1] for e in entries if isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[1], str)]

    def weights(self) -> list[float]:
        return [float(w) for w, _ in self.blend]

    def validate(self, where: str) -> None:
        """One line per problem: at least one corpus; each entry ``[weight, name]``;
        each weight positive and finite, so the weights sum to a positive number.
        (Not named ``check``: the stage's own check calls it, so its message is not
        masked by the ``str | Blend`` union's generic one.)"""
        if not isinstance(self.blend, list) or not self.blend:
            raise ConfigError(f"{where}.blend", "a blend needs at least one [weight, corpus] entry")
        for i, entry in enumerate(self.blend):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str)):
                raise ConfigError(f"{where}.blend[{i}]", f"expected [weight, corpus name], got {entry!r}")
            w = entry[0]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
                raise ConfigError(
                    f"{where}.blend[{i}]",
                    f"weight {w!r} must be a positive finite number (the weights must sum to a positive number)",
                )
        names = [e[1] for e in self.blend]
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise ConfigError(f"{where}.blend", f"{dup!r} is listed twice")


def check_data(data: Any, where: str) -> None:
    """A training stage's ``data``: a dataset name, or a blend checked as :meth:`Blend.validate` says."""
    if isinstance(data, Blend):
        data.validate(f"{where}.data")
