"""``prune``: Minitron width and depth pruning ranked by activation importance.

Targets use NeMo / ModelOpt names (``target_hidden_size``,
``target_ffn_hidden_size``, ``target_num_attention_heads``,
``target_num_query_groups``, ``target_num_layers``, ``drop_layers``); unset
targets keep the source's value. ``target_params`` instead searches the
architectures that fit a parameter budget and keeps the best: by default the one
with the lowest held-out loss right after pruning; with ``rank_by: distill``
the one with the lowest held-out loss after a short distillation from the
source model (the Minitron papers' observation: the ranking right after
pruning is not the ranking after retraining). ``rank_distill.keep`` then
releases the winner's short-distilled weights rather than its pruned ones, so
the compute spent ranking is not thrown away."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import torch

from factory.pruning.arch import TARGET_KEYS, Shape, check_supported
from factory.pruning.budget import Candidate, enumerate_candidates
from factory.pruning.importance import Importance, collect
from factory.pruning.report import plot_importance
from factory.pruning.search import CandidateSearch, Ranked, ShortDistill, choose_drop, rank_dir
from factory.sources.documents import iter_documents
from factory.stages.base import Headline, StageContext, StageResult, register
from factory.training import dist
from factory.training.checkpoints import load_model, save_checkpoint
from factory.training.data import PackedData, pack
from factory.training.heldout import heldout_loss
from factory.training.loop import check_budget, check_schedule
from foundation import storage
from foundation.configs import field, require, to_dict
from foundation.device import DTYPES, check_device, resolve_device
from foundation.errors import ConfigError
from foundation.hashing import sha256_json


@dataclass
class CalibrationConfig:
    data: str = field(None, ref="dataset", help="calibration corpus: a datasets: entry")
    samples: int = field(1024, help="calibration sequences (the paper uses 1024)")
    seq_len: int = field(512, help="tokens per calibration sequence")
    batch_size: int = field(8, help="sequences per forward pass", hashed=False)
    heldout_samples: int = field(32, help="further sequences for held-out loss (ranking and report)")

    def check(self, where: str) -> None:
        require(self.data is not None, where, "data", "missing required key")
        for key in ("samples", "seq_len", "batch_size", "heldout_samples"):
            require(getattr(self, key) > 0, where, key, "must be positive")


@dataclass
class RankDistillConfig:
    max_tokens: int = field(8192, help="distillation tokens per candidate, on the calibration corpus")
    lr: float = field(2e-4, help="peak learning rate of the short distillation (cosine, 10% warmup)")
    batch_size: int = field(4, help="sequences per step of the short distillation")
    top: int | None = field(None, help="distil only the best `top` candidates by post-prune loss (null: all)")
    keep: bool = field(
        False,
        help="release the winner's short-distilled weights instead of its pruned ones "
        "(the distill stage then continues from them)",
    )

    def check(self, where: str) -> None:
        for key in ("max_tokens", "lr", "batch_size"):
            require(getattr(self, key) > 0, where, key, "must be positive")
        require(self.top is None or self.top >= 1, where, "top", "must be >= 1 or null")


@dataclass
class PruneConfig:
    kind: str = field("prune", help="stage kind")
    model: str = field(None, ref="model", help="model to prune: a models: entry or an earlier stage")
    calibration: CalibrationConfig = field(factory=CalibrationConfig, help="calibration data")
    importance_aggregation: Literal["l2", "mean", "variance"] = field(
        "l2", help="batch aggregation of per-sample importance (l2: the paper's and ModelOpt's choice)"
    )
    target_hidden_size: int | None = field(None, help="hidden / embedding channels to keep")
    target_ffn_hidden_size: int | None = field(None, help="MLP neurons to keep per layer")
    target_num_attention_heads: int | None = field(None, help="query heads to keep per layer")
    target_num_query_groups: int | None = field(None, help="query groups (KV heads) to keep per layer")
    target_num_layers: int | None = field(None, help="layers to keep (one contiguous block is dropped)")
    drop_layers: list[int] | None = field(None, help="explicit 0-based layers to drop (instead of a criterion)")
    depth_criterion: Literal["lm_loss", "block_influence", "last"] = field(
        "lm_loss", help="how the dropped block is chosen"
    )
    target_params: int | None = field(None, help="parameter budget (e.g. 70M): search width/depth candidates")
    max_candidates: int = field(8, help="candidates ranked under target_params")
    candidate_multiple: int = field(32, help="hidden and MLP widths of candidates are multiples of this")
    rank_by: Literal["loss", "distill"] = field(
        "loss",
        help="rank target_params candidates by held-out loss right after pruning (loss) or after a "
        "short distillation from the source model (distill: slower, closer to the final ranking)",
    )
    rank_distill: RankDistillConfig = field(
        factory=RankDistillConfig, help="the short distillation of rank_by: distill"
    )
    dtype: Literal["float32", "bfloat16"] = field("float32", help="dtype for calibration and the result")
    device: str = field("auto", help="auto, cpu, cuda or cuda:N", hashed=False)
    matmul_precision: Literal["highest", "medium"] = field("highest", help="fp32 matmul precision")

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        for key in (*TARGET_KEYS, "target_params"):
            v = getattr(self, key)
            require(v is None or v > 0, where, key, "must be positive")
        explicit = [k for k in (*TARGET_KEYS, "drop_layers") if getattr(self, k) is not None]
        if self.target_params is not None and explicit:
            raise ConfigError(
                f"{where}.target_params", f"cannot be combined with {explicit[0]} (the budget search chooses those)"
            )
        if self.drop_layers is not None:
            require(len(set(self.drop_layers)) == len(self.drop_layers), where, "drop_layers", "has duplicates")
            require(len(self.drop_layers) > 0, where, "drop_layers", "is empty")
        if not explicit and self.target_params is None:
            raise ConfigError(where, "no pruning target: set target_params or a target_* key or drop_layers")
        require(self.max_candidates >= 1, where, "max_candidates", "must be >= 1")
        if self.rank_by == "distill":
            require(
                self.target_params is not None,
                where,
                "rank_by",
                "distill ranks the candidates of target_params; with explicit targets there is one",
            )
        if self.rank_distill.keep:
            require(
                self.rank_by == "distill",
                f"{where}.rank_distill",
                "keep",
                "keeps the short distillation of rank_by: distill, which is not set",
            )
        self.rank_distill.check(f"{where}.rank_distill")
        per_step = self.rank_distill.batch_size * self.calibration.seq_len
        check_budget(self.rank_distill.max_tokens, per_step, f"{where}.rank_distill", "max_tokens")
        check_schedule(
            self.rank_distill.lr,
            max(1, -(-self.rank_distill.max_tokens // per_step)),
            0.1,
            0.1,
            f"{where}.rank_distill",
        )  # warmup and min_lr ratios of ShortDistill.train_config
        check_device(self.device, where)


def resolve_targets(cfg: PruneConfig, src: Shape, where: str) -> tuple[Candidate | None, list[int] | None]:
    """The explicit target architecture (None under target_params), checked against the source."""
    if cfg.target_params is not None:
        require(
            cfg.target_params < src.params(),
            where,
            "target_params",
            f"{cfg.target_params:,} is not below the source's {src.params():,} parameters",
        )
        return None, None
    t = _explicit_targets(cfg, src)
    _require_within_source(t, src, where)
    t = _whole_query_groups(cfg, t, src, where)
    _require_head_layout(t, src, where)
    drop = cfg.drop_layers
    if drop is not None:
        t = _drop_layers(cfg, t, src, drop, where)
    require(t.num_layers >= 1, where, "target_num_layers", "must keep at least one layer")
    return t, sorted(drop) if drop is not None else None


def _explicit_targets(cfg: PruneConfig, src: Shape) -> Candidate:
    """The targets as set, the source's value for each one unset."""
    return Candidate(
        num_layers=cfg.target_num_layers or src.num_layers,
        hidden_size=cfg.target_hidden_size or src.hidden_size,
        ffn_hidden_size=cfg.target_ffn_hidden_size or src.ffn_hidden_size,
        num_attention_heads=cfg.target_num_attention_heads or src.num_attention_heads,
        num_query_groups=cfg.target_num_query_groups or src.num_query_groups,
    )


