"""Command lines of the evaluation suite: ``eval``, ``gate`` and ``report``.

``factory eval`` / ``factory gate`` are these same commands (``add_commands``
registers them on the factory parser); ``python -m evals.cli`` runs them alone.
Exit codes: 0 ok, 1 the gate found a regression, 2 bad arguments or files (or two
results the gate refuses to compare: not run alike, see evals.gate)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Protocol

from evals.engines import ENGINES, check_settings
from evals.suite import load_suite, parse_key_values, parse_overrides
from foundation.errors import FactoryError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _engine_args(items: list[str], engine: str) -> dict:
    """``--engine-arg KEY=VALUE`` as settings of ``engine``, on top of the suite's."""
    given = parse_key_values(items, "--engine-arg")
    check_settings(engine, given, "--engine-arg")
    return given


_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.h5", "*.msgpack")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "*.tiktoken", "*.gguf")


def check_model_dir(path: Path) -> None:
    """A local model directory must hold config.json, weights and a tokenizer: checked before
    any task or engine loads, so a wrong directory fails at once, in one line, writing nothing."""

    def has(patterns) -> bool:
        return any(next(path.glob(p), None) is not None for p in patterns)

    missing = [
        what
        for what, ok in (
            ("config.json", (path / "config.json").is_file()),
            ("weights (*.safetensors, *.bin)", has(_WEIGHTS)),
            ("tokenizer (tokenizer.json, tokenizer_config.json)", has(_TOKENIZER)),
        )
        if not ok
    ]
    if missing:
        raise FactoryError(f"{path}: not a model directory: no {', no '.join(missing)}")


class ModelCatalog(Protocol):
    """Models ``eval`` knows by name besides directories: the factory's packaged
    checkpoints (``factory eval smollm2-135m-instruct``)."""

    def names(self) -> list[str]:
        """Every name ``path`` accepts."""
        ...

    def path(self, name: str) -> Path:
        """The checkpoint directory of ``name``, fetched and converted on first use."""
        ...


_HASH_NAME = re.compile(r"^[0-9a-f]{12,}$")


def model_label(path: Path) -> str:
    """A readable name for the model in ``path``: the directory's name, unless that is a
    content hash (a cache entry), then what the cache recorded it was built from (its
    ``.complete`` source: "packaged smollm2-135m-instruct" -> "smollm2-135m-instruct"),
    else the checkpoint's own ``_name_or_path``."""
    name = path.resolve().name
    if not _HASH_NAME.match(name):
        return name
    for file, key in ((".complete", "source"), ("config.json", "_name_or_path")):
        try:
            found = json.loads((path / file).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, str) and found.strip():
            return Path(found.strip().removeprefix("packaged ")).name
    return name


def resolve_model(
    model: str, label: str | None, catalog: ModelCatalog | None, served: bool, cached_only: bool
) -> tuple[str | None, str]:
    """What ``eval MODEL`` names: (the name of a catalog model to fetch, or None; the
    model's label, ``label`` if given). A directory is the model itself; another name
    must be one the catalog knows, unless the model is ``served`` (engine openai), whose
    server knows it, or only the completions cache is scored (``cached_only``)."""
    if Path(model).is_dir():
        return None, label or model_label(Path(model))
    if not served and catalog is not None and model in catalog.names():
        return model, label or model
    if served or cached_only:
        return None, label or Path(model.rstrip("/")).name or model
    known = (
        f"packaged models: {', '.join(catalog.names())}"
        if catalog is not None
        else "packaged model names are known to `factory eval`"
    )
    raise FactoryError(
        f"{model}: no such model directory or packaged model ({known}; "
        f"a served model's name needs --engine openai or --base-url)"
    )


def limit_notice(suite, limit: int | None) -> str | None:
    """One line naming the tasks whose own limit in the suite is below ``--limit``
    (they run at their own), or None when there are none."""
    if limit is None:
        return None
    lower = [f"{e.name} ({e.limit})" for e in suite.entries if e.limit is not None and e.limit < limit]
    if not lower:
        return None
    return (
        f"[evals] --limit {limit}: suite {suite.name} caps these tasks lower, so they run at its limit: "
        + ", ".join(lower)
    )


