"""The retention curve a release card shows: a teacher and students of several sizes
scored on one suite, each score with its 95% interval and ``n``, each student's change
against the teacher with its paired-bootstrap interval (the file ``bench/retention.py``
writes, ``bench/results/retention.json``)::

    {"teacher": {"name", "params", "sha256"}, "host": {...}, "budget": {...}, "suite": {...},
     "points": [{"label", "params", "fraction",
                 "scores": {"task/metric": {"value", "lo", "hi", "n"}},
                 "delta": {"task/metric": {"value", "lo", "hi", "p"}}}]}   # no delta for the teacher

A release names the file in its ``retention`` key; the file is checked here before
anything reads it (every error is one line naming the key and the file), and the card
shows it only when it measures the release's own teacher."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from foundation import host
from foundation.errors import FactoryError

TOP_KEYS = {"teacher": dict, "host": dict, "suite": (str, dict), "points": list}  # suite: a name, or inline
TEACHER_KEYS = ("name", "params")
POINT_KEYS = {"label": str, "params": int, "fraction": (int, float), "scores": dict}
SCORE_KEYS = ("value", "lo", "hi", "n")
DELTA_KEYS = ("value", "lo", "hi")


_KIND_NAMES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", (int, float): "a number"}
_KIND_NAMES[(str, dict)] = "a suite name or mapping"


@dataclass(frozen=True)
class Teacher:
    """The teacher a release's lineage starts from: ``desc`` as the card names it, the
    model names it goes by (packaged, hub or local path; none for a tiny model) and its
    parameter count where the lineage records it."""

    desc: str
    names: frozenset[str]
    params: int | None


def load_retention(path: Path, where: str) -> dict:
    """The retention file at ``path``, its schema checked; ``where`` names the recipe key
    (``stages.<name>.retention``) in the one-line error a missing, unparsable or incomplete file gives."""
    if not path.is_file():
        raise FactoryError(f"{where}: no such file: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        at = f":{e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise FactoryError(f"{where}: {path}{at}: not valid JSON ({getattr(e, 'msg', e)})") from None
    _check_schema(data, lambda problem: FactoryError(f"{where}: {path}: {problem}"))
    return data


def _need(obj, key: str, kind, at: str, error) -> None:
    """Raise ``error(...)`` unless mapping ``obj`` has ``key`` of type ``kind`` (``at``: its path in the file)."""
    if key not in obj:
        raise error(f"missing key {at}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise error(f"{at} is {type(value).__name__}, expected {_KIND_NAMES.get(kind, kind)}")


def _check_entries(entries: dict, keys: tuple[str, ...], at: str, error) -> None:
    for metric, entry in entries.items():
        if not isinstance(entry, dict):
            raise error(f"{at}.{metric} is {type(entry).__name__}, expected a mapping")
        for key in keys:
            _need(entry, key, int if key == "n" else (int, float), f"{at}.{metric}.{key}", error)


def _check_schema(data, error) -> None:
    if not isinstance(data, dict):
        raise error(f"the file holds {type(data).__name__}, expected a mapping")
    for key, kind in TOP_KEYS.items():
        _need(data, key, kind, key, error)
    for key in TEACHER_KEYS:
        _need(data["teacher"], key, str if key == "name" else int, f"teacher.{key}", error)
    if not data["points"]:
        raise error("points is empty")
    for i, point in enumerate(data["points"]):
        if not isinstance(point, dict):
            raise error(f"points[{i}] is {type(point).__name__}, expected a mapping")
        for key, kind in POINT_KEYS.items():
            _need(point, key, kind, f"points[{i}].{key}", error)
        _check_entries(point["scores"], SCORE_KEYS, f"points[{i}].scores", error)
        if "delta" in point:
            _need(point, "delta", dict, f"points[{i}].delta", error)
            _check_entries(point["delta"], DELTA_KEYS, f"points[{i}].delta", error)
            for metric, d in point["delta"].items():
                if "p" in d:
                    _need(d, "p", (int, float), f"points[{i}].delta.{metric}.p", error)


def check_teacher(data: dict, teacher: Teacher, path: Path, where: str) -> None:
    """Refuse a file that measures another teacher than the release's: compared by model
    name where the lineage's teacher has one, else by parameter count."""
    name, params = data["teacher"]["name"], data["teacher"]["params"]
    if teacher.names:
        same = name.lower() in {n.lower() for n in teacher.names}
    elif teacher.params is not None:
        same = params == teacher.params
    else:
        raise FactoryError(
            f"{where}: {path}: cannot tell whether it measures this release's teacher ({teacher.desc}): "
            "the lineage names no packaged or hub model and records no parameter count"
        )
    if not same:
        ours = f" ({teacher.params:,} params)" if teacher.params is not None else ""
        raise FactoryError(
            f"{where}: {path} measures teacher {name!r} ({params:,} params), "
            f"but this release's teacher is {teacher.desc}{ours}"
        )


def _interval(e: dict, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    if e["value"] is None or (isinstance(e["value"], float) and math.isnan(e["value"])):
        return "n/a"
    return f"{f.format(e['value'])} [{f.format(e['lo'])}, {f.format(e['hi'])}]"


def _rows(data: dict) -> list[str]:
    """One row per student size and score: the score, its n, and its change against the teacher."""
    rows = []
    for point in data["points"]:
        head = f"| {point['label']} | {point['params']:,} | {point['fraction']:.1%} |"
        for metric, score in point["scores"].items():
            d = point.get("delta", {}).get(metric)
            if d is None:
                change = "- | -"  # the teacher itself, or a score with no paired comparison
            else:
                change = f"{_interval(d, signed=True)} | " + (f"{d['p']:.3f}" if "p" in d else "-")
            rows.append(f"{head} {metric} | {_interval(score)} | {score['n']} | {change} |")
    return rows


def _suite(suite) -> str:
    """A suite in words: its name (shipped or a file), an inline suite's name, or task: settings."""
    if isinstance(suite, str):
        return suite
    if "name" in suite:
        return str(suite["name"])
    return "; ".join(
        f"{task}: " + ", ".join(f"{k}={v}" for k, v in spec.items()) if isinstance(spec, dict) else f"{task}: {spec}"
        for task, spec in suite.items()
    )


def retention_section(data: dict, shown_path: str, digest: str) -> list[str]:
    """The card's "Retention against size" section: the table, then where it was measured
    and which file (as the recipe names it, with the first 16 hex digits of its sha256) it came from."""
    t = data["teacher"]
    budget = ", ".join(f"{k}={v}" for k, v in (data.get("budget") or {}).items())
    return [
        "## Retention against size",
        "",
        f"Students of several sizes against the teacher `{t['name']}` ({t['params']:,} params): each score "
        "with its 95% interval over its n items, and the change against the teacher on the same items "
        "(paired bootstrap: its 95% interval, and p, the share of resamples showing no drop: a small p "
        "is a significant drop).",
        "",
        "| model | params | fraction of teacher | task/metric | score [95% CI] | n | change vs teacher [95% CI] | p |",
        "|---|---|---|---|---|---|---|---|",
        *_rows(data),
        "",
        f"Suite: {_suite(data['suite'])}." + (f" Budget: {budget}." if budget else ""),
        "",
        f"Measured on {host.one_line(data['host'])}; from `{shown_path}` (sha256 {digest[:16]}).",
        "",
    ]