def _require_within_source(t: Candidate, src: Shape, where: str) -> None:
    """Pruning only shrinks: no target may exceed the source's value."""
    pairs = (
        ("target_num_layers", t.num_layers, src.num_layers),
        ("target_hidden_size", t.hidden_size, src.hidden_size),
        ("target_ffn_hidden_size", t.ffn_hidden_size, src.ffn_hidden_size),
        ("target_num_attention_heads", t.num_attention_heads, src.num_attention_heads),
        ("target_num_query_groups", t.num_query_groups, src.num_query_groups),
    )
    for key, value, have in pairs:
        require(value <= have, where, key, f"{value} is larger than the source's {have}")


def _whole_query_groups(cfg: PruneConfig, t: Candidate, src: Shape, where: str) -> Candidate:
    """``t`` with query groups derived from its heads when groups are unset and the source's no longer divide them."""
    if cfg.target_num_query_groups is None and t.num_attention_heads % t.num_query_groups:
        # fewer heads than the source, groups unset: keep heads-per-group, drop whole groups
        per_group = src.num_attention_heads // src.num_query_groups
        require(
            t.num_attention_heads % per_group == 0,
            where,
            "target_num_attention_heads",
            f"{t.num_attention_heads} heads cannot be whole query groups of {per_group}; "
            "set target_num_query_groups too",
        )
        t = Candidate(
            t.num_layers, t.hidden_size, t.ffn_hidden_size, t.num_attention_heads, t.num_attention_heads // per_group
        )
    return t


