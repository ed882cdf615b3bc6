"""Settings of the nemo engine: the recipe's ``nemo:`` block.

They say where and how jobs run (images, GPUs, parallelism, launcher), not
what they compute, so none of them is part of a stage's config hash. Every
key can be overridden on the command line, e.g. ``nemo.gpus_per_node=4`` or
``nemo.stages.distill.tensor_parallel=8``."""

from __future__ import annotations

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


@dataclass
class SlurmSettings:
    account: str | None = field(None, help="sbatch --account")
    partition: str | None = field(None, help="sbatch --partition")
    time: str = field("04:00:00", help="default time limit per job")
    mounts: list[str] = field(factory=list, help="extra container mounts (host:container), e.g. a data lake")
    extra_sbatch: list[str] = field(factory=list, help="further #SBATCH lines, e.g. --exclusive or --qos=high")


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
    workers: int = field(8, help="CPU workers for data preprocessing")
    slurm: SlurmSettings = field(factory=SlurmSettings, help="Slurm submission settings")
    stages: dict[str, StageResources] = field(factory=dict, help="per-stage resource overrides")

    def check(self, where: str) -> None:
        for key in ("nodes", "gpus_per_node", "tensor_parallel", "pipeline_parallel", "micro_batch_size", "workers"):
            require(getattr(self, key) > 0, where, key, "must be positive")

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
