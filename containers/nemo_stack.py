"""The NVIDIA packages each nemo-engine image must carry, and the check that it does.

The generated jobs are checked (``make nemo-check``) against one set of versions; an image
that runs them with others is refused at build time (containers/Dockerfile.nemo) and reported
first by containers/gpu-check.sh. Only the standard library is used: this runs in the NGC
image before anything of the factory is importable.

    python containers/nemo_stack.py requirements nemo   # the pins, one per line (for pip)
    python containers/nemo_stack.py series nemo         # the base image ships the right minor line?
    python containers/nemo_stack.py check nemo          # every pin installed exactly? exit 1 if not
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata as md
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

# What the jobs were checked against: nemo-toolkit[llm]==2.7.3 (which pins nvidia-modelopt
# 0.37.0) with megatron-core 0.15.3 (0.16 lacks the dist_checkpointing strategy NeMo 2.7 saves
# with), as scripts/nemo-env.sh installs them; NeMo-Aligner 0.7.0, its last release.
PINS = {
    "nemo": {"nemo-toolkit": "2.7.3", "nvidia-modelopt": "0.37.0", "megatron-core": "0.15.3"},
    "aligner": {"nemo-aligner": "0.7.0"},
}
# The NGC image each kind is built on. NVIDIA's release manifest (Megatron-Bridge
# docs/releases/software-versions.md) lists NeMo 2.7.0 in nemo:26.02 only (ModelOpt 0.41.0,
# Megatron Core 0.16.0); 25.11 has NeMo 2.6.0, 26.04 no NeMo at all. NeMo-Aligner left the
# images with 25.04 (NeMo Framework changelog): 25.02 is the last that ships it.
BASES = {"nemo": "nvcr.io/nvidia/nemo:26.02", "aligner": "nvcr.io/nvidia/nemo:25.02.01"}
# Pins the Dockerfile installs over the base image's own (with --no-deps), so that the image
# runs what was checked (26.02 ships NeMo 2.7.0 with ModelOpt 0.41.0 and Megatron Core 0.16.0) ...
OVERLAY = {"nemo": ("nemo-toolkit", "nvidia-modelopt", "megatron-core"), "aligner": ()}
# ... and what the base image must already ship, to the minor release, for that to be a small step.
SERIES = {"nemo": ("nemo-toolkit",), "aligner": ()}
# Where the import of a distribution resolves, for the ones whose sources carry their own
# version (MAJOR / MINOR / PATCH / PRE_RELEASE in package_info.py): an editable checkout on
# PYTHONPATH (/opt/NeMo) can shadow what pip installed.
SOURCES = {"nemo-toolkit": "nemo", "megatron-core": "megatron.core", "nemo-aligner": "nemo_aligner"}
ALSO_SHOWN = ("torch", "transformer-engine", "transformers", "lightning")


def installed_version(name: str, version_of: Callable[[str], str] = md.version) -> str | None:
    """The version pip recorded for a distribution (its metadata), or None if absent."""
    try:
        return version_of(name)
    except md.PackageNotFoundError:
        return None


def source_version(module: str, path: list[str] | None = None) -> str | None:
    """The version written in ``<module>/package_info.py`` where ``module`` imports from
    (``path``, or this interpreter's import system), read without importing the module;
    None if the module or that file is absent."""
    top, _, rest = module.partition(".")
    if path is not None:
        spec = importlib.machinery.PathFinder.find_spec(top, path)
    else:
        spec = importlib.util.find_spec(top)  # finds the top package; executes none of it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        info = Path(location).joinpath(*(rest.split(".") if rest else []), "package_info.py")
        if info.is_file():
            return version_from_package_info(info.read_text())
    return None


def version_from_package_info(text: str) -> str | None:
    """``MAJOR = 2``, ``MINOR = 7``, ``PATCH = 0``, ``PRE_RELEASE = 'rc1'`` -> ``"2.7.0rc1"``."""
    values = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value.value
    if not all(k in values for k in ("MAJOR", "MINOR", "PATCH")):
        return None
    return f"{values['MAJOR']}.{values['MINOR']}.{values['PATCH']}{values.get('PRE_RELEASE') or ''}"


def minor_line(version: str) -> tuple[str, str]:
    """``"2.7.3"`` -> ``("2", "7")``; a local or pre-release suffix on the minor part is dropped."""
    major, _, rest = version.partition(".")
    minor = rest.split(".")[0]
    return major, "".join(c for c in minor if c.isdigit()) or minor


def mismatches(pins: dict[str, str], found: dict[str, str | None], series: bool = False) -> list[str]:
    """One phrase per pinned package whose found version differs (or, with ``series``, whose
    major.minor differs); empty when all agree."""
    out = []
    for name, want in pins.items():
        have = found.get(name)
        if have is None:
            out.append(f"{name} not installed (pinned {want})")
        elif series and minor_line(have) != minor_line(want):
            out.append(f"{name} {have} (the jobs need the {'.'.join(minor_line(want))} line)")
        elif not series and have.split("+")[0] != want:
            out.append(f"{name} {have} (pinned {want})")
    return out


def shadowed(found: dict[str, str | None], sources: dict[str, str | None]) -> list[str]:
    """Packages whose import resolves to sources of another version than pip recorded."""
    return [
        f"{name} imports {src} sources, not the installed {found[name]}"
        for name, src in sources.items()
        if src is not None and found.get(name) is not None and src != found[name].split("+")[0]
    ]


def verdict(kind: str, found: dict[str, str | None], sources: dict[str, str | None], series: bool = False) -> str:
    """The one line a build log or gpu-check shows: ``ok    ...`` or ``FAIL  ...``."""
    pins = {n: PINS[kind][n] for n in SERIES[kind]} if series else PINS[kind]
    wrong = mismatches(pins, found, series) + ([] if series else shadowed(found, sources))
    what = "base image" if series else "image"
    if not wrong:
        got = ", ".join(f"{n} {found[n]}" for n in pins) or "nothing is installed over it"
        return f"ok    {kind} {what}: {got}"
    fix = f"build on {BASES[kind]} (build-arg BASE) or change containers/nemo_stack.py PINS with the jobs"
    return f"FAIL  {kind} {what}: {'; '.join(wrong)}; {fix}"


def survey(kind: str) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(metadata version, source version) of every package pinned for ``kind``."""
    found = {name: installed_version(name) for name in PINS[kind]}
    sources = {name: source_version(SOURCES[name]) for name in PINS[kind] if name in SOURCES}
    return found, sources


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("requirements", "series", "check", "show") or argv[1] not in PINS:
        print(f"usage: nemo_stack.py requirements|series|check|show {'|'.join(PINS)}", file=sys.stderr)
        return 2
    action, kind = argv
    if action == "requirements":
        for name in OVERLAY[kind]:  # nothing at all when nothing is installed over the base
            print(f"{name}=={PINS[kind][name]}")
        return 0
    found, sources = survey(kind)
    if action == "show":
        for name in (*PINS[kind], *ALSO_SHOWN):
            print(f"{name:20} {installed_version(name) or 'not installed'}")
        return 0
    line = verdict(kind, found, sources, series=action == "series")
    print(line)
    return 0 if line.startswith("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
