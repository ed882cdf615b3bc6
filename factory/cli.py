"""The ``factory`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from foundation.artifacts import read_manifest, verify
from foundation.configs import explain
from foundation.errors import FactoryError
from foundation.storage import storage_error


def _recipe(args):
    from factory.recipe import load_recipe  # deferred: `factory --help` and `factory eval` start without the stages

    return load_recipe(args.recipe, list(args.overrides) + _engine_overrides(args))


def _engine_overrides(args) -> list[str]:
    """--engine and --launcher are shorthands for the overrides engine=... and nemo.launcher=..."""
    out = []
    if getattr(args, "engine", None):
        out.append(f"engine={args.engine}")
    if getattr(args, "launcher", None):
        out.append(f"nemo.launcher={args.launcher}")
    return out


def cmd_validate(args) -> int:
    recipe = _recipe(args)
    print(f"{args.recipe}: ok ({len(recipe.stages)} stages: {' -> '.join(recipe.stages)})")
    if args.explain:
        from factory.stages.base import stage_kinds  # torch: the stage kinds load it

        for name, cfg in recipe.stages.items():
            print(f"\nstages.{name} (kind {cfg.kind}): {stage_kinds()[cfg.kind].doc}")
            print("\n".join(explain(type(cfg), "  ")))
    return 0


def cmd_plan(args) -> int:
    from factory.pipeline import Pipeline  # torch: only the commands that plan or run stages load it

    recipe = _recipe(args)
    if getattr(args, "resources", False):
        return _plan_resources(args, recipe)
    decisions = Pipeline(recipe, args.runs_dir).plan(force=tuple(args.force), only=args.only)
    width = max(len(d.stage) for d in decisions)
    for d in decisions:
        label = {"cached": "cached", "run": "will run", "corrupted": "CORRUPTED", "skip": "skip"}[d.action]
        print(f"{d.stage:<{width}}  {recipe.stages[d.stage].kind:<10} {label:<9}  {d.reason}")
    return 0


def _plan_resources(args, recipe) -> int:
    """``plan --resources``: each stage's parameters, FLOPs, memory per rank and time on
    the given GPUs, calibrated by the manifests under the runs dir."""
    from factory import planner  # loads the stage kinds (torch) for the shapes

    if args.gpu == "cpu":
        device = planner.cpu_device()
    else:
        device = planner.GPUS[args.gpu or ("h100-80gb" if recipe.engine == "nemo" else "h200")]
    try:
        limit = planner.parse_time(args.time_limit) if args.time_limit else None
    except ValueError as e:
        raise FactoryError(str(e)) from None
    target = planner.Target(device, args.gpus, args.nodes, limit)
    runs = Path(args.runs_dir)
    measured = planner.find_measured([runs]) if runs.is_dir() else []
    own = {m.stage: m.tokens for m in measured if m.path.parent.name == recipe.name}
    plans = planner.plan_recipe(recipe, target, planner.fit_rates(measured), own)
    print("\n".join(planner.format_plan(plans, target)))
    return 0


def cmd_calibrate(args) -> int:
    """``calibrate``: the speed measured runs achieved, per stage kind and device."""
    from factory import planner  # reads shapes through the pruning helpers

    measured = planner.find_measured([Path(d) for d in args.runs_dirs])
    if not measured:
        raise FactoryError(f"no measured training or prune stages under {', '.join(args.runs_dirs)}")
    print(f"{len(measured)} stage runs: efficiency = achieved FLOP/s / device peak; overhead = fixed seconds")
    for r in planner.fit_rates(measured):
        print(
            f"  {r.device:<10} {r.kind:<8} {r.precision:<8} efficiency {r.efficiency:7.2%}  "
            f"overhead {r.overhead_s:6.1f} s  ({r.runs} run{'s' if r.runs > 1 else ''})"
        )
    return 0


def cmd_run(args) -> int:
    from factory.pipeline import Pipeline  # torch: only the commands that run stages load it
    from factory.training.dist import init_from_env  # torch, likewise

    recipe = _recipe(args)
    if args.dry_run:
        return _dry_run(args, recipe)
    init_from_env()  # under torchrun: join the process group (gloo on CPUs, NCCL on GPUs)
    progress = not args.no_progress
    Pipeline(recipe, args.runs_dir, progress=progress).run(force=tuple(args.force), only=args.only, until=args.until)
    return 0


def _dry_run(args, recipe) -> int:
    """``--dry-run``: write the nemo stages' jobs and the plan, run nothing."""
    from factory.engines.nemo.executor import dry_run  # torch: the executors load it, only `run` needs them
    from factory.executors import engines_used  # torch, as above

    if "nemo" not in engines_used(recipe):
        raise FactoryError(
            f"{args.recipe}: --dry-run writes nemo jobs, and every stage of this recipe runs "
            "natively; add --engine nemo"
        )
    reproduce = [args.recipe, *args.overrides]
    for flag in ("engine", "launcher"):
        if getattr(args, flag, None):
            reproduce += [f"--{flag}", getattr(args, flag)]
    for path in dry_run(recipe, Path(args.runs_dir), reproduce):
        print(path)
    return 0


