"""The last step of every nemo job: the exported HF checkpoint becomes an
artifact. Runs inside the job (``python -m factory.engines.nemo.finalize
TEMPLATE``), so a Slurm chain needs no process on the login node: the
manifest gets the hashes of the upstream artifacts as they are when the job
ends, hashes every file, and the directory is renamed into place, exactly as
the native pipeline does, so caching, `factory ls`, eval and release treat
both engines' artifacts alike."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from foundation import artifacts, host
from foundation.errors import ArtifactError


def input_hashes(refs: dict, run_dir: Path) -> dict[str, str]:
    out = {}
    for name, ref in refs.items():
        if "hash" in ref:
            out[name] = ref["hash"]
            continue
        manifest = artifacts.read_manifest(run_dir / ref["artifact"])
        if manifest is None:
            raise ArtifactError(f"{run_dir / ref['artifact']}: upstream artifact {name!r} is missing")
        out[name] = manifest["hash"]
    return out


def finalize(template_path: Path) -> Path:
    template = json.loads(template_path.read_text())
    job_dir = template_path.resolve().parent
    run_dir = job_dir.parent.parent
    out = run_dir / template["export"]
    if not (out / "config.json").is_file():
        raise ArtifactError(f"{out}: the export left no HF checkpoint (no config.json)")
    started = job_dir / ".started"
    wall = time.time() - float(started.read_text()) if started.is_file() else None
    body = {
        k: template[k]
        for k in (
            "kind",
            "stage",
            "recipe",
            "recipe_file",
            "engine",
            "seed",
            "config",
            "config_hash",
            "input_fields",
            "sources",
            "tokens",
        )
    }
    body.update(
        inputs=input_hashes(template["input_refs"], run_dir),
        wall_s=round(wall, 3) if wall is not None else None,
        metrics=template.get("metrics", {}),
        job=template["job"],
        host=host.describe(),
    )
    artifacts.write_manifest(out, body)
    target = run_dir / template["output"]
    artifacts.replace_dir(out, target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m factory.engines.nemo.finalize JOB_DIR/manifest.template.json", file=sys.stderr)
        return 2
    try:
        print(f"[factory] artifact {finalize(Path(argv[0]))}", file=sys.stderr)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
