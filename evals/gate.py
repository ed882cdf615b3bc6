"""The regression gate: compare a candidate's results with a baseline's.

Every metric of every baseline task is gated (metrics are higher-is-better).
A metric fails when the candidate is lower by more than its allowed drop AND
the drop is significant: the paired bootstrap over the sample ids both runs
share gives p < alpha for "the candidate is worse". A large drop on a handful
of samples is noise, and a significant drop within the allowance is accepted.

Before any number is compared, the two results must have been run alike
(``check_comparable``): for every baseline task the candidate also has, these
must be equal, and the first difference refuses the comparison in one line
unless the caller allows mismatches (then each difference is listed):

- the registered task (``task``) and its options as the suite gave them;
  an option left to its default on one side and spelled out on the other
  counts as a difference, since defaults may have changed between the code
  versions that produced the two files. Log-likelihood tasks carry their
  numerics (dtype, device, backend, batch) in their options, so those count;
- every sampling parameter (``max_tokens``, ``temperature``, ``top_p``, ``n``,
  ``seed``, ``stop``): they decide what an answer can be;
- the set of sample ids (a different ``limit`` or data version shows here);
- what each shared sample asks: its messages or prompt and its tools, as a
  hash; a changed prompt template or data file shows here.

What may differ: the model (that is what is compared), package versions, the
suite's name and file (a suite is packaging; its tasks are compared one by
one), the bootstrap settings (the gate draws its own), and the engine and its
settings (hf, vllm or openai; batch size, parallelism, memory): they decide
how a request is served, not what is asked or how tokens are chosen, and the
decoding rules that do change answers are in the compared sampling. The same
request served by two engines can differ only where numerics break near-ties,
which is noise of the kind the significance test exists for, and a served
candidate against a local baseline is a use the gate is meant for. Task sets:
a candidate's extra tasks are not gated; a baseline task the candidate lacks
is a MISSING row that fails the gate, as a regression would. Scorer code is
not recorded in results files, so a scorer change between the two runs is not
seen here: rescore both with ``factory eval --cached-only``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from evals import results as res
from evals import stats
from foundation.errors import FactoryError
from foundation.hashing import sha256_json

ALPHA = 0.05


@dataclass
class GateRow:
    task: str
    metric: str
    n: int  # shared samples
    baseline: float
    candidate: float
    delta: float
    allowed: float
    p: float
    verdict: str  # "pass" | "noise" (drop beyond allowance, not significant) | "FAIL" | "MISSING"

    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", "MISSING")

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"


def parse_max_drop(items: list[str]) -> dict[str, float]:
    """``task/metric=0.02`` or ``task=0.02`` (every metric of the task)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            drop = float(value)
        except ValueError:
            drop = float("nan")
        if not sep or not key or math.isnan(drop) or drop < 0:
            raise FactoryError(
                f"--max-drop {item!r}: expected task/metric=DROP with DROP >= 0, e.g. gsm8k/accuracy=0.02"
            )
        out[key] = drop
    return out


def _allowed(task: str, metric: str, max_drop: dict[str, float], default: float) -> float:
    return max_drop.get(f"{task}/{metric}", max_drop.get(task, default))


def check_max_drop(baseline: dict, max_drop: dict[str, float], prefix: str = "--max-drop ") -> None:
    """Every key names a task or task/metric of the baseline (a typo would gate nothing)."""
    known = {task for task in baseline["tasks"]}
    known |= {f"{task}/{m}" for task, t in baseline["tasks"].items() for m in t["metrics"]}
    for key in max_drop:
        if key not in known:
            raise FactoryError(
                f"{prefix}{key}: no such task or task/metric in {baseline.get('_file', 'the baseline')} "
                f"(known: {', '.join(sorted(known))})"
            )


