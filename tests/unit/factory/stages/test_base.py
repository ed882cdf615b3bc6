"""Stage kinds declare their headline metrics once; `factory ls`, the release card and
the run report read that declaration."""

from dataclasses import dataclass

import pytest

from factory.stages import base
from factory.stages.base import Headline, headline, headline_curves, register, stage_kinds


def test_headline_values_need_both_ends():
    h = Headline("heldout_kl", "held-out KL", brief="kl")
    assert h.values({"heldout_kl_before": 0.5, "heldout_kl_after": 0.25, "other": 1}) == (0.5, 0.25)
    assert h.values({"heldout_kl_before": 0.5}) is None
    assert h.format(0.12345) == "0.123"
    assert Headline("params", "params", millions=True).format(1_234_567) == "1.2M"


def test_the_built_in_kinds_declare_what_their_manifests_hold():
    declared = {name: [(h.metric, h.brief, h.curve) for h in kind.headline] for name, kind in stage_kinds().items()}
    assert declared["correct"] == [("eval_loss", "loss", "eval_loss")]
    assert declared["prune"] == [("heldout_loss", "loss", None), ("params", "params", None)]
    assert declared["distill"] == [("heldout_kl", "kl", "eval_kl")]
    assert declared["sft"] == [("heldout_assistant_loss", None, "eval_assistant_loss")]
    assert declared["dpo"] == [
        ("heldout_loss", "loss", "eval_loss"),
        ("heldout_reward_accuracy", None, "eval_reward_accuracy"),
    ]
    assert declared["evaluate"] == declared["gate"] == declared["pairs"] == declared["generate"] == []
    assert declared["release"] == []


def test_curves_in_pipeline_order_once_each():
    assert headline_curves() == ("eval_loss", "eval_kl", "eval_assistant_loss", "eval_reward_accuracy")


def test_an_unknown_kind_has_no_headline():
    assert headline("no-such-kind") == ()


@pytest.fixture
def extra_kind():
    @dataclass
    class Cfg:
        kind: str = "extra"

    @register("extra", Cfg, "a kind registered by a test", headline=[Headline("score", "score", curve="eval_s")])
    def run(ctx):
        raise NotImplementedError

    yield
    base._REGISTRY.pop("extra")


@pytest.mark.usefixtures("extra_kind")
def test_register_takes_the_declaration_and_the_readers_see_it():
    assert headline("extra") == (Headline("score", "score", curve="eval_s"),)
    assert headline_curves()[-1] == "eval_s"  # after the built-in kinds'
