"""Suites: which tasks to run, with which options, engine and sampling.

A suite is YAML::

    name: quick
    description: small subsets, minutes on a CPU
    engine: hf                      # hf | vllm | openai | auto (the CLI may override)
    engine_settings:                # per engine: used when that engine runs
      hf: {max_batch: 8}
    sampling: {max_tokens: 256}     # defaults for every task (evals.api.Sampling keys)
    tasks:
      - {task: gsm8k, limit: 30}
      - {task: gsm8k, shots: 8, limit: 30}        # named gsm8k_8shot
      - {task: bfcl, category: simple, limit: 20} # named bfcl_simple
      - {task: harness, tasks: [arc_easy], limit: 100, name: arc_easy}

Keys of a task entry other than ``task``, ``name``, ``limit`` and ``sampling``
are the task's own options (its constructor's parameters). Sampling keys given
in the YAML override what the task asks for; keys not given are left to the task.
Every error is one line naming the file and the key."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evals.api import Sampling
from evals.engines import ENGINES, check_engine_settings
from evals.engines.choice import AUTO
from evals.tasks import get_task, task_class, task_names
from foundation.configs import coerce
from foundation.errors import ConfigError, FactoryError
from foundation.hashing import sha256_json

SUITES_DIR = Path(__file__).resolve().parent / "suites"
_SUITE_KEYS = ("name", "description", "engine", "engine_settings", "sampling", "tasks")
_ENTRY_KEYS = ("task", "name", "limit", "sampling")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class TaskEntry:
    name: str  # unique within the suite; the key in results.json
    task: str  # registry name (evals.tasks)
    options: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # explicit overrides only


@dataclass
class Suite:
    name: str
    description: str
    engine: str
    engine_settings: dict[str, dict]
    sampling: dict[str, Any]
    entries: list[TaskEntry]
    file: str

    @property
    def hash(self) -> str:
        body = dataclasses.asdict(self)
        body.pop("file")
        return sha256_json(body)

    def settings_for(self, engine: str) -> dict:
        return dict(self.engine_settings.get(engine, {}))

    def select(self, names: list[str]) -> Suite:
        """The suite with only the entries named (in the suite's order); an unknown name is an error."""
        known = [e.name for e in self.entries]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FactoryError(
                f"{self.file}: no task named {unknown[0]!r} in suite {self.name} (its tasks: {', '.join(known)})"
            )
        return dataclasses.replace(self, entries=[e for e in self.entries if e.name in names])

    def sampling_for(self, entry: TaskEntry, overrides: dict | None = None) -> dict:
        """Explicit sampling keys: suite defaults < entry < caller's overrides."""
        return {**self.sampling, **entry.sampling, **(overrides or {})}


def shipped() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def is_file_ref(ref: str) -> bool:
    """A suite reference names a file (else a shipped suite)."""
    return ref.endswith((".yaml", ".yml")) or "/" in ref


def suite_path(ref: str, base: Path | None = None) -> Path:
    """A shipped suite's name, or a YAML file (relative paths against ``base``)."""
    if not is_file_ref(ref):
        if ref in shipped():
            return SUITES_DIR / f"{ref}.yaml"
        raise FactoryError(f"unknown suite {ref!r} (shipped: {', '.join(shipped())}; or give a YAML file)")
    path = Path(ref)
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    if not path.is_file():
        raise FactoryError(f"{path}: no such suite file")
    return path


def load_suite(ref: str, base: Path | None = None) -> Suite:
    path = suite_path(ref, base)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FactoryError(f"{path}{line}: YAML syntax error: {problem}") from None
    return parse_suite(data, str(path))


def parse_suite(data: Any, file: str) -> Suite:
    """Validate plain data as a suite; errors name ``file`` and the key."""
    try:
        return _parse(data, file)
    except ConfigError as e:
        raise e.in_file(file) from None


def _parse(data: Any, file: str) -> Suite:
    if not isinstance(data, dict):
        raise ConfigError("", "a suite must be a mapping with name and tasks")
    for key in data:
        if key not in _SUITE_KEYS:
            raise ConfigError(str(key), f"unknown key (known keys: {', '.join(_SUITE_KEYS)})")
    for key in ("name", "tasks"):
        if key not in data:
            raise ConfigError(key, "missing required key")
    name = coerce(str, data["name"], "name")
    engine = coerce(str, data.get("engine", "hf"), "engine")
    if engine not in (*ENGINES, AUTO):
        raise ConfigError("engine", f"unknown engine {engine!r} (known: {', '.join(ENGINES)}, {AUTO})")
    settings = coerce(dict[str, dict[str, Any]], data.get("engine_settings") or {}, "engine_settings")
    for key in settings:
        if key not in ENGINES:
            raise ConfigError(f"engine_settings.{key}", f"unknown engine (known: {', '.join(ENGINES)})")
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError("tasks", "expected a non-empty list of task entries")
    entries: list[TaskEntry] = []
    for i, raw in enumerate(tasks):
        entry = parse_entry(raw, f"tasks[{i}]")
        clash = next((j for j, e in enumerate(entries) if e.name == entry.name), None)
        if clash is not None:
            raise ConfigError(
                f"tasks[{i}].name",
                f"{entry.name!r} is already the name of tasks[{clash}]; give one of them a distinct `name`",
            )
        entries.append(entry)
    return Suite(
        name=name,
        description=coerce(str, data.get("description", ""), "description"),
        engine=engine,
        engine_settings=settings,
        sampling=parse_sampling(data.get("sampling") or {}, "sampling"),
        entries=entries,
        file=file,
    )


def check_suite(suite: Suite) -> None:
    """What running ``suite`` would reject about its own settings, found without
    loading data or a model: every engine's settings (names and values, see
    evals.engines.check_engine_settings) and every task's options (the task's own
    checks, by building it). A one-line ConfigError naming the file and the key."""
    try:
        for engine, settings in suite.engine_settings.items():
            try:
                check_engine_settings(engine, settings)
            except ConfigError as e:
                key = f"engine_settings.{engine}" + (f".{e.where}" if e.where else "")
                raise ConfigError(key, e.message) from None
        for i, entry in enumerate(suite.entries):
            try:
                get_task(entry.task, **entry.options)
            except FactoryError as e:
                raise ConfigError(f"tasks[{i}]", str(e)) from None
    except ConfigError as e:
        raise e.in_file(suite.file) from None


def parse_sampling(data: Any, where: str) -> dict[str, Any]:
    """Explicit evals.api.Sampling keys, type-checked."""
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping of Sampling keys, got {type(data).__name__}")
    hints = typing.get_type_hints(Sampling)
    out = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"{where}.{key}", f"unknown sampling key (known: {', '.join(hints)})")
        out[key] = coerce(hints[key], value, f"{where}.{key}")
        bad = _SAMPLING_RANGES.get(key)
        if bad is not None and out[key] is not None and not bad[0](out[key]):
            raise ConfigError(f"{where}.{key}", f"{bad[1]}, got {out[key]!r}")
    return out


