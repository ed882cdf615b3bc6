"""Task registry. A task name maps to ``module:Class``; modules are imported
only when a task is asked for, so a suite that does not use BFCL never touches
its data. ``get_task(name, **options)`` builds one; options come from the suite
YAML (e.g. ``{task: gsm8k, shots: 8}``) and unknown ones are a one-line error."""

from __future__ import annotations

import importlib
import inspect

from foundation.errors import FactoryError

TASKS: dict[str, str] = {
    "ifeval": "evals.tasks.ifeval:IFEval",
    "gsm8k": "evals.tasks.math:GSM8K",
    "math500": "evals.tasks.math:Math500",
    "humaneval": "evals.tasks.code:HumanEval",
    "mbpp": "evals.tasks.code:MBPP",
    "bfcl": "evals.tasks.bfcl:BFCL",
    "harness": "evals.tasks.harness:HarnessTask",
}


def task_class(name: str):
    if name not in TASKS:
        raise FactoryError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_task(name: str, where: str = "", **options):
    cls = task_class(name)
    params = inspect.signature(cls).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        prefix = f"{where}: " if where else ""
        raise FactoryError(f"{prefix}task {name}: unknown option {unknown[0]!r} "
                           f"(known: {', '.join(p for p in params) or 'none'})")
    return cls(**options)
