"""Settings of the nemo engine: the recipe's ``nemo:`` block.

They say where and how jobs run (images, GPUs, parallelism, launcher), not
what they compute, so none of them is part of a stage's config hash. Every
key can be overridden on the command line, e.g. ``nemo.gpus_per_node=4`` or
``nemo.stages.distill.tensor_parallel=8``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from foundation.configs import field, require


@dataclass
class StageResources:
    """Per-stage overrides of the engine-wide resources (unset keys inherit)."""

    nodes: int | None = field(None, help="nodes for this stage's job")
    gpus_per_node: int | None = field(None, help="GPUs per node for this stage's job")
    tensor_parallel: int | None = field(None, help="tensor-parallel size")
    pipeline_parallel: int | None = field(None, help="pipeline-parallel size")
    micro_batch_size: int | None = field(None, help="sequences per GPU per forward pass")
    time: str | None = field(None, help="Slurm time limit for this stage, e.g. 04:00:00")

    def check(self, where: str) -> None:
        for key in ("nodes", "gpus_per_node", "tensor_parallel", "pipeline_parallel", "micro_batch_size"):
            v = getattr(self, key)
            require(v is None or v > 0, where, key, "must be positive")
        _check_time(self.time, where, "time")


@dataclass(frozen=True)
class Resources:
    nodes: int
    gpus_per_node: int
    tensor_parallel: int
    pipeline_parallel: int
    micro_batch_size: int
    time: str

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def data_parallel(self) -> int:
        return self.world // (self.tensor_parallel * self.pipeline_parallel)

    def as_dict(self) -> dict:
        return {
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "tensor_parallel": self.tensor_parallel,
            "pipeline_parallel": self.pipeline_parallel,
            "data_parallel": self.data_parallel,
            "micro_batch_size": self.micro_batch_size,
        }


_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_seconds(text: str) -> int:
    """A Slurm time limit in seconds: minutes, minutes:seconds, hours:minutes:seconds,
    days-hours, days-hours:minutes or days-hours:minutes:seconds (sbatch --time)."""
    m = _SLURM_TIME.match(str(text).strip())
    if m is None:
        raise ValueError(f"{text!r} is not a Slurm time limit (e.g. 04:00:00, 3-00:00:00 or 90)")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # days-hours[:minutes[:seconds]]
        return ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    if c is not None:  # hours:minutes:seconds
        return (a * 60 + b) * 60 + c
    return a * 60 + (b or 0)  # minutes[:seconds]


def _check_time(text: str | None, where: str, key: str) -> None:
    if text is not None:
        try:
            seconds = slurm_seconds(text)
        except ValueError as e:
            require(False, where, key, str(e))
        require(seconds > 0, where, key, "must be longer than zero")


@dataclass
class SlurmSettings:
    account: str | None = field(None, help="sbatch --account")
    partition: str | None = field(None, help="sbatch --partition")
    time: str = field("04:00:00", help="default time limit per job")
    mounts: list[str] = field(factory=list, help="extra container mounts (host:container), e.g. a data lake")
    extra_sbatch: list[str] = field(factory=list, help="further #SBATCH lines, e.g. --exclusive or --qos=high")
    signal_grace: int = field(
        600,
        help="seconds before a job's time limit at which Slurm signals it (sbatch --signal=B:USR1@N): "
        "training saves a checkpoint and the job requeues itself to resume from it",
    )
    max_requeues: int = field(
        8, help="how often one stage's job may requeue itself at its time limit before it stops (0: never)"
    )
    cpu_partition: str | None = field(
        None, help="sbatch --partition of tokenize jobs (nemo.tokenize_on=cluster); unset: slurm.partition"
    )
    tokenize_time: str = field("04:00:00", help="time limit of a tokenize job (nemo.tokenize_on=cluster)")

    def check(self, where: str) -> None:
        _check_time(self.time, where, "time")
        _check_time(self.tokenize_time, where, "tokenize_time")
        require(self.signal_grace > 0, where, "signal_grace", "must be positive")
        require(self.signal_grace <= 65535, where, "signal_grace", "Slurm's --signal takes at most 65535 seconds")
        require(self.max_requeues >= 0, where, "max_requeues", "must be zero or more")


@dataclass
class NeMoSettings:
    image: str = field(
        "minitron-factory-nemo:latest",
        help="image for NeMo 2 / ModelOpt jobs (correct, prune, distill): containers/Dockerfile.nemo "
        "built on an NGC NeMo image",
    )
    aligner_image: str = field(
        "minitron-factory-aligner:latest",
        help="image for NeMo-Aligner jobs (sft, dpo): containers/Dockerfile.nemo built on an "
        "NGC NeMo image that ships /opt/NeMo-Aligner",
    )
    launcher: Literal["docker", "torchrun", "slurm"] = field(
        "docker",
        help="docker: one node, in the image; torchrun: one node, NeMo installed on the host; "
        "slurm: sbatch + pyxis/enroot containers",
    )
    nodes: int = field(1, help="nodes per job")
    gpus_per_node: int = field(8, help="GPUs per node")
    tensor_parallel: int = field(1, help="tensor-parallel size")
    pipeline_parallel: int = field(1, help="pipeline-parallel size")
    micro_batch_size: int = field(
        1, help="sequences per GPU per forward pass (the recipe's batch_size x grad_accum is the global batch)"
    )
    precision: Literal["bf16-mixed", "16-mixed", "32"] = field("bf16-mixed", help="training precision")
    workers: int = field(
        8,
        help="worker processes that tokenize a text dataset into Megatron shards (on the submitting host, "
        "or the CPUs of a cluster tokenize job)",
    )
    tokenize_on: Literal["host", "cluster"] = field(
        "host",
        help="where a stage's text dataset is tokenized: host: on the submitting host before the job is "
        "launched; cluster: in a Slurm CPU job (slurm launcher only) that the stage's job waits for",
    )
    slurm: SlurmSettings = field(factory=SlurmSettings, help="Slurm submission settings")
    stages: dict[str, StageResources] = field(factory=dict, help="per-stage resource overrides")

    def check(self, where: str) -> None:
        for key in ("nodes", "gpus_per_node", "tensor_parallel", "pipeline_parallel", "micro_batch_size", "workers"):
            require(getattr(self, key) > 0, where, key, "must be positive")
        require(
            self.tokenize_on == "host" or self.launcher == "slurm",
            where,
            "tokenize_on",
            f"'cluster' submits a Slurm job: it needs launcher slurm, not {self.launcher}",
        )
        grace = self.slurm.signal_grace
        for stage, o in [("", None), *self.stages.items()]:
            limit = slurm_seconds(self.resources(stage).time) if o is None or o.time else None
            if limit is not None and grace >= limit:
                key = f"stages.{stage}.time" if stage else "slurm.time"
                require(False, where, key, f"{limit} s leaves no time before slurm.signal_grace ({grace} s)")

    def resources(self, stage: str) -> Resources:
        o = self.stages.get(stage) or StageResources()

        def pick(key):
            value = getattr(o, key)
            return getattr(self, key) if value is None else value

        return Resources(
            nodes=pick("nodes"),
            gpus_per_node=pick("gpus_per_node"),
            tensor_parallel=pick("tensor_parallel"),
            pipeline_parallel=pick("pipeline_parallel"),
            micro_batch_size=pick("micro_batch_size"),
            time=o.time or self.slurm.time,
        )
