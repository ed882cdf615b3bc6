"""scripts/nemo-env.lock: the NeMo check environment's versions, the same ones the
engine's rules and the images are written for."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from factory.engines.nemo import capabilities

ROOT = Path(__file__).resolve().parents[5]
LOCK = ROOT / "scripts" / "nemo-env.lock"
SCRIPT = ROOT / "scripts" / "nemo-env.sh"
STACK = {"nemo-toolkit": "2.7.3", "megatron-core": "0.15.3", "nvidia-modelopt": "0.37.0"}


def pins(text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line; any other requirement line is an error."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        assert m, f"{LOCK}:{n}: not a name==version pin: {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_the_lock_pins_the_checked_stack():
    locked = pins(LOCK.read_text())
    assert {k: locked.get(k) for k in STACK} == STACK
    assert len(locked) > 100  # the whole environment, not only the stack
    assert not any("+" in v for v in locked.values()), "local versions (+cpu) match only one index"


def test_a_bad_lock_line_is_named():
    with pytest.raises(AssertionError, match=r"nemo-env.lock:2: not a name==version pin: '-e /src'"):
        pins("torch==2.13.0\n-e /src\n")


def test_the_engine_rules_follow_the_locked_modelopt():
    version = getattr(capabilities, "MODELOPT_VERSION", None)
    if version is None:
        pytest.skip("capabilities.MODELOPT_VERSION not defined")
    assert version == pins(LOCK.read_text())["nvidia-modelopt"]


def test_the_env_script_installs_with_the_lock():
    text = SCRIPT.read_text()
    assert '"$root/scripts/nemo-env.lock"' in text and '"${lock[@]}"' in text
    # the script's own constraints agree with the lock where both pin
    assert "megatron-core==0.15.3" in text
    assert re.search(r"nemo_version=\$\{NEMO_VERSION:-2\.7\.3\}", text)


def test_the_images_pin_what_the_lock_pins():
    path = ROOT / "containers" / "nemo_stack.py"
    if not path.is_file():
        pytest.skip("no containers/nemo_stack.py")
    spec = importlib.util.spec_from_file_location("nemo_stack_for_lock", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    locked = pins(LOCK.read_text())
    assert {k: locked[k] for k in module.PINS["nemo"]} == module.PINS["nemo"]