def _require_head_layout(t: Candidate, src: Shape, where: str) -> None:
    """Heads split evenly into the kept groups, no more per group than the source has, and divide the hidden size."""
    require(
        t.num_attention_heads % t.num_query_groups == 0,
        where,
        "target_num_attention_heads",
        f"{t.num_attention_heads} is not a multiple of the {t.num_query_groups} kept query groups",
    )
    per_group_src = src.num_attention_heads // src.num_query_groups
    require(
        t.num_attention_heads // t.num_query_groups <= per_group_src,
        where,
        "target_num_attention_heads",
        f"{t.num_attention_heads} heads in {t.num_query_groups} groups needs "
        f"{t.num_attention_heads // t.num_query_groups} heads per group; the source has {per_group_src}",
    )
    require(
        t.hidden_size % t.num_attention_heads == 0,
        where,
        "target_hidden_size",
        f"{t.hidden_size} is not a multiple of {t.num_attention_heads} heads (HF Llama-family configs require it)",
    )


def _drop_layers(cfg: PruneConfig, t: Candidate, src: Shape, drop: list[int], where: str) -> Candidate:
    """``t`` keeping the layers ``drop_layers`` leaves, once they are checked against the source and the targets."""
    bad = [i for i in drop if not 0 <= i < src.num_layers]
    require(not bad, where, "drop_layers", f"layer {bad[0] if bad else ''} is out of range 0..{src.num_layers - 1}")
    if cfg.target_num_layers is not None:
        require(
            src.num_layers - len(drop) == cfg.target_num_layers,
            where,
            "drop_layers",
            f"drops {len(drop)} of {src.num_layers} layers, which contradicts "
            f"target_num_layers {cfg.target_num_layers}",
        )
    return Candidate(
        src.num_layers - len(drop), t.hidden_size, t.ffn_hidden_size, t.num_attention_heads, t.num_query_groups
    )


