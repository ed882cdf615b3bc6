"""evals.tasks.pysource: model output parsed as Python without the compiler's warnings."""

import ast
import warnings

import pytest

from evals.tasks.pysource import parse

WARNS = 'pattern = "\\d+"\n'  # an invalid escape sequence: parses, but the compiler warns


def test_the_text_used_here_does_warn_under_plain_ast_parse():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ast.parse(WARNS)
    assert any("invalid escape sequence" in str(w.message) for w in seen)


def test_parse_is_silent_and_returns_the_same_tree():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        tree = parse(WARNS)
    assert seen == []
    assert isinstance(tree, ast.Module)
    assert ast.dump(tree) == ast.dump(ast.parse(WARNS))
    (assign,) = tree.body
    assert assign.targets[0].id == "pattern" and assign.value.value == "\\d+"


def test_parse_restores_the_callers_warning_filters():
    before = list(warnings.filters)
    parse(WARNS)
    assert warnings.filters == before


def test_eval_mode_gives_an_expression():
    tree = parse("f(1, x=2)", mode="eval")
    assert isinstance(tree, ast.Expression)
    assert tree.body.func.id == "f" and [k.arg for k in tree.body.keywords] == ["x"]


def test_prose_raises_a_syntax_error_as_ast_parse_does():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(SyntaxError, match="invalid decimal literal"):
            parse("Sort the 3rd list first.")
    assert seen == []
