"""Plan and run a recipe's stages with content-addressed caching.

A stage is skipped when its artifact's config hash and input hashes match the
recipe's and every file still matches its recorded sha256. Input hashes are
the content hashes of upstream artifacts (or fingerprints of sources), so a
stage reruns exactly when something it depends on changed.

``Pipeline`` is the one orchestrator: it owns the stage loop, these decisions,
the run lock, events and manifests. Where a stage runs is its executor's
business (``factory.executors``): in this process, or as a job (nemo)."""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from factory.engines.base import Executor, Outcome, SourceHashes, StageRun, input_fields, manifest_head
from factory.executors import EXECUTORS, executor_name
from factory.recipe import Recipe
from factory.training import dist
from foundation import artifacts, storage
from foundation.errors import ArtifactError, FactoryError
from foundation.hashing import sha256_json


@dataclass
class Decision:
    """What the pipeline does with a stage, and why (``factory plan`` prints these)."""

    stage: str
    action: str  # "cached" | "run" | "corrupted" | "skip"
    reason: str
    inputs: dict[str, str] | None = None  # ref name -> hash (None while upstream must run)
    manifest: dict | None = field(default=None, repr=False)


class Pipeline:
    """One recipe's run directory: what would run and why (``plan``), and running it (``run``)."""

    def __init__(self, recipe: Recipe, runs_dir: str | Path = "runs", progress: bool = True):
        self.recipe = recipe
        self.run_dir = Path(runs_dir) / recipe.name
        self.progress = progress
        self._source_hash = SourceHashes(recipe)
        self._executors: dict[str, Executor] = {}

    # -- paths -------------------------------------------------------------
    def artifact_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def work_dir(self, stage: str, inputs: dict[str, str]) -> Path:
        key = sha256_json({"config": self.recipe.config_hash(stage), "inputs": inputs})[:16]
        return self.run_dir / ".work" / f"{stage}-{key}"

    def executor(self, stage: str) -> Executor:
        """The executor that runs ``stage``, one per engine for the whole run."""
        name = executor_name(self.recipe, stage)
        if name not in self._executors:
            self._executors[name] = EXECUTORS[name](self.recipe)
        return self._executors[name]

    # -- hashing -----------------------------------------------------------
    def _inputs(self, stage: str, pending: set[str]) -> tuple[dict[str, str] | None, str]:
        hashes: dict[str, str] = {}
        for _fname, (kind, name) in self.recipe.stage_inputs(stage).items():
            if name in self.recipe.stages:
                if name in pending:
                    return None, f"upstream stage {name!r} will run"
                manifest = artifacts.read_manifest(self.artifact_dir(name))
                if manifest is None:
                    return None, f"upstream stage {name!r} has no artifact"
                hashes[name] = manifest["hash"]
            else:
                hashes[name] = self._source_hash(kind, name)
        return hashes, ""

    # -- decisions ---------------------------------------------------------
    def decide(self, stage: str, pending: set[str] = frozenset(), force: tuple[str, ...] = ()) -> Decision:
        """Reuse or run ``stage``; ``pending``: upstream stages that will run first (their hashes are unknown)."""
        inputs, why = self._inputs(stage, pending)
        if stage in force:
            return Decision(stage, "run", "forced", inputs)
        if inputs is None:
            return Decision(stage, "run", why)
        directory = self.artifact_dir(stage)
        manifest = artifacts.read_manifest(directory)
        resume = self._resume_note(stage, inputs)
        if manifest is None:
            return Decision(stage, "run", "no artifact yet" + resume, inputs)
        cfg = self.recipe.stages[stage]
        if manifest["kind"] != cfg.kind or manifest["config_hash"] != self.recipe.config_hash(stage):
            return Decision(stage, "run", "config changed" + resume, inputs)
        if manifest["inputs"] != inputs:
            changed = sorted(
                k for k in set(inputs) | set(manifest["inputs"]) if inputs.get(k) != manifest["inputs"].get(k)
            )
            return Decision(stage, "run", f"input {', '.join(changed)} changed" + resume, inputs)
        check = artifacts.verify(directory, manifest)
        if not check.ok:
            return Decision(stage, "corrupted", f"{directory}: {check.problem}", inputs, manifest)
        return Decision(stage, "cached", f"{directory}", inputs, manifest)

    def _resume_note(self, stage: str, inputs: dict[str, str]) -> str:
        ckpt = self.work_dir(stage, inputs) / "checkpoint.pt"
        if not ckpt.exists():
            return ""
        if (why := storage.quick_problem(ckpt)) is not None:  # the stage reports and discards it when it starts
            return f" (its last checkpoint is unusable, {why}: it will start over)"
        return " (will resume from its last checkpoint)"

    def plan(self, force: tuple[str, ...] = (), only: str | None = None) -> list[Decision]:
        """The decision for every stage, as ``run`` would take them; runs nothing."""
        self._check_names(force, only)
        pending: set[str] = set()
        out = []
        for stage in self.recipe.stages:
            if only is not None and stage != only:
                d = self.decide(stage, pending, ())
                out.append(Decision(stage, "skip", f"--only {only} (currently: {d.action})", d.inputs, d.manifest))
                continue
            d = self.decide(stage, pending, force)
            if d.action != "cached":
                pending.add(stage)
            out.append(d)
        return out

    def _check_names(self, force, only) -> None:
        for name in list(force) + ([only] if only else []):
            if name not in self.recipe.stages:
                raise FactoryError(f"no stage {name!r} in {self.recipe.file} (stages: {', '.join(self.recipe.stages)})")

    # -- running -----------------------------------------------------------
    def needed_for(self, stage: str) -> set[str]:
        """``stage`` and every stage it depends on, directly or not."""
        self._check_names((stage,), None)
        out, todo = set(), [stage]
        while todo:
            s = todo.pop()
            if s not in out:
                out.add(s)
                todo += self.recipe.upstream(s)
        return out

    def run(self, force: tuple[str, ...] = (), only: str | None = None, until: str | None = None) -> list[Decision]:
        """Run (or reuse) every stage; ``only``: just that one (its inputs must be
        up to date); ``until``: that stage and what it needs, nothing downstream.

        A stage an executor queues as a job (Slurm) is pending: later stages that
        can be queued behind it are, and the run stops at the first one that cannot
        (rerunning the same command after the jobs finish carries on from there)."""
        self._check_names(force, only)
        wanted = self.needed_for(until) if until else None
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        with self._lock():
            if dist.is_main():
                artifacts.sweep_trash(self.run_dir)
                storage.write_text(
                    self.run_dir / "recipe.resolved.json",
                    json.dumps(self.recipe.raw, indent=2) + "\n",
                    "the resolved recipe",
                )
            done, queued = [], {}  # queued: stage -> id of its job, still unfinished
            for stage in self.recipe.stages:
                if (only is not None and stage != only) or (wanted is not None and stage not in wanted):
                    continue
                d = self._decide_now(stage, only, force, queued)
                if d.action == "cached":
                    self._event(stage, "cached", d.reason)
                    self._say(f"[factory] {stage}: cached ({d.reason})")
                    done.append(d)
                    continue
                waiting = [u for u in self.recipe.upstream(stage) if u in queued]
                if waiting and not self.executor(stage).can_queue(stage):
                    self._say(
                        f"[factory] {stage}: waits for Slurm jobs {', '.join(queued[u] for u in waiting)} "
                        f"({', '.join(waiting)}); rerun this command when they have finished"
                    )
                    break
                job_id = self._execute(stage, d, [queued[u] for u in waiting])
                if job_id is not None:
                    queued[stage] = job_id
                done.append(d)
            return done

    def _decide_now(self, stage: str, only: str | None, force: tuple[str, ...], queued: dict) -> Decision:
        """The decision for a stage about to run; stale inputs of ``--only`` and corrupted artifacts are errors."""
        if only is not None:
            for up in self.recipe.upstream(stage):
                d = self.decide(up)
                if d.action != "cached":
                    raise FactoryError(
                        f"--only {stage}: upstream stage {up!r} is not up to date "
                        f"({d.reason}); run it first or drop --only"
                    )
        d = self.decide(stage, pending=set(queued), force=force)
        if d.action == "corrupted":
            raise ArtifactError(
                f"{d.reason}: the artifact is corrupted and was not reused; rerun with --force {stage} to rebuild it"
            )
        return d

    def _execute(self, stage: str, d: Decision, after: list[str]) -> str | None:
        """Run ``stage`` on its executor; returns the id of a queued job, if it queued one."""
        executor = self.executor(stage)
        self._say(f"[factory] {stage}: {executor.verb} ({d.reason})")
        job = StageRun(
            stage=stage,
            run_dir=self.run_dir,
            inputs=d.inputs,
            work_dir=self.work_dir(stage, d.inputs) if d.inputs is not None else None,
            fingerprint=self._source_hash,
            event=lambda event, detail: self._event(stage, event, detail),
            say=self._say,
            after=after,
            progress=self.progress,
        )
        outcome = executor.run(job)
        if outcome.out_dir is not None:
            self._publish(stage, d.inputs, outcome)
        return outcome.job_id

    def _publish(self, stage: str, inputs: dict[str, str], outcome: Outcome) -> dict | None:
        """Write the manifest of a finished output dir and make it the stage's artifact (rank 0)."""
        if not dist.is_main():
            dist.barrier()  # wait until rank 0 has published the artifact
            shutil.rmtree(outcome.out_dir, ignore_errors=True)
            return None
        manifest = artifacts.write_manifest(
            outcome.out_dir,
            {
                **manifest_head(self.recipe, stage),
                "inputs": inputs,
                "input_fields": input_fields(self.recipe, stage),
                **outcome.body,
            },
        )
        artifacts.replace_dir(outcome.out_dir, self.artifact_dir(stage))
        shutil.rmtree(self.work_dir(stage, inputs), ignore_errors=True)
        self._event(
            stage, "done", str(self.artifact_dir(stage)), wall_s=outcome.wall_s, metrics=outcome.body.get("metrics")
        )
        self._say(f"[factory] {stage}: done in {outcome.wall_s:.1f}s -> {self.artifact_dir(stage)}")
        dist.barrier()
        return manifest

    @staticmethod
    def _say(message: str) -> None:
        if dist.is_main():
            print(message, file=sys.stderr)

    def _event(self, stage: str, event: str, detail: str, **extra) -> None:
        if not dist.is_main():
            return
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "event": event, "detail": detail, **extra}
        with open(self.run_dir / "events.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    @contextmanager
    def _lock(self):
        if not dist.is_main():  # rank 0 holds the lock for the whole group
            yield
            return
        path = self.run_dir / ".lock"
        with open(path, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FactoryError(f"{self.run_dir} is in use by another factory run") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