@dataclass(frozen=True)
class Mismatch:
    """One way a baseline task and the candidate's task of the same name were not run alike."""

    task: str
    what: str  # "task", "options.KEY", "sampling.KEY", "sample ids" or "prompt of sample ID"
    candidate: str  # the candidate's side, in words
    baseline: str
    note: str = ""

    def __str__(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return f"{self.task} {self.what} ({self.candidate} vs {self.baseline}{note})"


def _shown(value, present: bool = True) -> str:
    if not present:
        return "absent"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _differing_keys(task: str, group: str, cand: dict | None, base: dict | None) -> list[Mismatch]:
    cand, base = cand or {}, base or {}
    return [
        Mismatch(task, f"{group}.{key}", _shown(cand.get(key), key in cand), _shown(base.get(key), key in base))
        for key in sorted(set(cand) | set(base))
        if key not in cand or key not in base or cand[key] != base[key]
    ]


def prompt_digest(record: dict) -> str:
    """What a sample asks (messages or prompt, and tools), as a hash."""
    return sha256_json({k: record.get(k) for k in ("messages", "prompt", "tools")})


def _by_task(results: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for rec in results["samples"]:
        out.setdefault(rec["task"], {})[str(rec["id"])] = rec
    return out


def _sample_mismatches(task: str, cand: dict[str, dict], base: dict[str, dict]) -> list[Mismatch]:
    out = []
    shared = [i for i in base if i in cand]
    if set(cand) != set(base):
        out.append(Mismatch(task, "sample ids", str(len(cand)), f"{len(base)} samples", f"{len(shared)} shared"))
    changed = [i for i in shared if prompt_digest(cand[i]) != prompt_digest(base[i])]
    if changed:
        first = changed[0]
        out.append(
            Mismatch(
                task,
                f"prompt of sample {first}",
                prompt_digest(cand[first])[:12],
                prompt_digest(base[first])[:12],
                f"{len(changed)} of {len(shared)} shared samples differ",
            )
        )
    return out


def mismatches(candidate: dict, baseline: dict) -> list[Mismatch]:
    """Every way the two results were not run alike, baseline tasks in order
    (what is compared and why: the module's docstring). Baseline tasks the
    candidate lacks are left to ``compare`` (a MISSING row)."""
    out: list[Mismatch] = []
    cand_samples, base_samples = _by_task(candidate), _by_task(baseline)
    for name, base in baseline["tasks"].items():
        cand = candidate["tasks"].get(name)
        if cand is None:
            continue
        if cand.get("task") != base.get("task"):
            out.append(Mismatch(name, "task", _shown(cand.get("task")), _shown(base.get("task"))))
        out += _differing_keys(name, "options", cand.get("options"), base.get("options"))
        out += _differing_keys(name, "sampling", cand.get("sampling"), base.get("sampling"))
        out += _sample_mismatches(name, cand_samples.get(name, {}), base_samples.get(name, {}))
    return out


def check_comparable(
    candidate: dict,
    baseline: dict,
    allow_mismatch: bool = False,
    subject: str = "gate: candidate and baseline",
    hint: str = "pass --allow-mismatch to compare anyway",
) -> list[Mismatch]:
    """The mismatches between the two results; unless ``allow_mismatch``, the
    first one refuses the comparison in one line (``subject differ in ...; hint``)."""
    found = mismatches(candidate, baseline)
    if found and not allow_mismatch:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise FactoryError(f"{subject} differ in {found[0]}{more}; {hint}")
    return found


def compare(
    candidate: dict,
    baseline: dict,
    max_drop: dict[str, float] | None = None,
    default_max_drop: float = 0.0,
    alpha: float = ALPHA,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
    allow_mismatch: bool = False,
) -> list[GateRow]:
    """One row per baseline task/metric. Results not run alike are refused
    (``check_comparable``) unless ``allow_mismatch``; a caller that already
    checked passes True."""
    max_drop = max_drop or {}
    check_max_drop(baseline, max_drop)
    check_comparable(candidate, baseline, allow_mismatch)
    rows = []
    for task, t in baseline["tasks"].items():
        base_recs = res.task_samples(baseline, task)
        cand_recs = res.task_samples(candidate, task)
        for metric in t["metrics"]:
            allowed = _allowed(task, metric, max_drop, default_max_drop)
            b = res.metric_values(base_recs, metric)
            c = res.metric_values(cand_recs, metric)
            if not b:  # no baseline sample carries it: nothing to compare against
                continue
            if task not in candidate["tasks"] or not c:
                nan = float("nan")
                rows.append(GateRow(task, metric, 0, t["metrics"][metric]["value"], nan, nan, allowed, nan, "MISSING"))
                continue
            pair = stats.paired_bootstrap(b, c, resamples, seed)
            if pair.n == 0:
                raise FactoryError(f"task {task}: the two results share no sample ids; were they run on the same data?")
            rows.append(
                GateRow(
                    task,
                    metric,
                    pair.n,
                    pair.baseline,
                    pair.candidate,
                    pair.delta,
                    allowed,
                    pair.p_worse,
                    _verdict(pair.delta, allowed, pair.p_worse, alpha),
                )
            )
    return rows


def _verdict(delta: float, allowed: float, p: float, alpha: float) -> str:
    # a tiny tolerance so a drop exactly at the allowance is not failed by rounding
    if -delta <= allowed + 1e-12:
        return "pass"
    return "FAIL" if p < alpha else "noise"


def table(rows: list[GateRow]) -> str:
    header = ["task/metric", "n", "baseline", "candidate", "delta", "allowed", "p", "verdict"]

    def f(x: float, fmt: str = ".3f") -> str:
        return "-" if x is None or math.isnan(x) else format(x, fmt)

    body = [
        [r.key, str(r.n), f(r.baseline), f(r.candidate), f(r.delta, "+.3f"), f(r.allowed), f(r.p), r.verdict]
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header] + body)


def summary(rows: list[GateRow]) -> str:
    failed = [r for r in rows if r.failed]
    if not failed:
        return f"gate passed: {len(rows)} metrics, none dropped significantly beyond its allowance"
    parts = [
        f"{r.key} {'missing' if r.verdict == 'MISSING' else f'{r.delta:+.3f} (allowed -{r.allowed:g}, p={r.p:.3f})'}"
        for r in failed
    ]
    return f"gate failed: {len(failed)} of {len(rows)} metrics regressed: " + "; ".join(parts)


def as_json(rows: list[GateRow], alpha: float, mismatches: list[Mismatch] | None = None) -> dict:
    """The verdict as data; ``mismatches``: the differences a comparison was allowed to go past."""
    return {
        "passed": not any(r.failed for r in rows),
        "alpha": alpha,
        "rows": [{**asdict(r), "failed": r.failed} for r in rows],
        "mismatches": [{**asdict(m), "line": str(m)} for m in mismatches or []],
    }
