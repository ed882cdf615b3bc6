"""``dpo``: preference optimisation (DPO, IPO, RPO) against a frozen reference.

The reference is the model the stage starts from. Its log-probabilities of
every chosen and rejected completion are computed once, before training, and
cached in the work dir (a resumed run reads them back), so no second model is
held in memory or run during training. Knob names follow NeMo-Aligner:
``ref_policy_kl_penalty`` is DPO's beta; ``preference_loss`` selects the loss."""

from __future__ import annotations

import math
import random
import shutil
import sys
from dataclasses import dataclass
from typing import Literal

import torch

from evals.stats import wilson_interval
from factory.alignment.chat import Rendered, render
from factory.alignment.preference import PreferenceLoss, fused_preference_loss, preference_loss, sequence_logps
from factory.alignment.records import BadRecords, iter_preferences
from factory.stages.base import Headline, StageContext, StageResult, register
from factory.training import dist
from factory.training.checkpoints import load_model, save_checkpoint
from factory.training.loop import TrainConfig, train
from factory.training.losses import IGNORE_INDEX
from factory.training.metrics import MetricsLog
from factory.training.results import stage_metrics
from foundation import storage
from foundation.chat import for_template
from foundation.configs import field, require
from foundation.errors import FactoryError


@dataclass
class DPOConfig(TrainConfig):
    kind: str = field("dpo", help="stage kind")
    model: str = field(None, ref="model", help="policy to align (also the frozen reference)")
    data: str = field(None, ref="dataset", help="preference pairs: a datasets: entry with format: preference")
    preference_loss: Literal["dpo", "ipo", "rpo"] = field(
        "dpo", help="dpo: sigmoid loss; ipo: squared loss towards 1/(2 beta); rpo: dpo plus NLL on chosen"
    )
    ref_policy_kl_penalty: float = field(0.1, help="beta: strength of the KL penalty to the reference")
    label_smoothing: float = field(0.0, help="dpo/rpo: assumed probability that a preference label is flipped")
    sft_loss_weight: float = field(1.0, help="rpo: weight of the chosen answer's mean token NLL")
    preference_average_log_probs: bool = field(False, help="use per-token mean instead of summed log-probs")
    epochs: float = field(1.0, help="passes over the training pairs")
    max_pairs: int | None = field(None, help="use at most this many pairs (after the held-out split)")
    eval_pairs: int = field(16, help="pairs held out for reward accuracy and margin")
    batch_size: int = field(2, help="pairs per micro-batch")
    seq_len: int = field(512, help="longest prompt + answer, in tokens (longer pairs are cut at the end)")
    lr: float = field(1e-6, help="peak learning rate")
    max_tokens: int = field(1, help="unused by dpo: its budget is epochs over pairs")

    def check(self, where: str) -> None:
        require(self.model is not None, where, "model", "missing required key")
        require(self.data is not None, where, "data", "missing required key")
        require(self.ref_policy_kl_penalty > 0, where, "ref_policy_kl_penalty", "must be positive")
        require(0 <= self.label_smoothing < 0.5, where, "label_smoothing", "must be in [0, 0.5)")
        require(self.sft_loss_weight >= 0, where, "sft_loss_weight", "must be >= 0")
        require(self.epochs > 0, where, "epochs", "must be positive")
        require(self.eval_pairs > 0, where, "eval_pairs", "must be positive")
        require(self.max_pairs is None or self.max_pairs > 0, where, "max_pairs", "must be positive")
        super().check(where)

    def loss_spec(self) -> PreferenceLoss:
        return PreferenceLoss(
            self.preference_loss,
            self.ref_policy_kl_penalty,
            self.label_smoothing,
            self.sft_loss_weight if self.preference_loss == "rpo" else 0.0,
            self.preference_average_log_probs,
        )


@dataclass
class Pair:
    """One preference pair, both completions rendered with the prompt."""

    chosen: Rendered
    rejected: Rendered


def _pairs(ctx: StageContext, tok, cfg: DPOConfig, bad) -> tuple[list[Pair], int]:
    pairs, cut = [], 0
    for p in iter_preferences(ctx.datasets["data"], ctx.base, bad):
        chosen, tools = for_template(tok, p.prompt + p.chosen, p.tools)
        rejected, _ = for_template(tok, p.prompt + p.rejected, p.tools)
        first = len(p.prompt) + len(chosen) - len(p.prompt + p.chosen)  # a system message may have been added
        c = render(tok, chosen, tools, cfg.seq_len, first_turn=first)
        r = render(tok, rejected, tools, cfg.seq_len, first_turn=first)
        if not any(x != IGNORE_INDEX for x in c.labels[1:]) or not any(x != IGNORE_INDEX for x in r.labels[1:]):
            cut += 1  # the prompt alone fills seq_len: nothing left to compare
            continue
        pairs.append(Pair(c, r))
    return pairs, cut


