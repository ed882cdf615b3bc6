"""The dpo stage says whether it moved anything: held-out reward accuracy comes with a
Wilson 95% interval before and after training, ties (margin exactly zero, as every pair
has at step 0) count as not correct and are reported, and above-chance is claimed only
when the whole interval is above 0.5. The held-out pairs are split off first, by seed."""

import json
import math

import pytest
import torch

from evals.stats import wilson_interval
from factory.alignment.preference import PreferenceLoss
from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from factory.report import write_report
from factory.stages import dpo
from factory.stages.base import headline
from foundation.artifacts import read_manifest

Z = 1.96


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    """(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), written out."""
    p = k / n
    centre = p + Z**2 / (2 * n)
    spread = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    den = 1 + Z**2 / n
    return (centre - spread) / den, (centre + spread) / den


def test_wilson_interval_is_the_closed_form():
    lo, hi = wilson_interval(30, 40)
    assert (lo, hi) == pytest.approx(_wilson_by_hand(30, 40), abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.5981, 0.8581)
    # no success: the upper end is z^2 / (n + z^2), not zero; all successes mirror it
    assert wilson_interval(0, 24) == pytest.approx((0.0, Z**2 / (24 + Z**2)), abs=1e-12)
    assert wilson_interval(24, 24) == pytest.approx((24 / (24 + Z**2), 1.0), abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


SPEC = PreferenceLoss("dpo", 0.5, 0.0, 0.0, False)


def test_at_step_zero_every_pair_is_a_tie_and_none_is_correct():
    ref = torch.tensor([[-3.0, -4.0]] * 24)
    counts = torch.full((24, 2), 5)
    s = dpo.heldout_stats(ref, ref, counts, SPEC)
    assert s["ties"] == 24 and s["reward_accuracy"] == 0.0 and s["reward_margin"] == 0.0
    assert (s["reward_accuracy_lo"], s["reward_accuracy_hi"]) == pytest.approx(_wilson_by_hand(0, 24))
    assert s["reward_accuracy_above_chance"] == 0.0


def test_ties_count_as_not_correct_and_the_interval_decides_above_chance():
    ref = torch.zeros(40, 2)
    counts = torch.full((40, 2), 5)
    # 30 pairs the policy now prefers the chosen answer of, 4 it prefers the rejected one of, 6 ties
    policy = torch.tensor([[1.0, 0.0]] * 30 + [[0.0, 1.0]] * 4 + [[2.0, 2.0]] * 6)
    s = dpo.heldout_stats(policy, ref, counts, SPEC)
    assert s["ties"] == 6 and s["reward_accuracy"] == 30 / 40
    assert (s["reward_accuracy_lo"], s["reward_accuracy_hi"]) == pytest.approx(_wilson_by_hand(30, 40))
    assert s["reward_accuracy_above_chance"] == 1.0  # 0.598 > 0.5
    # 15 of 24: 0.625 looks better than chance, but its interval [0.427, 0.788] says it is not shown
    few = dpo.heldout_stats(torch.tensor([[1.0, 0.0]] * 15 + [[0.0, 1.0]] * 9), ref[:24], counts[:24], SPEC)
    assert few["reward_accuracy"] == 0.625 and few["reward_accuracy_lo"] < 0.5
    assert few["reward_accuracy_above_chance"] == 0.0
    line = dpo.accuracy_line("dpo", 24, dpo.heldout_stats(ref[:24], ref[:24], counts[:24], SPEC), few)
    assert line == (
        "[factory] dpo: held-out reward accuracy 0.000 [0.000, 0.138] (0/24 correct, 24 ties) -> "
        "0.625 [0.427, 0.788] (15/24 correct, 0 ties) (95% Wilson); not shown above chance"
    )


def test_heldout_pairs_are_split_off_first_by_seed_and_never_trained_on():
    prompts = [f"prompt {i}" for i in range(50)]  # one pair per prompt, as the pairs stage writes them
    heldout, train = dpo.split_pairs(prompts, 16, None, seed=3)
    assert len(heldout) == 16 and len(train) == 34
    assert not set(heldout) & set(train) and sorted(heldout + train) == sorted(prompts)
    assert dpo.split_pairs(prompts, 16, None, seed=3) == (heldout, train)  # seeded: the same split again
    assert dpo.split_pairs(prompts, 16, None, seed=4)[0] != heldout
    assert heldout != prompts[:16]  # not the file's first lines
    # max_pairs cuts the training side only, after the held-out pairs are set aside
    assert dpo.split_pairs(prompts, 16, 10, seed=3) == (heldout, train[:10])


def test_the_card_and_report_headline_carry_the_interval():
    (acc,) = [h for h in headline("dpo") if h.metric == "heldout_reward_accuracy"]
    metrics = {
        "heldout_reward_accuracy_before": 0.0,
        "heldout_reward_accuracy_lo_before": 0.0,
        "heldout_reward_accuracy_hi_before": 0.138,
        "heldout_reward_accuracy_after": 0.75,
        "heldout_reward_accuracy_lo_after": 0.598,
        "heldout_reward_accuracy_hi_after": 0.858,
    }
    assert acc.shown(metrics) == ("0.000 [0.000, 0.138]", "0.750 [0.598, 0.858]")
    (loss,) = [h for h in headline("dpo") if h.metric == "heldout_loss"]
    assert loss.shown({"heldout_loss_before": 0.69314, "heldout_loss_after": 0.5}) == ("0.693", "0.500")


RECIPE = """
name: dpoint
seed: 0
models:
  base: {tiny: {num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 128}}
datasets:
  pairs: {path: pairs.jsonl, format: preference, licence: CC0-1.0 (generated by the test)}
stages:
  dpo: {kind: dpo, model: base, data: pairs, seq_len: 48, batch_size: 4, epochs: 2, lr: 2.0e-3,
        warmup_ratio: 0.1, eval_pairs: 16, ref_policy_kl_penalty: 0.5, checkpoint_every: 0}
  release: {kind: release, model: dpo}
"""


def _pairs(path, n=40):
    lines = []
    for i in range(n):  # distinct prompts, one pair each
        a, b = divmod(i, 9)
        lines.append(
            json.dumps(
                {"prompt": f"add {a} and {b}", "chosen": f"the sum is {a + b}", "rejected": f"THE SUM IS {a + b}"}
            )
        )
    path.write_text("\n".join(lines) + "\n")


def test_a_tiny_dpo_run_reports_the_interval_ties_and_chance(tmp_path, capsys):
    _pairs(tmp_path / "pairs.jsonl")
    (tmp_path / "r.yaml").write_text(RECIPE)
    Pipeline(load_recipe(tmp_path / "r.yaml"), tmp_path / "runs", progress=False).run()
    run = tmp_path / "runs" / "dpoint"
    man = read_manifest(run / "dpo")
    m, n = man["metrics"], man["data"]["heldout_pairs"]
    assert n == 16 and man["data"]["pairs"] == 24
    assert m["heldout_ties_before"] == 16 and m["heldout_reward_accuracy_before"] == 0.0
    assert m["heldout_reward_accuracy_lo_before"] == 0.0
    assert m["heldout_reward_accuracy_hi_before"] == pytest.approx(Z**2 / (16 + Z**2))
    assert m["heldout_reward_accuracy_above_chance_before"] == 0.0
    k = round(m["heldout_reward_accuracy_after"] * n)
    lo, hi = _wilson_by_hand(k, n)
    assert (m["heldout_reward_accuracy_lo_after"], m["heldout_reward_accuracy_hi_after"]) == pytest.approx(
        (max(lo, 0.0), min(hi, 1.0))
    )
    assert m["heldout_reward_accuracy_above_chance_after"] == (1.0 if lo > 0.5 else 0.0)
    assert 0 <= m["heldout_ties_after"] <= n - k
    err = capsys.readouterr().err
    assert dpo.accuracy_line("dpo", n, *_evals(run / "dpo")) in err
    row = next(x for x in (run / "release" / "README.md").read_text().splitlines() if x.startswith("| dpo | dpo |"))
    assert (
        f"reward accuracy 0.000 [0.000, {m['heldout_reward_accuracy_hi_before']:.3f}] -> "
        f"{m['heldout_reward_accuracy_after']:.3f} [{m['heldout_reward_accuracy_lo_after']:.3f}, "
        f"{m['heldout_reward_accuracy_hi_after']:.3f}]"
    ) in row
    write_report(run)  # the run report's stage table leads with the held-out accuracy and its interval
    (summary,) = [x for x in (run / "report" / "report.md").read_text().splitlines() if x.startswith("| dpo | dpo |")]
    assert (
        f"heldout_reward_accuracy_after={m['heldout_reward_accuracy_after']:.4g}, "
        f"heldout_reward_accuracy_lo_after={m['heldout_reward_accuracy_lo_after']:.4g}, "
        f"heldout_reward_accuracy_hi_after={m['heldout_reward_accuracy_hi_after']:.4g}"
    ) in summary


def _evals(stage_dir):
    """The first and last held-out rows of the stage's metrics.jsonl, as the eval function returned them."""
    rows = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [{k[len("eval_") :]: v for k, v in r.items() if k.startswith("eval_")} for r in rows]
    evals = [e for e in evals if e]
    return evals[0], evals[-1]


def test_a_resumed_run_reports_step_zero_from_the_reference(tmp_path, monkeypatch):
    """Killed after a mid-stage checkpoint, with a metrics log whose step-0 row predates the
    interval (no lo/hi/ties): the rerun resumes and still reports step 0 in full, since at
    step 0 the policy is its reference."""
    from factory.training import loop

    _pairs(tmp_path / "pairs.jsonl")
    (tmp_path / "r.yaml").write_text(RECIPE.replace("checkpoint_every: 0", "checkpoint_every: 2"))
    real_save = loop._save_checkpoint

    def crash_after_first(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt  # stands in for SIGKILL right after the checkpoint landed

    monkeypatch.setattr(loop, "_save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(load_recipe(tmp_path / "r.yaml"), tmp_path / "runs", progress=False).run()
    monkeypatch.setattr(loop, "_save_checkpoint", real_save)
    (log,) = (tmp_path / "runs" / "dpoint" / ".work").glob("dpo-*/metrics.jsonl")
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    old = ("eval_reward_accuracy_lo", "eval_reward_accuracy_hi", "eval_ties", "eval_reward_accuracy_above_chance")
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in old}) + "\n" for r in rows))
    Pipeline(load_recipe(tmp_path / "r.yaml"), tmp_path / "runs", progress=False).run()
    m = read_manifest(tmp_path / "runs" / "dpoint" / "dpo")["metrics"]
    assert m["heldout_ties_before"] == 16 and m["heldout_reward_accuracy_lo_before"] == 0.0
    assert m["heldout_reward_accuracy_hi_before"] == pytest.approx(Z**2 / (16 + Z**2))