def _fmt_metric(kind: str, metrics: dict) -> str:
    """The headline metrics stage kind ``kind`` declares for `factory ls`, as "label before->after"."""
    from factory.stages.base import headline  # loads the stage kinds (and torch): only `ls` needs them

    parts = []
    for h in headline(kind):
        pair = h.values(metrics) if h.brief else None
        if pair is not None:
            parts.append(f"{h.brief} {h.format(pair[0])}->{h.format(pair[1])}")
    return ", ".join(parts)


def cmd_ls(args) -> int:
    root = Path(args.runs_dir)
    if not root.is_dir():
        raise FactoryError(f"{root}: no such runs directory")
    rows = []
    for run in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = []
        for stage in (p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                m = read_manifest(stage)
            except FactoryError as e:
                found.append(("", (f"{run.name}/{stage.name}", "?", "unreadable", "", "", str(e))))
                continue
            if m is not None:
                found.append(
                    (
                        m.get("created", ""),
                        (
                            f"{run.name}/{stage.name}",
                            m["kind"],
                            m["hash"][:12],
                            str(m.get("tokens") or "-"),
                            f"{m.get('wall_s', 0):.1f}s",
                            _fmt_metric(m["kind"], m.get("metrics", {})),
                        ),
                    )
                )
        rows += [row for _, row in sorted(found)]  # in the order they were made: the pipeline's order
    if not rows:
        print(f"no artifacts under {root}")
        return 0
    header = ("artifact", "kind", "hash", "tokens", "wall", "metrics")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_status(args) -> int:
    """``status RUN_DIR``: per stage its engine, Slurm job ids and allocations, state and progress."""
    from factory.engines.nemo.status import format_status, run_status  # reads job logs and asks Slurm: only here

    stages = run_status(Path(args.run_dir))
    if args.json:
        print(json.dumps({"run_dir": args.run_dir, "stages": stages}, indent=2))
    else:
        print("\n".join(format_status(stages)))
    return 0


def cmd_show(args) -> int:
    d = Path(args.artifact)
    m = read_manifest(d)
    if m is None:
        raise FactoryError(f"{d}: not a complete artifact (no manifest.json)")
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    check = verify(d, m)
    print(f"artifact  {d}")
    print(f"kind      {m['kind']} (stage {m.get('stage')} of recipe {m.get('recipe')})")
    print(f"hash      {m['hash']}")
    print(f"config    {m['config_hash'][:16]}")
    for name, h in m["inputs"].items():
        print(f"input     {name} {h[:16]}  {m.get('sources', {}).get(name, '')}")
    print(f"tokens    {m.get('tokens')}")
    print(f"wall      {m.get('wall_s')} s")
    for k, v in (m.get("metrics") or {}).items():
        print(f"metric    {k} = {v}")
    print(f"versions  {', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}")
    print(f"files     {len(m['files'])}, " + ("all match their sha256" if check.ok else f"CORRUPTED: {check.problem}"))
    return 0 if check.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="factory",
        description="Minitron model factory: recipe-driven "
        "correction, pruning, distillation, alignment and evaluation of LLMs.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_recipe_commands(sub)
    _add_artifact_commands(sub)
    _add_eval_commands(sub)
    return p


def _recipe_parser(sub, name: str, help_: str) -> argparse.ArgumentParser:
    """A sub-command that takes a recipe file, its overrides and an engine choice."""
    sp = sub.add_parser(name, help=help_)
    sp.add_argument("recipe", help="recipe YAML file")
    sp.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. stages.correct.max_tokens=5000")
    sp.add_argument(
        "--engine",
        choices=("native", "nemo"),
        help="run on this engine instead of the recipe's (stages pinned in its engines: keep theirs)",
    )
    return sp


def _add_recipe_commands(sub) -> None:
    """``validate``, ``plan`` and ``run``: the commands that read a recipe."""
    sp = _recipe_parser(sub, "validate", "validate a recipe completely, without running anything")
    sp.add_argument("--explain", action="store_true", help="list every config key of each stage with its help")
    sp.set_defaults(fn=cmd_validate)
    for name, fn, help_ in (
        ("plan", cmd_plan, "show which stages are cached and which would run, and why"),
        ("run", cmd_run, "run the recipe's stages, reusing cached artifacts"),
    ):
        sp = _recipe_parser(sub, name, help_)
        sp.add_argument(
            "--runs-dir", default=os.environ.get("FACTORY_RUNS", "runs"), help="where artifacts go (default runs/)"
        )
        sp.add_argument("--only", help="run only this stage (its inputs must be up to date)")
        sp.add_argument("--force", action="append", default=[], metavar="STAGE", help="rerun STAGE even if cached")
        if name == "run":
            _add_run_options(sp)
        else:
            _add_plan_options(sp)
        sp.set_defaults(fn=fn)
    sp = sub.add_parser("calibrate", help="fit each stage kind's achieved speed from measured runs' manifests")
    sp.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR", help="runs dirs (or run dirs) holding artifacts")
    sp.set_defaults(fn=cmd_calibrate)


def _add_plan_options(sp: argparse.ArgumentParser) -> None:
    """``plan --resources`` and the hardware it plans for."""
    sp.add_argument("--resources", action="store_true", help="print each stage's FLOPs, memory per rank and time")
    sp.add_argument("--gpu", choices=("h100-80gb", "h200", "a100-80gb", "cpu"), help="device kind to plan for")
    sp.add_argument("--gpus", type=_positive, metavar="N", help="GPUs per node (default: nemo's gpus_per_node, or 1)")
    sp.add_argument("--nodes", type=_positive, metavar="M", help="nodes (default: nemo's nodes, or 1)")
    sp.add_argument("--time-limit", metavar="HH:MM:SS", help="Slurm time limit per job (default: nemo's)")


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_run_options(sp: argparse.ArgumentParser) -> None:
    """The options only ``run`` has, on top of those it shares with ``plan``."""
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("--until", metavar="STAGE", help="run STAGE and what it needs, nothing downstream")
    sp.add_argument(
        "--dry-run",
        action="store_true",
        help="nemo engine: write every stage's scripts, configs and launch commands into the run dir, and run nothing",
    )
    sp.add_argument(
        "--launcher",
        choices=("docker", "torchrun", "slurm"),
        help="nemo engine: how jobs start (default: the recipe's nemo.launcher)",
    )


def _add_artifact_commands(sub) -> None:
    """``ls`` and ``show``: the commands that read a runs directory."""
    sp = sub.add_parser("ls", help="list artifacts in a runs directory")
    sp.add_argument("--runs-dir", default=os.environ.get("FACTORY_RUNS", "runs"))
    sp.set_defaults(fn=cmd_ls)
    sp = sub.add_parser("status", help="each stage of a run: its engine, Slurm jobs, state and progress")
    sp.add_argument("run_dir", metavar="RUN_DIR", help="a recipe's run directory, e.g. runs/mn-minitron-8b")
    sp.add_argument("--json", action="store_true", help="machine-readable")
    sp.set_defaults(fn=cmd_status)
    sp = sub.add_parser("show", help="show an artifact's manifest and verify its files")
    sp.add_argument("artifact", help="artifact directory")
    sp.add_argument("--json", action="store_true", help="print the raw manifest")
    sp.set_defaults(fn=cmd_show)


class PackagedModels:
    """The packaged checkpoints (factory.sources.models) as the models ``factory eval``
    knows by name: ``factory eval smollm2-135m-instruct``."""

    def names(self) -> list[str]:
        from factory.sources.models import PACKAGED_MODELS  # deferred: only an eval of a named model asks

        return list(PACKAGED_MODELS)

    def path(self, name: str) -> Path:
        from factory.sources.models import ModelSpec, materialize  # deferred: as above

        return materialize(ModelSpec(packaged=name), Path.cwd())


def _add_eval_commands(sub) -> None:
    """``eval``, ``gate`` and ``report`` from the evaluation suite, ``report`` widened to run dirs."""
    from evals.cli import add_commands  # the suite's CLI loads its tasks: kept off `factory validate`'s path

    add_commands(sub, PackagedModels())  # eval, gate, report: the evaluation suite's own commands
    # `factory report RUN_DIR` draws a whole pipeline run; results files go to the suite's report.
    report = sub.choices["report"]
    report.description = report.help = (
        "a run dir (runs/<recipe>): one HTML/Markdown page about the whole line; "
        "or results files: a comparison with a bar chart"
    )
    report.set_defaults(fn=cmd_report)


def _is_run_dir(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and not list(p.glob("results*.json")) and any(p.glob("*/manifest.json"))


def cmd_report(args) -> int:
    from evals.cli import cmd_report as evals_report  # the suite's CLI loads its tasks: only for this command
    from factory.report import write_report  # matplotlib: only the report draws

    if len(args.results) == 1 and _is_run_dir(args.results[0]):  # a pipeline run: the whole line on one page
        paths = write_report(Path(args.results[0]), Path(args.out) if args.out else None)
        print(f"[factory] run report -> {paths['html']} (and {paths['md'].name})", file=sys.stderr)
        return 0
    return evals_report(args)


def _quiet_libraries() -> None:
    """Our own progress bars say what is happening; silence the libraries' per-file bars."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    # Overrides may follow options (`factory run r.yaml --until dpo a.b=1`): argparse stops
    # filling a nargs="*" positional at the first option, so collect the key=value leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.fn(args)
    except FactoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (OSError, RuntimeError) as e:  # a write no safe-write path caught: disk full, read-only, no permission
        named = getattr(e, "filename", None)  # an OSError names its file; torch's and safetensors' errors do not
        runs = getattr(args, "runs_dir", None)
        mapped = storage_error(e, named or runs, "" if named or not runs else "files under")
        if mapped is None:
            raise
        print(f"error: {mapped}", file=sys.stderr)
        return mapped.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