def output_shape(cfg: PruneConfig, model_config: dict, where: str) -> dict | None:
    check_supported(model_config, f"{where}.model")
    src = Shape.from_config(model_config)
    target, _ = resolve_targets(cfg, src, where)
    if target is None:
        return None
    return {
        **model_config,
        "num_hidden_layers": target.num_layers,
        "hidden_size": target.hidden_size,
        "intermediate_size": target.ffn_hidden_size,
        "num_attention_heads": target.num_attention_heads,
        "num_key_value_heads": target.num_query_groups,
        "head_dim": src.head_dim,
    }


def _importance(ctx: StageContext, model, calib: torch.Tensor, cfg: PruneConfig) -> tuple[Importance, bool]:
    """Importance statistics, reused from the stage cache when model and calibration match."""
    key = sha256_json(
        {
            "model": ctx.input_hashes.get("model"),
            "data": ctx.input_hashes.get("calibration.data"),
            "calibration": {k: v for k, v in to_dict(cfg.calibration).items() if k != "batch_size"},
            "seed": ctx.seed,
            "dtype": cfg.dtype,
            "version": 1,
        }
    )[:24]
    cached = ctx.cache_dir / f"importance-{key}.safetensors" if ctx.cache_dir else None
    loaded = None
    if cached is not None:  # content-checked: a damaged cache is reported, removed and recomputed
        loaded = storage.load_checked(cached, "importance cache", Importance.load, "recomputing the importance")
    if loaded is not None:
        print(f"[factory] {ctx.name}: reusing importance scores from {cached}", file=sys.stderr)
        return loaded[0], True
    imp = collect(model, calib, cfg.calibration.batch_size, ctx.progress)
    if cached is not None and dist.is_main():
        cached.parent.mkdir(parents=True, exist_ok=True)
        imp.save(cached, {"key": key}, "importance cache", checked=True)
    return imp, False


@dataclass
class _Outcome:
    """What the ranking chose: the winner, the weights to release, every candidate measured
    and (with ``rank_distill.keep``) the released short-distilled weights' held-out loss."""

    winner: Ranked
    weights: torch.nn.Module
    ranked: list[Ranked]
    released_loss: float | None = None


def _rank(
    ctx: StageContext,
    cfg: PruneConfig,
    search: CandidateSearch,
    candidates: list[Candidate],
    drop_given: list[int] | None,
    packed: PackedData,
    heldout: torch.Tensor,
    tok,
) -> _Outcome:
    """Rank the candidates as ``cfg.rank_by`` says; the winner and the weights to release."""

    def drop_for(cand: Candidate) -> tuple[list[int], list[dict]]:
        if drop_given is not None:
            return drop_given, []
        return choose_drop(
            cfg.depth_criterion, search.model, search.imp, search.src.num_layers - cand.num_layers, search.loss_of
        )

    ranked, best, pruned = search.rank_by_loss(candidates, drop_for)
    if cfg.rank_by != "distill":
        return _Outcome(best, pruned, ranked)
    del best, pruned  # the distillations need the memory
    r = cfg.rank_distill
    job = ShortDistill(
        packed=packed,
        heldout=heldout,
        work_dir=ctx.work_dir,
        seq_len=cfg.calibration.seq_len,
        max_tokens=r.max_tokens,
        lr=r.lr,
        batch_size=r.batch_size,
        eval_batch_size=cfg.calibration.batch_size,
        device=search.device,
        dtype=cfg.dtype,
        seed=ctx.seed,
        keep=r.keep,
        tokenizer=tok,
        progress=ctx.progress,
        desc=f"{ctx.name} rank",
    )
    winner = search.rank_by_distill(ranked, job, r.top)
    if not r.keep:  # the winner's pruned (not distilled) weights
        return _Outcome(winner, search.prune(winner.candidate, winner.drop), ranked)
    # the winner as its short distillation left it
    pruned, _ = load_model(rank_dir(ctx.work_dir, winner.row["candidate"]) / "model", DTYPES[cfg.dtype])
    released_loss = search.loss_of(pruned.to(search.device))  # measured here: saving moves the model to the CPU
    return _Outcome(winner, pruned, ranked, released_loss)


