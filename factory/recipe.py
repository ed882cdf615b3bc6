"""Recipes: one YAML file describes a whole pipeline.

Loading validates everything before any work starts (keys, types, references,
cycles, files) and every error names the file and the YAML path."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from factory import engines
from factory.engines import ENGINES
from factory.shapes import first_model, stage_shapes  # noqa: F401 (first_model: part of the recipe API)
from factory.sources.datasets import DatasetSpec
from factory.sources.models import ModelSpec
from factory.stages.base import stage_kinds
from foundation.configs import build, coerce, hashed_dict, refs
from foundation.errors import ConfigError, FactoryError
from foundation.hashing import sha256_json

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOP_KEYS = ("name", "description", "engine", "engines", "nemo", "seed", "models", "datasets", "stages")


@dataclass
class Recipe:
    name: str
    engine: str
    seed: int
    description: str
    models: dict[str, ModelSpec]
    datasets: dict[str, DatasetSpec]
    stages: dict[str, Any]  # stage name -> typed config, in execution order
    file: Path
    raw: dict  # the resolved recipe as plain data
    stage_engines: dict[str, str] = field(default_factory=dict)  # stage -> engine (``engines:`` over ``engine:``)
    engine_settings: dict[str, Any] = field(default_factory=dict)  # engine -> its settings (``nemo:``)

    def engine_of(self, stage: str) -> str:
        return self.stage_engines.get(stage, self.engine)

    @property
    def base(self) -> Path:
        """Relative paths in the recipe resolve against the recipe's directory."""
        return self.file.parent

    def stage_inputs(self, stage: str) -> dict[str, tuple[str, str]]:
        """field -> (ref kind, name) for a stage."""
        return refs(self.stages[stage])

    def upstream(self, stage: str) -> list[str]:
        return [name for kind, name in self.stage_inputs(stage).values() if name in self.stages]

    def downstream(self, stage: str) -> list[str]:
        """Every stage that depends on ``stage``, directly or not."""
        out: list[str] = []
        for name in self.stages:
            if any(u == stage or u in out for u in self.upstream(name)):
                out.append(name)
        return out

    def config_hash(self, stage: str) -> str:
        cfg = self.stages[stage]
        return sha256_json(
            {"kind": cfg.kind, "engine": self.engine_of(stage), "seed": self.seed, "config": hashed_dict(cfg)}
        )


def _yaml_error(path: Path, err: Exception) -> FactoryError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is not None:
        return FactoryError(f"{path}:{mark.line + 1}: YAML syntax error: {problem}")
    return FactoryError(f"{path}: YAML syntax error: {problem}")


def parse_overrides(overrides: list[str]) -> list[str]:
    out = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key or not re.match(r"^[A-Za-z0-9_.\-\[\]]+$", key):
            raise FactoryError(f"bad override {item!r}: expected dotted.key=value")
        out.append(item)
    return out


def _load_conf(path: Path, chain: tuple[Path, ...]):
    """The recipe file as an OmegaConf mapping, merged over the recipe it ``extends``
    (mappings merge key by key, anything else is replaced)."""
    if not path.is_file():
        raise FactoryError(f"{path}: no such recipe file" + (f" (extended by {chain[-1]})" if chain else ""))
    try:
        conf = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from e
    except OmegaConfBaseException as e:
        raise FactoryError(f"{path}: {str(e).splitlines()[0]}") from e
    if not OmegaConf.is_dict(conf):
        raise FactoryError(f"{path}: a recipe must be a mapping at the top level")
    parent = conf.pop("extends", None)
    if parent is None:
        return conf
    if not isinstance(parent, str):
        raise ConfigError("extends", "expected the path of another recipe file", file=str(path))
    parent_path = (path.parent / parent).resolve()
    if parent_path in chain or parent_path == path.resolve():
        raise ConfigError("extends", f"{parent}: recipes extend each other in a cycle", file=str(path))
    return OmegaConf.merge(_load_conf(parent_path, (*chain, path.resolve())), conf)


