"""Job specs -> files: the job dir ``$RUN_DIR/.nemo/<stage>/`` holds everything a
job runs, readable and runnable by hand:

    config.yaml              the job spec (what the scripts read)
    run.sh                   prepare / train / finish steps (``bash run.sh all``)
    job.py, job_tools.py     NeMo 2 jobs: import, run, export (scripts/nemo2_job.py)
    walltime.py              NeMo 2 jobs: progress.json, and a checkpointed stop before a time limit
    render_chat.py           NeMo-Aligner jobs: conversations -> Aligner jsonl
    manifest.template.json   what finalize puts in the artifact's manifest
    launch.sh (+ job.sbatch) how the chosen launcher starts it"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

SCRIPTS = Path(__file__).parent / "scripts"
FILES = {
    "nemo2": {"job.py": "nemo2_job.py", "job_tools.py": "job_tools.py", "walltime.py": "walltime.py"},
    "aligner": {"render_chat.py": "render_chat.py", "job_tools.py": "job_tools.py"},
}
_VAR = re.compile(r"\$[A-Z_]+")


def shell_word(arg: str) -> str:
    """One argument for bash: $VARS expand, everything else is literal."""
    if arg == "$DIST":
        return "$DIST"  # a command prefix: split on purpose
    if not _VAR.search(arg):
        return shlex.quote(arg)
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    escaped = re.sub(r"\$(?![A-Z_])", r"\\$", escaped)  # only our variables expand
    return f'"{escaped}"'


def shell_line(argv: list[str]) -> str:
    """A command; long ones break before each option, an option staying with its value."""
    words = [shell_word(a) for a in argv]
    if len(" ".join(words)) <= 100:
        return " ".join(words)
    chunks: list[str] = []
    for raw, word in zip(argv, words):
        if chunks and not raw.startswith("-") and chunks[-1].startswith("--") and " " not in chunks[-1]:
            chunks[-1] += " " + word
        elif chunks and len(chunks) == 1 and not raw.startswith("-") and len(chunks[0]) < 12:
            chunks[0] += " " + word  # the program: `python script.py`
        else:
            chunks.append(word)
    return " \\\n    ".join(chunks)


# NeMo-Aligner stops itself when exp_manager.max_time_per_run (DD:HH:MM:SS) has passed, saving a
# checkpoint first; the Slurm batch script sets FACTORY_MAX_TIME from the time its allocation has left.
ALIGNER_STOP = "++exp_manager.max_time_per_run=$FACTORY_MAX_TIME"


def trained_check(spec: dict) -> str:
    """A shell test that succeeds once the train step has done all of its work (the Slurm
    batch script requeues a job whose training stopped before that)."""
    if spec["backend"] == "aligner":  # Aligner writes the .nemo only when training reaches its end
        return f'find "$RUN_DIR/{spec["work"]}/aligner" -name "*.nemo" -print 2>/dev/null | grep -q .'
    if spec["nemo2"]["api"] == "llm.prune":  # one pass, no checkpoints: done when it saved
        return f'test -d "$RUN_DIR/{spec["nemo2"]["save_path"]}"'
    return 'grep -q \'"done": true\' "$JOB_DIR/progress.json" 2>/dev/null'  # walltime.py writes it


def run_script(spec: dict) -> str:
    """run.sh: the job's steps as shell functions."""
    res = spec["resources"]
    steps = spec["steps"]
    train = steps["train"] + ([ALIGNER_STOP] if spec["backend"] == "aligner" else [])

    def body(cmds: list[list[str]]) -> str:
        return "\n".join("  " + shell_line(c).replace("\n", "\n  ") for c in cmds) or "  :"

    return f"""#!/usr/bin/env bash
# Stage {spec["stage"]} ({spec["kind"]}) of recipe {spec["recipe"]}: a {spec["backend"]} job of the factory's
# nemo engine. Edit config.yaml and rerun rather than editing this file.
#   bash run.sh all                      prepare, train, finish
#   bash run.sh prepare|train|finish     one step (Slurm runs train on every task with DIST=python)
#   bash run.sh trained                  exit 0 once training has done all of its steps
set -euo pipefail
JOB_DIR=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
RUN_DIR=${{FACTORY_RUN_DIR:-$(cd "$JOB_DIR/../.." && pwd)}}
NEMO_DIR=${{NEMO_DIR:-/opt/NeMo}}
ALIGNER_DIR=${{ALIGNER_DIR:-/opt/NeMo-Aligner}}
DIST=${{DIST:-torchrun --nproc-per-node={res["gpus_per_node"]} --nnodes={res["nodes"]}}}
FACTORY_MAX_TIME=${{FACTORY_MAX_TIME:-null}}
export JOB_DIR RUN_DIR NEMO_DIR ALIGNER_DIR
export PYTHONPATH="$JOB_DIR${{PYTHONPATH:+:$PYTHONPATH}}"

prepare() {{
  date +%s > "$JOB_DIR/.started"
{body(steps["prepare"])}
}}

train() {{
{body([train])}
}}

trained() {{
  {trained_check(spec)}
}}

finish() {{
{body(steps["finish"])}
}}

case "${{1:-all}}" in
  prepare) prepare ;;
  train) train ;;
  finish) finish ;;
  trained) trained ;;
  all) prepare; train; finish ;;
  *) echo "usage: run.sh [all|prepare|train|finish|trained]" >&2; exit 2 ;;
esac
"""


def spec_yaml(spec: dict) -> str:
    head = f"# Job spec of stage {spec['stage']} (recipe {spec['recipe']}), written by the factory's nemo engine.\n"
    return head + yaml.safe_dump(spec, sort_keys=False, width=120)


def write_job(spec: dict, job_dir: Path, manifest_template: dict | None, launch: dict[str, str]) -> list[Path]:
    """Write the job dir; returns the files written."""
    job_dir.mkdir(parents=True, exist_ok=True)
    files = {"config.yaml": spec_yaml(spec), "run.sh": run_script(spec)}
    for name, src in FILES[spec["backend"]].items():
        files[name] = (SCRIPTS / src).read_text()
    if manifest_template is not None:
        files["manifest.template.json"] = json.dumps(manifest_template, indent=2, default=str) + "\n"
    files.update(launch)
    written = []
    for name, text in files.items():
        path = job_dir / name
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written
