"""Parsing model-written text as Python.

Model output is mostly prose; ``ast.parse`` on prose emits ``SyntaxWarning``s
(``invalid decimal literal`` for "3rd"; invalid escape sequences, a
DeprecationWarning before Python 3.12) on stderr before it fails or succeeds. They say nothing about the model and bury real
warnings, so they are silenced here, and only here.
"""

from __future__ import annotations

import ast
import warnings


def parse(text: str, mode: str = "exec") -> ast.AST:
    """``ast.parse(text, mode=mode)`` without its warnings; raises as it does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compiling the text warns of nothing else
        return ast.parse(text, mode=mode)
