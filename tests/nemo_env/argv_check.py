"""A script's own argument parser, run on an argv without running the script.

NeMo's converter and preprocessing scripts import heavy (and, in some NeMo
versions, missing) modules at the top, and parse their arguments in a small
``get_args``-style function. ``parse_with`` lifts that function out of the
script's source with ``ast``, cut right after its ``parse_args()`` call, and
runs it on the given argv: an argparse error comes back as ``ArgvError`` with
argparse's own message. Our own scripts check their argv by hand in ``main``:
``own_usage`` reads the subcommands and argument count that check accepts."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import sys
from pathlib import Path


class ArgvError(Exception):
    """argparse refused the argv (its message, e.g. 'unrecognized arguments: ...')."""


def _builds_parser(fn: ast.FunctionDef) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name == "ArgumentParser":
                return True
    return False


def _calls_parse_args(stmt: ast.stmt) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "parse_args"
        for n in ast.walk(stmt)
    )


def parser_function(source: str, where: str) -> ast.FunctionDef:
    """The function that builds the script's ArgumentParser and parses sys.argv, cut after the parse."""
    tree = ast.parse(source)
    found = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and _builds_parser(n)]
    if not found:
        raise AssertionError(f"{where}: no function builds an ArgumentParser")
    fn = found[0]
    body = []
    for stmt in fn.body:
        body.append(stmt)
        if _calls_parse_args(stmt):
            if isinstance(stmt, ast.Assign):
                body.append(ast.Return(value=ast.Name(id=stmt.targets[0].id, ctx=ast.Load())))
            break
    else:
        raise AssertionError(f"{where}: {fn.name} never calls parse_args()")
    fn.body, fn.decorator_list = body, []
    return fn


def parse_with(script: Path, argv: list[str]) -> argparse.Namespace:
    """Run ``script``'s parser on ``argv`` (the words after the script's path)."""
    fn = parser_function(script.read_text(), str(script))
    module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
    scope = {"ArgumentParser": argparse.ArgumentParser, "argparse": argparse, "os": os, "__file__": str(script)}
    exec(compile(module, str(script), "exec"), scope)  # noqa: S102 - the script's own parser, nothing else
    saved, err = sys.argv, io.StringIO()
    sys.argv = [str(script), *argv]
    try:
        with contextlib.redirect_stderr(err):
            return scope[fn.name]()
    except SystemExit as e:
        raise ArgvError(f"{script.name}: exit {e.code}: {err.getvalue().strip().splitlines()[-1]}") from None
    finally:
        sys.argv = saved


def own_usage(script: Path) -> tuple[int, set[str]]:
    """What our own script's ``main(argv)`` accepts: (argument count, subcommands)."""
    tree = ast.parse(script.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    count, commands = None, set()
    for node in ast.walk(main):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
            if getattr(node.left.func, "id", "") == "len" and isinstance(node.comparators[0], ast.Constant):
                count = node.comparators[0].value
        if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.NotIn):
            if isinstance(node.comparators[0], ast.Tuple):
                commands = {e.value for e in node.comparators[0].elts}
    if count is None:
        raise AssertionError(f"{script}: main() does not check len(argv)")
    return count, commands
