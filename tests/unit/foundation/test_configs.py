from dataclasses import dataclass
from typing import Literal

import pytest

from foundation.configs import build, coerce, field, hashed_dict, parse_count, refs
from foundation.errors import ConfigError


@dataclass
class Inner:
    width: int = field(4)


@dataclass
class Cfg:
    name: str = field(help="required")
    steps: int = field(10)
    lr: float = field(1e-3)
    mode: Literal["a", "b"] = field("a")
    maybe: int | None = field(None)
    items: list[int] = field(factory=list)
    inner: Inner = field(factory=Inner)
    model: str | None = field(None, ref="model")
    every: int = field(5, hashed=False)


@pytest.mark.parametrize(
    "text,value", [("70M", 70_000_000), ("1.5k", 1500), ("4096", 4096), (12, 12), ("2B", 2 * 10**9)]
)
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["abc", "1.5", "M", True, 1.5])
def test_parse_count_rejects(text):
    assert parse_count(text) is None


def test_build_coerces_and_defaults():
    cfg = build(Cfg, {"name": "x", "steps": "2k", "lr": 1, "items": [1, "2"], "inner": {"width": 8}}, "s")
    assert cfg.steps == 2000 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.items == [1, 2] and cfg.inner.width == 8 and cfg.mode == "a"


@pytest.mark.parametrize(
    "data,where,msg",
    [
        ({"steps": 1}, "s.name", "missing required key"),
        ({"name": "x", "stpes": 1}, "s.stpes", "unknown key"),
        ({"name": "x", "steps": "abc"}, "s.steps", "expected int, got 'abc'"),
        ({"name": "x", "steps": True}, "s.steps", "expected int, got bool True"),
        ({"name": "x", "lr": "fast"}, "s.lr", "expected float"),
        ({"name": "x", "mode": "c"}, "s.mode", "expected one of 'a', 'b'"),
        ({"name": "x", "items": 3}, "s.items", "expected a list"),
        ({"name": "x", "items": [1, "z"]}, "s.items[1]", "expected int"),
        ({"name": "x", "inner": {"w": 1}}, "s.inner.w", "unknown key"),
        ({"name": 5}, "s.name", "expected str, got int 5"),
    ],
)
def test_build_errors_name_the_path(data, where, msg):
    with pytest.raises(ConfigError) as e:
        build(Cfg, data, "s")
    assert e.value.where == where
    assert msg in str(e.value)


def test_hash_excludes_refs_and_unhashed_fields():
    a = build(Cfg, {"name": "x", "model": "m1", "every": 1}, "")
    b = build(Cfg, {"name": "x", "model": "m2", "every": 9}, "")
    assert hashed_dict(a) == hashed_dict(b)
    assert refs(a) == {"model": ("model", "m1")}
    c = build(Cfg, {"name": "x", "steps": 11}, "")
    assert hashed_dict(a) != hashed_dict(c)


def test_optional_accepts_null():
    assert coerce(int | None, None, "k") is None
    with pytest.raises(ConfigError, match="expected int, got null"):
        coerce(int, None, "k")


@dataclass
class Before:
    steps: int = field(10)


@dataclass
class After:
    steps: int = field(10)
    points: list[int] | None = field(None, hashed_when_set=True)


def test_a_field_hashed_when_set_keeps_the_key_of_configs_that_leave_it_null():
    before = hashed_dict(build(Before, {"steps": 3}, ""))
    assert hashed_dict(build(After, {"steps": 3}, "")) == before == {"steps": 3}
    assert hashed_dict(build(After, {"steps": 3, "points": [1, 2]}, "")) == {"steps": 3, "points": [1, 2]}