def load_raw(path: str | Path, overrides: list[str] = ()) -> dict:
    """The recipe as plain data with overrides merged and interpolations resolved."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.y*ml"))
        hint = f" (YAML files in it: {', '.join(inside)})" if inside else ""
        raise FactoryError(f"{path}: is a directory, not a recipe file{hint}")
    conf = _load_conf(path, ())
    if overrides:
        try:
            conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(parse_overrides(list(overrides))))
        except (OmegaConfBaseException, TypeError, ValueError) as e:
            # e.g. a key that indexes into a list: OmegaConf raises a plain TypeError
            raise FactoryError(f"{path}: override: {str(e).splitlines()[0] or type(e).__name__}") from e
    try:
        return OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        raise ConfigError(str(key), f"cannot resolve interpolation: {str(e).splitlines()[0]}", file=str(path)) from e


def load_recipe(path: str | Path, overrides: list[str] = (), check_files: bool = True) -> Recipe:
    """Load and completely validate a recipe; raise ConfigError naming the YAML path."""
    path = Path(path)
    raw = load_raw(path, overrides)
    try:
        return _validate(raw, path, check_files)
    except ConfigError as e:
        if e.file is None:
            raise e.in_file(str(path)) from None
        raise


def _mapping(raw: dict, key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping of name -> entry, got {type(value).__name__}")
    for name in value:
        if not _NAME.match(str(name)):
            raise ConfigError(f"{key}.{name}", "names may hold letters, digits, '.', '_' and '-' only")
    return value


def _validate(raw: dict, path: Path, check_files: bool) -> Recipe:
    name, engine, seed, description = _top_level(raw)
    models = {n: build(ModelSpec, v, f"models.{n}") for n, v in _mapping(raw, "models").items()}
    datasets = {n: build(DatasetSpec, v, f"datasets.{n}") for n, v in _mapping(raw, "datasets").items()}
    stages = _stages(_mapping(raw, "stages"), models)
    _check_refs(stages, models, datasets)
    order = _topological(stages)
    if check_files:
        _check_files(models, datasets, stages, path.parent)
    ordered = {n: stages[n] for n in order}
    shapes = stage_shapes(ordered, models, path.parent)
    stage_engines = engines.parse_stage_engines(raw.get("engines"), order, engine)
    settings = engines.parse_settings(raw, order)
    engines.check(stage_engines, settings, ordered, models, shapes, path.parent)
    return Recipe(
        name=name,
        engine=engine,
        seed=seed,
        description=description,
        models=models,
        datasets=datasets,
        stages=ordered,
        file=path,
        raw=raw,
        stage_engines=stage_engines,
        engine_settings=settings,
    )


def _top_level(raw: dict) -> tuple[str, str, int, str]:
    """The recipe's known top-level keys checked, and its name, engine, seed and description."""
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(str(key), f"unknown key (known keys: {', '.join(_TOP_KEYS)})")
    if "name" not in raw:
        raise ConfigError("name", "missing required key")
    name = coerce(str, raw["name"], "name")
    if not _NAME.match(name):
        raise ConfigError("name", f"{name!r} is not a valid run name (letters, digits, '.', '_', '-')")
    engine = coerce(str, raw.get("engine", "native"), "engine")
    if engine not in ENGINES:
        raise ConfigError("engine", f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    seed = coerce(int, raw.get("seed", 0), "seed")
    description = coerce(str, raw.get("description", ""), "description")
    return name, engine, seed, description


def _stages(raw_stages: dict, models: dict) -> dict[str, Any]:
    """Each stage's config, built by its kind's config class, in the recipe's order."""
    if not raw_stages:
        raise ConfigError("stages", "a recipe needs at least one stage")
    kinds = stage_kinds()
    stages: dict[str, Any] = {}
    for sname, body in raw_stages.items():
        where = f"stages.{sname}"
        if sname in models:
            raise ConfigError(where, f"stage name clashes with models.{sname}")
        if not isinstance(body, dict):
            raise ConfigError(where, f"expected a mapping with a `kind`, got {type(body).__name__}")
        if "kind" not in body:
            raise ConfigError(f"{where}.kind", "missing required key")
        kind = body["kind"]
        if kind not in kinds:
            raise ConfigError(f"{where}.kind", f"unknown stage kind {kind!r} (known: {', '.join(sorted(kinds))})")
        stages[sname] = build(kinds[kind].config_cls, body, where)
    return stages


def _check_files(models: dict, datasets: dict, stages: dict, base: Path) -> None:
    """Check every file the recipe names (its models, datasets and stages), relative to the recipe's directory."""
    for n, m in models.items():
        m.check_files(f"models.{n}", base)
    for n, d in datasets.items():
        d.check_files(f"datasets.{n}", base)
    for n, s in stages.items():  # files a stage names itself, e.g. an evaluate stage's suite file
        getattr(s, "check_files", lambda *_: None)(f"stages.{n}", base)


def _check_refs(stages: dict, models: dict, datasets: dict) -> None:
    for sname, cfg in stages.items():
        for fname, (kind, target) in refs(cfg).items():
            where = f"stages.{sname}.{fname}"
            if kind == "model":
                if target == sname:
                    raise ConfigError(where, "a stage cannot take its own output as input")
                if target not in models and target not in stages:
                    known = ", ".join(list(models) + [s for s in stages if s != sname]) or "none"
                    raise ConfigError(where, f"{target!r} is neither a models: entry nor a stage (known: {known})")
            elif kind == "dataset":
                if target == sname:
                    raise ConfigError(where, "a stage cannot take its own output as input")
                if target not in datasets and target not in stages:
                    known = ", ".join(list(datasets) + [s for s in stages if s != sname]) or "none"
                    raise ConfigError(where, f"{target!r} is neither a datasets: entry nor a stage (known: {known})")


def _topological(stages: dict) -> list[str]:
    """Stages in dependency order (YAML order among independent ones); cycles are errors."""
    deps = {s: [t for _, t in refs(c).values() if t in stages] for s, c in stages.items()}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(s: str, trail: list[str]) -> None:
        if state.get(s) == 2:
            return
        if state.get(s) == 1:
            cycle = trail[trail.index(s) :] + [s]
            raise ConfigError(f"stages.{s}", "dependency cycle: " + " -> ".join(cycle))
        state[s] = 1
        for d in deps[s]:
            visit(d, trail + [s])
        state[s] = 2
        order.append(s)

    for s in stages:
        visit(s, [])
    return order
