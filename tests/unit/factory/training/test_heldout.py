"""Held-out evaluators against the cross entropy and KL of full logits."""

import math

import pytest
import torch
import torch.nn.functional as F

from factory.training.heldout import assistant_loss, heldout_kd, heldout_loss
from factory.training.losses import IGNORE_INDEX
from tests.unit.factory.tiny_models import tiny_llama, token_blocks


def next_token_ce(model, blocks, labels=None):
    with torch.no_grad():
        logits = model(blocks).logits[:, :-1]
    y = (blocks if labels is None else labels)[:, 1:]
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX))


def test_heldout_loss_is_the_mean_next_token_loss_and_keeps_the_training_mode():
    model, blocks = tiny_llama(), token_blocks(n=5)
    model.train()
    got = heldout_loss(model, blocks, batch_size=2)  # batches of 2, 2 and 1 blocks, weighted by tokens
    assert got["loss"] == pytest.approx(next_token_ce(model, blocks), rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(got["loss"]))
    assert got["tokens"] == 5 * 11
    assert model.training


def test_heldout_kd_of_a_model_against_itself_is_zero_kl_and_its_own_loss():
    model, blocks = tiny_llama(), token_blocks()
    got = heldout_kd(model, tiny_llama(), blocks, batch_size=2, chunk=7)
    assert got["kl"] == pytest.approx(0.0, abs=1e-6)
    assert got["lm_loss"] == pytest.approx(heldout_loss(model, blocks)["loss"], rel=1e-5)
    assert got["tokens"] == 3 * 11


def test_heldout_kd_measures_the_forward_kl_from_the_teacher():
    teacher, student, blocks = tiny_llama(seed=0), tiny_llama(seed=1), token_blocks()
    with torch.no_grad():
        logp = teacher(blocks).logits[:, :-1].log_softmax(-1)
        logq = student(blocks).logits[:, :-1].log_softmax(-1)
    want = float((logp.exp() * (logp - logq)).sum(-1).mean())
    assert heldout_kd(student, teacher, blocks, batch_size=3)["kl"] == pytest.approx(want, rel=1e-4)


def test_assistant_loss_counts_only_labelled_tokens():
    model, blocks = tiny_llama(), token_blocks(n=2)
    labels = blocks.clone()
    labels[:, :6] = IGNORE_INDEX  # the prompt
    batch = {"input_ids": blocks, "labels": labels, "attention_mask": torch.ones_like(blocks)}
    got = assistant_loss(model, [batch])
    assert got["assistant_tokens"] == 2 * 6  # labels at positions 6..11 are predicted
    assert got["assistant_loss"] == pytest.approx(next_token_ce(model, blocks, labels), rel=1e-5)
