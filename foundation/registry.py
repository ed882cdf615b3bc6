"""Name -> implementation registries, one style for the factory's stage kinds and
the eval suite's engines and tasks: an implementation registers itself with a
decorator where it is defined, ``get(name)`` looks it up, and an unknown name is a
one-line error listing the known ones.

A registry also knows, for each built-in name, the module that defines it, and
imports that module only when the name is first asked for: a suite that does
not use BFCL never imports its task, a run on the hf engine never imports the
vLLM one."""

from __future__ import annotations

import importlib

from foundation.errors import FactoryError


class Registry:
    """Implementations (classes, or what a caller wraps them in) by name, filled by
    ``register`` as their modules are imported.

    ``builtin`` maps each built-in name to its module under ``package``;
    ``classes`` holds what has been registered so far (a caller or a test may add to it)."""

    def __init__(self, kind: str, package: str, builtin: dict[str, str]):
        self.kind, self.package, self.builtin = kind, package, dict(builtin)
        self.classes: dict[str, type] = {}

    def register(self, name: str):
        """Decorator: register the class as ``name``."""

        def wrap(cls):
            self.classes[name] = cls
            return cls

        return wrap

    def names(self) -> list[str]:
        """Every name ``get`` knows, sorted."""
        return sorted({*self.builtin, *self.classes})

    def get(self, name: str) -> type:
        """The class registered as ``name``, importing its built-in module if need be."""
        if name not in self.classes and name in self.builtin:
            importlib.import_module(f"{self.package}.{self.builtin[name]}")  # its import registers it
        if name not in self.classes:
            raise FactoryError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self.classes[name]

    def all(self) -> dict[str, type]:
        """Every class by name (built-in modules imported): the built-in ones in
        their listed order, then any other registered."""
        found = {name: self.get(name) for name in self.builtin}
        return {**found, **{k: v for k, v in self.classes.items() if k not in found}}
