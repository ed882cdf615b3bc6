"""Task registry. A task class registers itself where it is defined, with
``@register("gsm8k")``; ``BUILTIN`` names the module of each shipped task, imported
only when that task is asked for, so a suite that does not use BFCL never touches
its data. ``get_task(name, **options)`` builds one; options come from the suite
YAML (e.g. ``{task: gsm8k, shots: 8}``) and unknown ones are a one-line error.
Adding a task: write its class in a module here, decorate it, and add its name
to ``BUILTIN``."""

from __future__ import annotations

import inspect

from foundation.errors import FactoryError
from foundation.registry import Registry

BUILTIN: dict[str, str] = {  # task name -> module of evals.tasks that registers it
    "ifeval": "ifeval",
    "gsm8k": "math",
    "math500": "math",
    "humaneval": "code",
    "mbpp": "code",
    "bfcl": "bfcl",
    "harness": "harness",
}

_REGISTRY = Registry("task", __name__, BUILTIN)
TASKS: dict[str, type] = _REGISTRY.classes  # the tasks registered so far, by name
register = _REGISTRY.register


def task_names() -> list[str]:
    """Every task a suite may name, sorted."""
    return _REGISTRY.names()


def task_class(name: str):
    """The class of task ``name``; an unknown name is a one-line error listing the known ones."""
    return _REGISTRY.get(name)


def task_classes() -> dict[str, type]:
    """Every task class by name (imports every task module)."""
    return _REGISTRY.all()


def get_task(name: str, where: str = "", **options):
    cls = task_class(name)
    params = inspect.signature(cls).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        prefix = f"{where}: " if where else ""
        raise FactoryError(
            f"{prefix}task {name}: unknown option {unknown[0]!r} (known: {', '.join(p for p in params) or 'none'})"
        )
    return cls(**options)