def cmd_eval(args) -> int:
    from evals import report  # loaded when the command runs: every factory command builds this parser
    from evals.runner import run_suite  # loaded when the command runs: every factory command builds this parser

    local = not args.cached_only and not args.base_url and args.engine != "openai"
    if local and Path(args.model).is_dir():
        check_model_dir(Path(args.model))
    suite = load_suite(args.suite)
    if args.tasks:
        suite = suite.select([n.strip() for n in args.tasks.split(",") if n.strip()])
    if args.cached_only and args.no_cache:
        raise FactoryError("--cached-only scores OUT/completions.jsonl; it cannot go with --no-cache")
    sampling = parse_overrides(args.sampling) if args.sampling else None
    engine = args.engine or ("openai" if args.base_url else None)
    settings = {"base_url": args.base_url} if args.base_url else {}
    if args.engine_arg:
        settings.update(_engine_args(args.engine_arg, engine or suite.engine))
    served = (engine or suite.engine) == "openai"
    catalog = getattr(args, "catalog", None)
    to_fetch, label = resolve_model(args.model, args.label, catalog, served, args.cached_only)
    out = Path(args.out) if args.out else Path("evals-out") / f"{label}-{suite.name}"
    notice = limit_notice(suite, args.limit)
    if notice:
        print(notice, file=sys.stderr)
    model = str(catalog.path(to_fetch)) if to_fetch else args.model
    results = run_suite(
        model,
        suite,
        engine=engine,
        engine_settings=settings,
        limit=args.limit,
        sampling=sampling,
        out=out / "results.json",
        label=label,
        progress=not args.no_progress,
        cache=None if args.no_cache else out / "completions.jsonl",
        cached_only=args.cached_only,
    )
    report.write_report([(label, results)], out)
    print(report.text_table([(label, results)]))
    for name, gap in results.get("missing", {}).items():
        held = f"{gap['have']} of {gap['of']} completions" if gap["of"] else "no finished record"
        print(f"[evals] {name}: left out, the cache holds {held}", file=sys.stderr)
    print(
        f"[evals] {len(results['samples'])} samples in {results['wall_s']:.1f}s -> {out / 'results.json'}",
        file=sys.stderr,
    )
    return 0


def cmd_gate(args) -> int:
    from evals import gate  # loaded when the command runs: every factory command builds this parser
    from evals import results as res  # loaded when the command runs: every factory command builds this parser

    max_drop = gate.parse_max_drop(args.max_drop)
    if args.default_max_drop < 0:
        raise FactoryError(f"--default-max-drop {args.default_max_drop}: must be >= 0")
    if not 0 < args.alpha < 1:
        raise FactoryError(f"--alpha {args.alpha}: must be between 0 and 1")
    candidate, baseline = res.load(args.candidate), res.load(args.baseline)
    mismatched = gate.check_comparable(candidate, baseline, args.allow_mismatch)
    for m in mismatched:
        print(f"gate: compared anyway, they differ in {m}", file=sys.stderr)
    rows = gate.compare(candidate, baseline, max_drop, args.default_max_drop, args.alpha, allow_mismatch=True)
    print(gate.table(rows))
    print(gate.summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(gate.as_json(rows, args.alpha, mismatched), indent=1) + "\n")
    return 1 if any(r.failed for r in rows) else 0


