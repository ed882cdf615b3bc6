"""Plan and run a recipe's stages with content-addressed caching.

A stage is skipped when its artifact's config hash and input hashes match the
recipe's and every file still matches its recorded sha256. Input hashes are
the content hashes of upstream artifacts (or fingerprints of sources), so a
stage reruns exactly when something it depends on changed."""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from foundation import artifacts, host
from foundation.configs import to_dict
from foundation.errors import ArtifactError, FactoryError
from foundation.hashing import sha256_json
from factory.recipe import Recipe
from factory.sources import datasets as ds_sources
from factory.sources.produced import dataset_from_artifact
from factory.sources import models as model_sources
from factory.stages.base import StageContext, stage_kinds
from factory.training import dist
from foundation.device import matmul_precision


@dataclass
class Decision:
    stage: str
    action: str  # "cached" | "run" | "corrupted" | "skip"
    reason: str
    inputs: dict[str, str] | None = None  # ref name -> hash (None while upstream must run)
    manifest: dict | None = field(default=None, repr=False)


class Pipeline:
    def __init__(self, recipe: Recipe, runs_dir: str | Path = "runs", progress: bool = True):
        self.recipe = recipe
        self.run_dir = Path(runs_dir) / recipe.name
        self.progress = progress
        self._fingerprints: dict[tuple[str, str], str] = {}

    # -- paths -------------------------------------------------------------
    def artifact_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def work_dir(self, stage: str, inputs: dict[str, str]) -> Path:
        key = sha256_json({"config": self.recipe.config_hash(stage), "inputs": inputs})[:16]
        return self.run_dir / ".work" / f"{stage}-{key}"

    # -- hashing -----------------------------------------------------------
    def _source_hash(self, kind: str, name: str) -> str:
        key = (kind, name)
        if key not in self._fingerprints:
            if kind == "model":
                self._fingerprints[key] = model_sources.fingerprint(self.recipe.models[name], self.recipe.base)
            else:
                self._fingerprints[key] = ds_sources.fingerprint(self.recipe.datasets[name], self.recipe.base)
        return self._fingerprints[key]

    def _inputs(self, stage: str, pending: set[str]) -> tuple[dict[str, str] | None, str]:
        hashes: dict[str, str] = {}
        for fname, (kind, name) in self.recipe.stage_inputs(stage).items():
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
            changed = sorted(k for k in set(inputs) | set(manifest["inputs"])
                             if inputs.get(k) != manifest["inputs"].get(k))
            return Decision(stage, "run", f"input {', '.join(changed)} changed" + resume, inputs)
        check = artifacts.verify(directory, manifest)
        if not check.ok:
            return Decision(stage, "corrupted", f"{directory}: {check.problem}", inputs, manifest)
        return Decision(stage, "cached", f"{directory}", inputs, manifest)

    def _resume_note(self, stage: str, inputs: dict[str, str]) -> str:
        ckpt = self.work_dir(stage, inputs) / "checkpoint.pt"
        return " (will resume from its last checkpoint)" if ckpt.exists() else ""

    def plan(self, force: tuple[str, ...] = (), only: str | None = None) -> list[Decision]:
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
        up to date); ``until``: that stage and what it needs, nothing downstream."""
        self._check_names(force, only)
        wanted = self.needed_for(until) if until else None
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        with self._lock():
            if dist.is_main():
                (self.run_dir / "recipe.resolved.json").write_text(json.dumps(self.recipe.raw, indent=2) + "\n")
            done = []
            for stage in self.recipe.stages:
                if (only is not None and stage != only) or (wanted is not None and stage not in wanted):
                    continue
                if only is not None:
                    for up in self.recipe.upstream(stage):
                        d = self.decide(up)
                        if d.action != "cached":
                            raise FactoryError(f"--only {stage}: upstream stage {up!r} is not up to date "
                                               f"({d.reason}); run it first or drop --only")
                d = self.decide(stage, force=force)
                if d.action == "corrupted":
                    raise ArtifactError(f"{d.reason}: the artifact is corrupted and was not reused; "
                                        f"rerun with --force {stage} to rebuild it")
                if d.action == "cached":
                    self._event(stage, "cached", d.reason)
                    self._say(f"[factory] {stage}: cached ({d.reason})")
                else:
                    self._say(f"[factory] {stage}: running ({d.reason})")
                    self._execute(stage, d.inputs)
                done.append(d)
            return done

    def _execute(self, stage: str, inputs: dict[str, str]) -> dict | None:
        recipe = self.recipe
        cfg = recipe.stages[stage]
        kind = stage_kinds()[cfg.kind]
        work = self.work_dir(stage, inputs)
        main = dist.is_main()
        if main:
            for stale in (self.run_dir / ".work").glob(f"{stage}-*"):
                if stale != work:
                    shutil.rmtree(stale, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            out = work / "out"
            if out.exists():
                shutil.rmtree(out)
            out.mkdir()
            resolved = self._resolve_inputs(stage)  # one process fetches and converts sources
        dist.barrier()
        if not main:  # other ranks compute alongside rank 0 but publish nothing
            out = Path(tempfile.mkdtemp(prefix=f"factory-{stage}-rank{dist.world()[0]}-"))
            resolved = self._resolve_inputs(stage)  # from the cache rank 0 filled
        models, datasets, sources = resolved
        fields = recipe.stage_inputs(stage)
        ctx = StageContext(name=stage, config=cfg, seed=recipe.seed, base=recipe.base, models=models,
                           datasets=datasets, out_dir=out, work_dir=work, progress=self.progress,
                           cache_dir=self.run_dir / ".cache" / stage,
                           input_hashes={f: inputs[n] for f, (_, n) in fields.items()})
        self._event(stage, "start", "")
        machine = host.describe() if main else None  # probed once per process, outside the stage's wall time
        t0 = time.perf_counter()
        # every stage kind that has the knob gets it applied here, around the whole stage
        with matmul_precision(getattr(cfg, "matmul_precision", "highest")):
            result = kind.run(ctx)
        wall = time.perf_counter() - t0
        # Every rank finishes the stage body (which may still read the shared work
        # dir, e.g. its metrics log) before rank 0 publishes and removes that dir.
        dist.barrier()
        if not main:
            dist.barrier()  # wait until rank 0 has published the artifact
            shutil.rmtree(out, ignore_errors=True)
            return None
        manifest = artifacts.write_manifest(out, {
            "kind": cfg.kind, "stage": stage, "recipe": recipe.name, "recipe_file": str(recipe.file),
            "engine": recipe.engine_of(stage), "seed": recipe.seed, "config": to_dict(cfg),
            "config_hash": recipe.config_hash(stage), "inputs": inputs,
            "input_fields": {f: n for f, (_, n) in recipe.stage_inputs(stage).items()},
            "sources": sources, "tokens": result.tokens, "wall_s": round(wall, 3), "host": machine,
            "metrics": result.metrics, **result.extra,
        })
        artifacts.replace_dir(out, self.artifact_dir(stage))
        shutil.rmtree(work, ignore_errors=True)
        self._event(stage, "done", str(self.artifact_dir(stage)), wall_s=wall, metrics=result.metrics)
        self._say(f"[factory] {stage}: done in {wall:.1f}s -> {self.artifact_dir(stage)}")
        dist.barrier()
        return manifest

    @staticmethod
    def _say(message: str) -> None:
        if dist.is_main():
            print(message, file=sys.stderr)

    def _resolve_inputs(self, stage: str) -> tuple[dict, dict, dict]:
        """Field -> local model dir, field -> dataset spec, and a description of each source."""
        recipe = self.recipe
        models, datasets, sources = {}, {}, {}
        for fname, (rkind, name) in recipe.stage_inputs(stage).items():
            if rkind == "model" and name in recipe.stages:
                models[fname] = self.artifact_dir(name)
                sources[name] = f"stage {name}"
            elif rkind == "model":
                models[fname] = model_sources.materialize(recipe.models[name], recipe.base)
                sources[name] = recipe.models[name].describe()
            elif name in recipe.stages:  # a dataset made by an earlier stage (e.g. verifier-built pairs)
                datasets[fname] = dataset_from_artifact(self.artifact_dir(name), f"stages.{stage}.{fname}")
                sources[name] = f"stage {name}"
            else:
                datasets[fname] = recipe.datasets[name]
                sources[name] = f"dataset ({datasets[fname].licence_of()})"
        return models, datasets, sources

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
