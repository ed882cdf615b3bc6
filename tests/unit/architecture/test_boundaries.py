"""The package boundaries hold: ``foundation`` imports neither ``factory`` nor
``evals``; ``evals`` imports ``foundation`` only; no module-level import cycle;
a function-local import says why it is local; package functions stay short.

Everything here reads the source with ``ast`` (nothing is imported), except the
``sys.modules`` check, which imports every module of ``evals`` in a fresh
interpreter, the way a user of the eval suite alone would."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("foundation", "evals", "factory")
# Which packages each package may import at all.
ALLOWED = {
    "foundation": {"foundation"},
    "evals": {"foundation", "evals"},
    "factory": {"foundation", "evals", "factory"},
}
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, line, is_function_local) for every import of a project module."""
    tree = ast.parse(path.read_text(), str(path))
    local = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                if path.name != "__init__.py":
                    parts = parts[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            yield target, node, id(node) in local


def _project_target(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_packages_import_only_what_they_may():
    wrong = []
    for name, path in MODULES.items():
        pkg = name.split(".")[0]
        for target, node, _ in _imports(name, path):
            top = target.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[pkg]:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    assert wrong == []


def test_no_module_level_import_cycle():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _, is_local in _imports(name, path):
            mod = _project_target(target)
            if mod and not is_local and mod != name:
                graph[name].add(mod)
                # importing a.b.c runs a/__init__.py and a/b/__init__.py first
                parts = mod.split(".")
                # (a module's own ancestors are already loading when it runs: no edge)
                graph[name].update(
                    p
                    for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                    if p != name and not name.startswith(p + ".")
                )
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_function_local_imports_say_why():
    """A local import is for a heavy or optional dependency (or a CLI that starts fast);
    its line carries a comment saying so. Anything else belongs at the top."""
    silent = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        seen = set()
        for _, node, is_local in _imports(name, path):
            if not is_local or id(node) in seen:
                continue
            seen.add(id(node))
            text = " ".join(lines[node.lineno - 1 : node.end_lineno])
            if "#" not in text:
                silent.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert silent == []


def test_functions_are_short_or_say_why():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if length > MAX_FUNCTION_LINES and "long because" not in doc.lower():
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


@pytest.mark.parametrize("package,forbidden", [("foundation", ("factory", "evals")), ("evals", ("factory",))])
def test_importing_a_package_loads_nothing_above_it(package, forbidden):
    code = (
        f"import importlib, pkgutil, sys, {package}\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(sorted(k for k in sys.modules if k.split('.')[0] in {forbidden!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_tests_use_the_public_surface():
    """Tests import public names only: a private helper a test needs is part of the API."""
    private = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                private += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert private == []


def test_no_stage_imports_another():
    """Stages compose public components (training/, pruning/, corpus/, base); what two
    stages share lives there, never in one of them."""
    crossing = []
    for name, path in MODULES.items():
        if not name.startswith("factory.stages.") or name == "factory.stages.base":
            continue
        for target, node, _ in _imports(name, path):
            mod = _project_target(target)
            if mod and mod.startswith("factory.stages.") and mod not in ("factory.stages.base", name):
                crossing.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mod}")
    assert crossing == []