_SAMPLING_RANGES = {
    "max_tokens": (lambda v: v >= 1, "must be at least 1"),
    "n": (lambda v: v >= 1, "must be at least 1"),
    "temperature": (lambda v: v >= 0, "must be >= 0 (0 is greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "seed": (lambda v: v >= 0, "must be >= 0"),
}


def parse_key_values(items: list[str], where: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings from a command line, values read as YAML scalars
    (``stop=["\\n"]`` is a list, ``n=4`` an int, ``dtype=bfloat16`` a string)."""
    data = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(where, f"expected KEY=VALUE, got {item!r}")
        try:
            data[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"{where}.{key}", f"cannot read {text!r}") from None
    return data


def parse_overrides(items: list[str], where: str = "--sampling") -> dict[str, Any]:
    """``--sampling KEY=VALUE`` strings as checked Sampling keys."""
    return parse_sampling(parse_key_values(items, where), where)


def parse_entry(raw: Any, where: str) -> TaskEntry:
    if not isinstance(raw, dict):
        raise ConfigError(where, "expected a mapping like {task: gsm8k, limit: 50}")
    if "task" not in raw:
        raise ConfigError(f"{where}.task", "missing required key")
    task = coerce(str, raw["task"], f"{where}.task")
    if task not in task_names():
        raise ConfigError(f"{where}.task", f"unknown task {task!r} (known: {', '.join(task_names())})")
    limit = coerce(int | None, raw.get("limit"), f"{where}.limit")
    if limit is not None and limit <= 0:
        raise ConfigError(f"{where}.limit", "must be positive")
    sampling = parse_sampling(raw.get("sampling") or {}, f"{where}.sampling")
    options = {k: v for k, v in raw.items() if k not in _ENTRY_KEYS}
    _check_options(task_class(task), task, options, where)
    name = raw.get("name")
    if name is None:
        name = default_name(task, options)
    name = coerce(str, name, f"{where}.name")
    if not _NAME.match(name):
        raise ConfigError(f"{where}.name", f"{name!r}: use letters, digits, '.', '_', '+', '-'")
    return TaskEntry(name=name, task=task, options=options, limit=limit, sampling=sampling)


def _check_options(cls, task: str, options: dict, where: str) -> None:
    """Options are the task's constructor parameters, of their annotated types."""
    params = {
        k: p for k, p in inspect.signature(cls).parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: no type check, the task checks itself
        hints = {}
    for key, value in options.items():
        if key not in params:
            known = ", ".join(list(_ENTRY_KEYS) + list(params))
            raise ConfigError(f"{where}.{key}", f"unknown option for task {task} (known: {known})")
        if key in hints:
            try:
                options[key] = coerce(hints[key], value, f"{where}.{key}")
            except TypeError:  # a type the config layer does not model: leave it to the task
                pass


def default_name(task: str, options: dict) -> str:
    """``task`` plus every option the entry sets: gsm8k + {shots: 8} -> gsm8k_8shot,
    bfcl + {category: simple} -> bfcl_simple; a ``tasks`` list (lm-eval harness)
    names the entry by its tasks: {tasks: [arc_easy]} -> arc_easy."""
    base, parts = task, []
    for key, value in options.items():
        if key == "tasks":
            base = "+".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        elif key in ("shots", "num_fewshot"):
            parts.append(f"{value}shot")
        elif isinstance(value, bool):
            parts.append(key if value else f"no_{key}")
        elif isinstance(value, str):
            parts.append(value)
        else:
            parts.append(f"{key}{value}")
    return re.sub(r"[^A-Za-z0-9._+-]", "-", "_".join([base] + parts))
