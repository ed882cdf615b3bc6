"""bench/gpu_session.sh, the prepared GPU command, stays runnable: the shell parses it, the
recipe it runs exists, and every option it passes to a bench is one that bench accepts."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "bench/gpu_session.sh"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_recipes_it_names_are_shipped():
    recipes = set(re.findall(r"recipes/[\w.-]+\.yaml", SCRIPT.read_text()))
    assert "recipes/smollm2-minitron-gpu.yaml" in recipes
    assert all((ROOT / r).is_file() for r in recipes), recipes


@pytest.mark.parametrize("bench", ["planner_validation.py", "scale_gpu.py", "eval_speed_mc.py"])
def test_every_option_it_passes_is_accepted(bench):
    text = SCRIPT.read_text().replace("\\\n", " ")
    calls = [line for line in text.splitlines() if f"bench/{bench}" in line and "part " in line]
    assert calls, bench
    used = set(re.findall(r"\s(--[a-z][a-z0-9-]*)", " ".join(calls)))
    helptext = subprocess.run(
        [sys.executable, str(ROOT / "bench" / bench), "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert used and all(opt in helptext for opt in used), (bench, used)