@register(
    "prune",
    PruneConfig,
    "Minitron width/depth pruning by activation importance",
    shape=output_shape,
    headline=(
        Headline("heldout_loss", "held-out loss", brief="loss"),
        Headline("params", "params", brief="params", millions=True),
    ),
)
def run(ctx: StageContext) -> StageResult:
    cfg: PruneConfig = ctx.config
    device = resolve_device(cfg.device)
    model, tok = load_model(ctx.models["model"], DTYPES[cfg.dtype])
    model.to(device)
    model_cfg = model.config.to_dict()
    check_supported(model_cfg, f"stages.{ctx.name}.model")
    src = Shape.from_config(model_cfg)
    target, drop_given = resolve_targets(cfg, src, f"stages.{ctx.name}")
    c = cfg.calibration
    packed = pack(
        iter_documents(ctx.datasets["calibration.data"], ctx.base),
        tok,
        c.seq_len,
        train_blocks=c.samples,
        heldout_blocks=c.heldout_samples,
        seed=ctx.seed,
        source=f"stages.{ctx.name}.calibration.data",
    )
    heldout = packed.heldout.to(device)

    def loss_of(m) -> float:
        return heldout_loss(m, heldout, c.batch_size)["loss"]

    imp, reused = _importance(ctx, model, packed.train, cfg)
    loss_before = loss_of(model)
    candidates = (
        [target]
        if target is not None
        else enumerate_candidates(src, cfg.target_params, cfg.candidate_multiple, max_candidates=cfg.max_candidates)
    )
    if not candidates:
        raise ConfigError(
            f"stages.{ctx.name}.target_params", f"no architecture found within {cfg.target_params:,} parameters"
        )
    search = CandidateSearch(model, imp, cfg.importance_aggregation, device, loss_of)
    outcome = _rank(ctx, cfg, search, candidates, drop_given, packed, heldout, tok)
    save_checkpoint(outcome.weights, tok, ctx.out_dir)
    return _result(ctx, cfg, src, imp, reused, loss_before, outcome)


def _result(
    ctx: StageContext,
    cfg: PruneConfig,
    src: Shape,
    imp: Importance,
    reused: bool,
    loss_before: float,
    outcome: _Outcome,
) -> StageResult:
    """Save the importance scores and their plot; the stage's metrics and manifest entries."""
    how, row, cand, drop = cfg.importance_aggregation, outcome.winner.row, outcome.winner.candidate, outcome.winner.drop
    imp.save(ctx.out_dir / "importance.safetensors", {"aggregation": how})
    plot_importance(imp, how, drop, cand.hidden_size, cand.ffn_hidden_size, ctx.out_dir / "importance.png")
    new_shape = cand.shape(src)
    metrics = {
        "heldout_loss_before": loss_before,
        "heldout_loss_after": row["heldout_loss"],
        "params_before": src.params(),
        "params_after": new_shape.params(),
        "param_ratio": new_shape.params() / src.params(),
    }
    if cfg.rank_by == "distill":
        metrics["heldout_loss_distilled"] = row["heldout_loss_distilled"]
    kept = outcome.released_loss is not None
    if kept:
        metrics["heldout_loss_released"] = outcome.released_loss
    rank_key = "heldout_loss_distilled" if cfg.rank_by == "distill" else "heldout_loss"
    rows = [r.row for r in outcome.ranked]
    extra = {
        "source_shape": src.as_dict(),
        "target_shape": new_shape.as_dict(),
        "dropped_layers": drop,
        "importance_reused": reused,
        "calibration_tokens": imp.tokens,
        "rank_by": cfg.rank_by,
        "weights": "short-distilled" if kept else "pruned",
        "candidates": sorted(rows, key=lambda r: (r.get(rank_key, float("inf")), r["heldout_loss"])),
        "depth_ranking": outcome.winner.depth_ranking,
        "data": {"licence": ctx.datasets["calibration.data"].licence_of()},
    }
    return StageResult(metrics=metrics, tokens=imp.tokens, extra=extra)