def cmd_report(args) -> int:
    from evals import report  # loaded when the command runs: every factory command builds this parser
    from evals import results as res  # loaded when the command runs: every factory command builds this parser

    if not args.out:
        raise FactoryError("report: --out is required when comparing results files")
    runs = [res.load(p) for p in args.results]
    labels = (
        args.labels.split(",") if args.labels else [r["model"].get("label") or f"model{i}" for i, r in enumerate(runs)]
    )
    if len(labels) != len(runs):
        raise FactoryError(f"--labels: {len(labels)} labels for {len(runs)} results files")
    paths = report.write_report(list(zip(labels, runs)), Path(args.out))
    print(report.text_table(list(zip(labels, runs))))
    print(f"[evals] report -> {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def add_commands(sub, catalog: ModelCatalog | None = None) -> None:
    """Register ``eval``, ``gate`` and ``report`` on an argparse subparsers object;
    ``catalog``: the models ``eval`` also knows by name."""
    _add_eval(sub, catalog)
    _add_gate(sub)
    _add_report(sub)


def _add_eval(sub, catalog: ModelCatalog | None) -> None:
    """The ``eval`` command: run a suite on one model."""
    sp = sub.add_parser("eval", help="run an evaluation suite on a model; writes results.json and a report")
    packaged = ", a packaged model's name (an unknown name lists them)" if catalog is not None else ""
    sp.add_argument("model", help=f"HF checkpoint dir{packaged}, or the model's name on an OpenAI-compatible server")
    sp.add_argument("--suite", default="quick", help="shipped suite name (quick, full) or a suite YAML file")
    sp.add_argument("--engine", choices=ENGINES, help="override the suite's engine")
    sp.add_argument(
        "--base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (implies --engine openai)"
    )
    sp.add_argument(
        "--limit", type=_positive, help="cap every task at N samples (a task the suite caps lower keeps its cap)"
    )
    sp.add_argument("--out", help="output dir (default evals-out/<model>-<suite>)")
    sp.add_argument(
        "--label",
        help="the model's name in reports (default: the packaged model's name or the dir's name; "
        "for a cache dir named by a hash, the model it was built from)",
    )
    sp.add_argument(
        "--no-cache",
        action="store_true",
        help="do not keep or reuse OUT/completions.jsonl (by default completions are kept as they "
        "are made, so rerunning an interrupted eval resumes; a changed model or request "
        "is generated anew)",
    )
    sp.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an engine setting on top of the suite's engine_settings, e.g. --engine-arg "
        "tensor_parallel_size=2 --engine-arg max_num_seqs=256 (vllm), max_batch=32 (hf)",
    )
    sp.add_argument(
        "--sampling",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override every task's sampling (max_tokens, temperature, top_p, n, seed, stop), e.g. "
        "--sampling temperature=0.8 --sampling n=10; recorded in results.json",
    )
    sp.add_argument(
        "--tasks",
        metavar="NAME[,NAME]",
        help="run only these tasks of the suite (their names in results.json, e.g. ifeval,gsm8k_8shot)",
    )
    sp.add_argument(
        "--cached-only",
        action="store_true",
        help="build no engine and compute nothing: score what OUT/completions.jsonl holds (after a "
        "scorer change, or while another eval is still writing it); tasks not yet complete "
        "there are left out and listed",
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(fn=cmd_eval, catalog=catalog)


def _add_gate(sub) -> None:
    """The ``gate`` command: fail on a significant regression against a baseline."""
    sp = sub.add_parser("gate", help="compare two results files; exit 1 on a significant regression")
    sp.add_argument("candidate", help="the candidate's results.json (or its dir)")
    sp.add_argument("baseline", help="the baseline's results.json (or its dir)")
    sp.add_argument(
        "--max-drop",
        action="append",
        default=[],
        metavar="TASK/METRIC=DROP",
        help="allowed absolute drop for one metric (or TASK=DROP for all of a task's)",
    )
    sp.add_argument(
        "--default-max-drop",
        type=float,
        default=0.0,
        metavar="DROP",
        help="allowed drop for metrics without --max-drop (default 0)",
    )
    sp.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired bootstrap")
    sp.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    sp.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="compare even when the two were not run alike (task options, sampling, sample ids or "
        "prompts differ); each difference is listed on stderr and in --json",
    )
    sp.set_defaults(fn=cmd_gate)


def _add_report(sub) -> None:
    """The ``report`` command: compare results files in a table and a chart."""
    sp = sub.add_parser("report", help="compare results files: a table and a bar chart")
    sp.add_argument("results", nargs="+", help="results.json files (or their dirs)")
    sp.add_argument("--out", help="output dir")
    sp.add_argument("--labels", help="comma-separated model names, one per results file")
    sp.set_defaults(fn=cmd_report)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(prog="python -m evals.cli", description="The evaluation suite on its own.")
    add_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except FactoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
