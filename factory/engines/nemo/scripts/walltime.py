"""How a training job and its Slurm batch script talk across a time limit (copied
into the job dir as walltime.py).

The batch script (launchers.sbatch_script) gets USR1 from Slurm a grace period
before the time limit and creates ``$JOB_DIR/stop-requested``; the training
process sees it at the end of its next step, stops, and NeMo's ModelCheckpoint
saves the last checkpoint as training ends; the script then requeues the job,
which resumes from that checkpoint. The job writes ``$JOB_DIR/progress.json``
(``step``, ``total``, ``done``) as it goes, which ``factory status`` reads and
which tells the batch script whether training is complete.

    python walltime.py progress JOB_DIR     # print the progress record
    python walltime.py trained JOB_DIR      # exit 0 when the progress says done"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STOP = "stop-requested"
PROGRESS = "progress.json"
WRITE_EVERY_S = 30.0  # progress is rewritten at most this often (and at the end)


def job_dir() -> Path:
    """The job dir as run.sh exports it (the working directory when built outside a job)."""
    return Path(os.environ.get("JOB_DIR") or os.getcwd())


def stop_requested(where: Path) -> bool:
    """Whether the batch script asked training to save and stop (its time limit is near)."""
    return (where / STOP).exists()


def write_progress(where: Path, step: int, total: int | None, done: bool = False) -> None:
    """Replace the progress record in one rename, so a reader never sees half of it."""
    tmp = where / f".{PROGRESS}.{os.getpid()}"
    tmp.write_text(json.dumps({"step": step, "total": total, "done": done, "time": round(time.time(), 1)}) + "\n")
    os.replace(tmp, where / PROGRESS)


def read_progress(where: Path) -> dict | None:
    try:
        return json.loads((where / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


def lightning_callback(where: Path | None = None):
    """The Lightning callback of a NeMo 2 training job: records progress on rank 0 and
    stops every rank at the same step once a stop is requested (the trainer's
    ModelCheckpoint then saves the last checkpoint, which AutoResume resumes from)."""
    from lightning.pytorch import Callback  # only inside the NeMo container

    where = where or job_dir()

    class Walltime(Callback):
        """Progress records and a checkpointed stop before the allocation ends."""

        def __init__(self) -> None:
            self.written = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.monotonic()
            if trainer.is_global_zero and now - self.written >= WRITE_EVERY_S:
                write_progress(where, trainer.global_step, trainer.max_steps)
                self.written = now
            # one all-reduce per step: every rank stops at the same step, or the save would hang
            if trainer.strategy.reduce_boolean_decision(stop_requested(where), all=False):
                trainer.should_stop = True

        def on_train_end(self, trainer, pl_module) -> None:
            if trainer.is_global_zero:
                step, total = trainer.global_step, trainer.max_steps
                write_progress(where, step, total, done=total is not None and total > 0 and step >= total)

    return Walltime()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("progress", "trained"):
        print("usage: walltime.py progress|trained JOB_DIR", file=sys.stderr)
        return 2
    record = read_progress(Path(argv[1]))
    if argv[0] == "progress":
        print(json.dumps(record))
        return 0
    return 0 if record and record.get("done") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
