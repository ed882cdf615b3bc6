"""Candidate search: prune one source model to several candidate architectures
and rank them by held-out loss, either right after pruning or after a short
logit distillation from the source (the Minitron papers' observation: the
ranking right after pruning is not the ranking after retraining).

``CandidateSearch`` holds the source model, its importance scores and the
held-out loss; ``rank_by_loss`` prunes and measures every candidate,
``rank_by_distill`` then distils the best few briefly (``ShortDistill``) and
ranks them again. A distilled candidate's result (and, with ``keep``, its
weights) is kept in its own directory, so a rerun after a kill skips the
candidates already measured."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from factory.pruning import depth
from factory.pruning.arch import Shape
from factory.pruning.budget import Candidate
from factory.pruning.importance import Aggregation, Importance
from factory.pruning.width import apply, make_plan
from factory.training import dist
from factory.training import loop as training_loop
from factory.training.checkpoints import save_checkpoint
from factory.training.data import PackedData
from factory.training.heldout import heldout_kd
from factory.training.kd import KDSettings, KDStudent, kd_terms
from factory.training.metrics import MetricsLog
from foundation import storage

LossOf = Callable[[torch.nn.Module], float]  # a model's held-out loss
DepthCriterion = Literal["lm_loss", "block_influence", "last"]


def choose_drop(
    criterion: DepthCriterion, model, imp: Importance, n_drop: int, loss_of: LossOf
) -> tuple[list[int], list[dict]]:
    """The ``n_drop`` layers to drop by ``criterion``, and the ranking of the blocks considered."""
    n = model.config.num_hidden_layers
    if n_drop == 0:
        return [], []
    if criterion == "block_influence":
        return depth.by_block_influence(imp.block_influence(), n_drop)
    if criterion == "last":
        return list(range(n - n_drop, n)), []
    return depth.by_lm_loss(model, n_drop, loss_of)


def rank_dir(work_dir: Path, label: str) -> Path:
    """Where the short distillation of candidate ``label`` keeps its result and weights."""
    # the work dir is this config's and these inputs' alone; a label ("L30 h576 ... heads6/2") is not a file name
    return work_dir / "rank" / re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")


@dataclass
class Ranked:
    """One candidate as the search measured it. ``row`` is its entry in the manifest's
    candidate list: shape, dropped layers, ``heldout_loss`` right after pruning and,
    once distilled, ``heldout_loss_distilled``, ``heldout_kl_distilled`` and
    ``rank_distill_tokens``."""

    row: dict
    candidate: Candidate
    drop: list[int]
    depth_ranking: list[dict]


@dataclass
class ShortDistill:
    """The brief logit distillation from the source that ranks a candidate: every
    candidate sees the same batches of ``packed`` in the same order and is measured
    on ``heldout`` (held-out KL and LM loss at the end)."""

    packed: PackedData  # calibration corpus, training blocks
    heldout: torch.Tensor  # held-out blocks, on ``device``
    work_dir: Path  # one directory per candidate (see ``rank_dir``)
    seq_len: int
    max_tokens: int
    lr: float
    batch_size: int
    eval_batch_size: int
    device: torch.device
    dtype: str = "float32"
    seed: int = 0
    keep: bool = False  # also save the distilled weights (with ``tokenizer``)
    tokenizer: Any = None
    progress: bool = True
    desc: str = "rank"  # progress-bar prefix
    kd: KDSettings = field(default_factory=KDSettings)

    def train_config(self) -> training_loop.TrainConfig:
        """The loop's settings: cosine schedule with 10% warmup, evals and checkpoints at the ends only."""
        return training_loop.TrainConfig(
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            lr=self.lr,
            warmup_ratio=0.1,
            eval_every=0,
            checkpoint_every=0,
            dtype=self.dtype,
            device=str(self.device),
        )


def _measured(done: Path, then: str) -> dict | None:
    """What an earlier short distillation measured, or None. A file with a sha256 record must
    match it; one without (written before records were kept) must parse to a mapping. A
    damaged one is reported in one line and removed, and the candidate distilled again."""

    def parse(path: Path) -> dict:
        got = json.loads(path.read_text())
        if not isinstance(got, dict):
            raise ValueError("not a JSON object")
        return got

    if done.is_file() and not storage.sidecar(done).exists():
        try:
            return parse(done)
        except (OSError, ValueError) as e:
            if dist.is_main():
                storage.warn(done, "short-distillation result", f"it does not load ({e})", then)
                storage.discard(done)
            return None
    return storage.load_checked(done, "short-distillation result", parse, then, owner=dist.is_main())