def collate_pairs(pairs: list[Pair], pad: int) -> dict[str, torch.Tensor]:
    """[pairs, 2, T] tensors (chosen, rejected): sharding rows across processes keeps pairs whole."""
    n = max(max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in pairs)
    ids = torch.full((len(pairs), 2, n), pad, dtype=torch.long)
    labels = torch.full((len(pairs), 2, n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(pairs), 2, n), dtype=torch.long)
    for i, p in enumerate(pairs):
        for j, r in enumerate((p.chosen, p.rejected)):
            ids[i, j, : len(r.input_ids)] = torch.tensor(r.input_ids)
            labels[i, j, : len(r.labels)] = torch.tensor(r.labels)
            mask[i, j, : len(r.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def flatten_pairs(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[P, 2, T] -> [2P, T]: the P chosen sequences, then the P rejected ones."""
    return {k: v.transpose(0, 1).reshape(-1, *v.shape[2:]) for k, v in b.items()}


def final_hidden(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's last hidden states [rows, T, H] of a flat batch (the losses apply the LM head)."""
    return model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).last_hidden_state


@torch.no_grad()
def pair_logps(model, pairs: list[Pair], pad: int, batch_size: int, device) -> torch.Tensor:
    """[len(pairs), 2] summed completion log-probs of (chosen, rejected) under ``model``."""
    was = model.training
    model.eval()
    out = []
    for s in range(0, len(pairs), batch_size):
        b = flatten_pairs({k: v.to(device) for k, v in collate_pairs(pairs[s : s + batch_size], pad).items()})
        logps, _ = sequence_logps(final_hidden(model, b), model.lm_head.weight, b["labels"])
        out.append(logps.view(2, -1).t().cpu())
    model.train(was)
    return torch.cat(out)


def _rewards(logps: torch.Tensor, ref: torch.Tensor, counts: torch.Tensor, spec: PreferenceLoss):
    """(per-pair losses, {"chosen", "rejected"} implicit rewards) from [P, 2] policy/reference
    log-probs and token counts."""
    pc, pr = logps[:, 0], logps[:, 1]
    rc, rr = ref[:, 0], ref[:, 1]
    if spec.average_log_probs:
        pc, pr = pc / counts[:, 0], pr / counts[:, 1]
        rc, rr = rc / counts[:, 0], rr / counts[:, 1]
    return preference_loss(pc, pr, rc, rr, spec, chosen_tokens=counts[:, 0].float())


def _summary(losses: torch.Tensor, rewards: dict) -> dict:
    margin = rewards["chosen"] - rewards["rejected"]
    return {
        "loss": float(losses.mean()),
        "reward_accuracy": float((margin > 0).float().mean()),
        "reward_margin": float(margin.mean()),
        "chosen_reward": float(rewards["chosen"].mean()),
        "rejected_reward": float(rewards["rejected"].mean()),
    }


def _reward_stats(logps: torch.Tensor, ref: torch.Tensor, counts: torch.Tensor, spec: PreferenceLoss) -> dict:
    """Loss, reward accuracy and margin from [P, 2] policy/reference log-probs and token counts."""
    return _summary(*_rewards(logps, ref, counts, spec))


# the held-out metrics in manifest order, each as ``heldout_<name>_before`` / ``_after``
HELDOUT = (
    "loss",
    "reward_accuracy",
    "reward_accuracy_lo",
    "reward_accuracy_hi",
    "reward_margin",
    "ties",
    "reward_accuracy_above_chance",
)


def heldout_stats(logps: torch.Tensor, ref: torch.Tensor, counts: torch.Tensor, spec: PreferenceLoss) -> dict:
    """``_reward_stats`` of the held-out pairs plus what a few dozen pairs can and cannot say:
    the Wilson 95% interval of the reward accuracy (a pair counts as correct only when its
    margin is above zero), ``ties`` (pairs whose margin is exactly zero: every pair at step 0,
    when the policy is its reference) and ``reward_accuracy_above_chance`` (1.0 when the
    whole interval lies above 0.5)."""
    losses, rewards = _rewards(logps, ref, counts, spec)
    margin = rewards["chosen"] - rewards["rejected"]
    lo, hi = wilson_interval(int((margin > 0).sum()), len(margin))
    return {
        **_summary(losses, rewards),
        "reward_accuracy_lo": lo,
        "reward_accuracy_hi": hi,
        "ties": int((margin == 0).sum()),
        "reward_accuracy_above_chance": 1.0 if lo > 0.5 else 0.0,
    }


def accuracy_line(name: str, pairs: int, first: dict, last: dict) -> str:
    """The stage's closing line: held-out reward accuracy before -> after on ``pairs`` pairs,
    each with its interval, correct pairs and ties, and whether the end result is above chance."""

    def one(e: dict) -> str:
        return (
            f"{e['reward_accuracy']:.3f} [{e['reward_accuracy_lo']:.3f}, {e['reward_accuracy_hi']:.3f}] "
            f"({round(e['reward_accuracy'] * pairs)}/{pairs} correct, {e['ties']} ties)"
        )

    verdict = "above chance" if last["reward_accuracy_above_chance"] else "not shown above chance"
    return f"[factory] {name}: held-out reward accuracy {one(first)} -> {one(last)} (95% Wilson); {verdict}"


def _cached_reference(ctx: StageContext, model, pairs: list[Pair], pad: int, cfg: DPOConfig, device) -> torch.Tensor:
    """The reference's log-probs of ``pairs``, kept in the work dir for a resumed run: written
    with the sha256 of its bytes recorded, and used again only when they match (a damaged or
    edited file is reported in one line and computed again)."""
    path = ctx.work_dir / "reference_logps.pt"
    ref = storage.load_checked(
        path,
        "reference log-probs",
        lambda p: torch.load(p, map_location="cpu"),
        "computing them again",
        owner=dist.is_main(),
    )
    if ref is not None and ref.shape == (len(pairs), 2):
        return ref
    ref = pair_logps(model, pairs, pad, cfg.eval_batch_size, device)
    if dist.is_main():  # every rank computes the same; one keeps them
        with storage.atomic_path(path, "the reference log-probs", checked=True) as tmp:
            torch.save(ref, tmp)
    return ref


@dataclass
class _Split:
    """The stage's pairs: held out and for training, with the reference's log-probs of each."""

    heldout: list[Pair]
    train: list[Pair]
    ref_eval: torch.Tensor  # [heldout, 2]
    ref_train: torch.Tensor  # [train, 2]
    pad: int
    cut: int  # pairs dropped because the prompt alone fills seq_len


def split_pairs(pairs: list, eval_pairs: int, max_pairs: int | None, seed: int) -> tuple[list, list]:
    """(held out, training): the pairs shuffled by ``seed``, the first ``eval_pairs`` held out
    before anything is trained on, then at most ``max_pairs`` of the rest. Pairs are drawn
    whole, so a held-out pair is never trained on; a prompt with one pair (as the ``pairs``
    stage writes them) is on one side only."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    heldout, train_set = order[:eval_pairs], order[eval_pairs:]
    return heldout, train_set if max_pairs is None else train_set[:max_pairs]


def _split(ctx: StageContext, model, tok, cfg: DPOConfig, bad, device) -> _Split:
    pairs, cut = _pairs(ctx, tok, cfg, bad)
    heldout, train_set = split_pairs(pairs, cfg.eval_pairs, cfg.max_pairs, ctx.seed)
    if not train_set:
        raise FactoryError(
            f"stages.{ctx.name}.data: {len(pairs)} usable pairs; need more than eval_pairs ({cfg.eval_pairs})"
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ref = _cached_reference(ctx, model, heldout + train_set, pad, cfg, device)
    return _Split(heldout, train_set, ref[: len(heldout)], ref[len(heldout) :], pad, cut)


def _batch_fn(data: _Split, cfg: DPOConfig, seed: int, device):
    """(step, micro) -> a [pairs, 2, T] batch with the reference's log-probs, epoch after reshuffled epoch."""
    train_set = data.train

    def order(epoch: int) -> list[int]:
        idx = list(range(len(train_set)))
        random.Random(seed * 1_000_003 + epoch).shuffle(idx)
        return idx

    def batch_fn(step: int, micro: int) -> dict:
        first = (step * cfg.grad_accum + micro) * cfg.batch_size
        picks = [divmod(pos, len(train_set)) for pos in range(first, first + cfg.batch_size)]
        chosen = [order(e)[o] for e, o in picks]
        b = collate_pairs([train_set[i] for i in chosen], data.pad)
        b["ref"] = data.ref_train[chosen]
        return {k: v.to(device) for k, v in b.items()}

    return batch_fn


def _loss_fn(spec: PreferenceLoss):
    """The training loop's loss_fn: the fused preference loss, with reward statistics to log."""

    def loss_fn(m, b):
        ref_b = b.pop("ref").t().reshape(-1)  # [2P]: chosen then rejected
        flat = flatten_pairs(b)
        loss, logps = fused_preference_loss(final_hidden(m, flat), m.lm_head.weight, flat["labels"], ref_b, spec)
        counts = (flat["labels"][:, 1:] != IGNORE_INDEX).sum(-1).view(2, -1).t()
        stats = _reward_stats(logps.detach().view(2, -1).t(), ref_b.view(2, -1).t(), counts, spec)
        return loss, int(counts.sum()), {k: v for k, v in stats.items() if k != "loss"}

    return loss_fn


def _eval_fns(model, data: _Split, cfg: DPOConfig, spec: PreferenceLoss, device):
    """(eval_fn, initial_eval): held-out loss and reward statistics of the policy."""
    eval_counts = torch.tensor(
        [[sum(x != IGNORE_INDEX for x in r.labels[1:]) for r in (p.chosen, p.rejected)] for p in data.heldout]
    )

    def eval_fn() -> dict:
        return heldout_stats(
            pair_logps(model, data.heldout, data.pad, cfg.eval_batch_size, device), data.ref_eval, eval_counts, spec
        )

    def initial_eval() -> dict:
        # at step 0 the policy is the reference: its held-out log-probs are the cached ones
        return heldout_stats(data.ref_eval, data.ref_eval, eval_counts, spec)

    return eval_fn, initial_eval


@register(
    "dpo",
    DPOConfig,
    "preference optimisation (dpo / ipo / rpo) against the frozen starting model",
    headline=(
        Headline("heldout_loss", "held-out loss", brief="loss", curve="eval_loss"),
        Headline("heldout_reward_accuracy", "reward accuracy", curve="eval_reward_accuracy", interval=True),
    ),
)
def run(ctx: StageContext) -> StageResult:
    cfg: DPOConfig = ctx.config
    spec = cfg.loss_spec()
    torch.manual_seed(ctx.seed)
    device = cfg.torch_device()
    model, tok = load_model(ctx.models["model"], cfg.torch_dtype())
    model.to(device)
    bad = BadRecords()
    data = _split(ctx, model, tok, cfg, bad, device)
    per_step = cfg.batch_size * cfg.grad_accum
    steps = max(1, math.ceil(len(data.train) * cfg.epochs / per_step))
    avg_tokens = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in data.train) / len(data.train)
    eval_fn, initial_eval = _eval_fns(model, data, cfg, spec, device)
    log = MetricsLog(ctx.work_dir / "metrics.jsonl")
    result = train(
        model,
        cfg,
        _batch_fn(data, cfg, ctx.seed, device),
        _loss_fn(spec),
        eval_fn,
        ctx.work_dir,
        log,
        ctx.progress,
        f"{ctx.name} ({cfg.preference_loss})",
        total_steps=steps,
        tokens_per_step=round(avg_tokens * per_step),
        initial_eval=initial_eval,
    )
    if result.resumed_from:  # step 0 is the reference itself: its metrics follow from the cached log-probs
        result.first_eval = initial_eval()  # (a log written before a metric existed lacks it)
    save_checkpoint(model, tok, ctx.out_dir)
    if dist.is_main():
        print(accuracy_line(ctx.name, len(data.heldout), result.first_eval, result.last_eval), file=sys.stderr)
    shutil.copy(log.path, ctx.metrics_path())
    metrics = stage_metrics(
        result,
        {f"heldout_{k}": k for k in HELDOUT},
        by_metric=False,
        counts={"pairs_seen": steps * per_step},
        rate=("train_pairs_per_s", per_step),
    )
    extra = {
        "data": {
            "licence": ctx.datasets["data"].licence_of(),
            "pairs": len(data.train),
            "heldout_pairs": len(data.heldout),
            "cut_to_nothing": data.cut,
            "records": bad.as_dict(),
        },
        "resumed_from_step": result.resumed_from,
    }
    return StageResult(metrics=metrics, tokens=result.tokens, extra=extra)
