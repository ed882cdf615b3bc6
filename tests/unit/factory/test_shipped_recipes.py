"""Every recipe shipped under recipes/ validates (the folder is walked recursively)."""

import pytest

from factory.recipe import load_recipe
from tests.conftest import RECIPES

SHIPPED = sorted(p for p in RECIPES.rglob("*.yaml"))


def test_recipes_exist():
    names = {p.name for p in SHIPPED}
    assert {"smoke.yaml", "smollm2-minitron.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(RECIPES)))
def test_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.stages, path
    for name in recipe.stages:
        assert len(recipe.config_hash(name)) == 64