def short_distill(
    job: ShortDistill, teacher, make_student: Callable[[], torch.nn.Module], label: str, initial_loss: float
) -> dict:
    """Distil the candidate ``make_student()`` builds from ``teacher`` for ``job.max_tokens``
    tokens and measure it: {heldout_loss_distilled, heldout_kl_distilled, rank_distill_tokens}.
    Read back instead when this candidate was measured before; under torchrun every rank
    distils (data parallel) and rank 0 keeps the files."""
    out = rank_dir(job.work_dir, label)
    done = out / "result.json"
    measured = _measured(done, f"distilling {label} again")
    if measured is not None:
        return measured
    tcfg = job.train_config()
    torch.manual_seed(job.seed)
    student = make_student().requires_grad_(True)
    teacher.eval().requires_grad_(False)
    wrapper = KDStudent(student, None, student.config.hidden_size, teacher.config.hidden_size)
    if dist.is_main():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    dist.barrier()
    result = training_loop.train(
        wrapper,
        tcfg,
        batch_fn=lambda step, micro: job.packed.batch(step, micro, job.batch_size, 1, job.seed).to(job.device),
        loss_fn=lambda w, batch: kd_terms(w, teacher, batch, job.kd),
        eval_fn=lambda: heldout_kd(student, teacher, job.heldout, job.eval_batch_size, job.kd.chunk),
        work_dir=out,
        log=MetricsLog(out / "metrics.jsonl"),
        progress=job.progress,
        desc=f"{job.desc} {label}",
        initial_eval=lambda: {"lm_loss": initial_loss},
    )
    measured = {
        "heldout_loss_distilled": result.last_eval["lm_loss"],
        "heldout_kl_distilled": result.last_eval["kl"],
        "rank_distill_tokens": tcfg.total_steps * tcfg.tokens_per_step,
    }
    if dist.is_main():
        if job.keep:  # before result.json: a measured candidate always has its weights (replicated, not sharded)
            save_checkpoint(student, job.tokenizer, out / "model")
        storage.write_text(done, json.dumps(measured), "short-distillation result", checked=True)
    return measured


class CandidateSearch:
    """Prunes ``model`` (the source, left untouched) to candidate architectures by
    its importance scores and ranks them by the held-out loss ``loss_of``."""

    def __init__(self, model, imp: Importance, aggregation: Aggregation, device: torch.device, loss_of: LossOf):
        self.model = model
        self.imp = imp
        self.src = Shape.from_config(model.config.to_dict())
        self.aggregation = aggregation
        self.device = device
        self.loss_of = loss_of

    def prune(self, cand: Candidate, drop: list[int]) -> torch.nn.Module:
        """A new model of architecture ``cand`` without layers ``drop``, on the search's device."""
        keep = [i for i in range(self.src.num_layers) if i not in set(drop)]
        plan = make_plan(
            self.imp,
            self.src,
            keep,
            cand.hidden_size,
            cand.ffn_hidden_size,
            cand.num_attention_heads,
            cand.num_query_groups,
            self.aggregation,
        )
        return apply(self.model, plan).to(self.device)

    def rank_by_loss(
        self, candidates: list[Candidate], drop_for: Callable[[Candidate], tuple[list[int], list[dict]]]
    ) -> tuple[list[Ranked], Ranked, torch.nn.Module]:
        """Prune and measure each candidate (dropping the layers ``drop_for`` picks):
        (all of them in order, the best, the best's pruned model). Only the best
        model so far is kept in memory."""
        ranked: list[Ranked] = []
        best, best_model = None, None
        for cand in candidates:
            drop, depth_ranking = drop_for(cand)
            pruned = self.prune(cand, drop)
            loss = self.loss_of(pruned)
            row = {
                "candidate": cand.label(),
                **cand.shape(self.src).as_dict(),
                "drop_layers": drop,
                "heldout_loss": loss,
            }
            ranked.append(Ranked(row, cand, drop, depth_ranking))
            if best is None or loss < best.row["heldout_loss"]:
                best, best_model = ranked[-1], pruned
            else:
                del pruned
        return ranked, best, best_model

    def rank_by_distill(self, ranked: list[Ranked], job: ShortDistill, top: int | None = None) -> Ranked:
        """Short-distil the ``top`` candidates by post-prune loss (all when None) from the
        source, add the measurements to their rows and return the one with the lowest
        held-out loss after it."""
        finalists = sorted(ranked, key=lambda r: r.row["heldout_loss"])[: top or len(ranked)]
        for r in finalists:
            r.row.update(
                short_distill(
                    job,
                    self.model,
                    lambda r=r: self.prune(r.candidate, r.drop),
                    r.row["candidate"],
                    r.row["heldout_loss"],
                )
            )
        return min(finalists, key=lambda r: r.row["heldout_loss_distilled"])
