"""``correct``: teacher correction, a light causal-LM fine-tune of the teacher on
the distillation corpus (Minitron, arXiv 2408.11796, section 2), so that the
teacher's distribution matches the data the student will be distilled on."""

from __future__ import annotations

from dataclasses import dataclass

from foundation.configs import field, require
from factory.stages.base import StageContext, StageResult, register
from factory.training.loop import TrainConfig
from factory.training.runner import lm_finetune


@dataclass
class CorrectConfig(TrainConfig):
    kind: str = field("correct", help="stage kind")
    model: str = field(None, ref="model", help="model to correct: a models: entry or an earlier stage")
    data: str = field(None, ref="dataset", help="the distillation corpus: a datasets: entry")

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        require(self.data is not None, where, "data", "missing required key")
        super().check(where)


@register("correct", CorrectConfig, "teacher correction: causal-LM fine-tune of a model on a text corpus")
def run(ctx: StageContext) -> StageResult:
    return lm_finetune(ctx, ctx.models["model"], ctx.datasets["data"], desc=f"{ctx.name} (correct)")
