"""The KD objective: KDSettings, KDStudent and kd_terms on tiny random models, checked
against the textbook KL and cross entropy computed from full logits."""

import pytest
import torch
import torch.nn.functional as F

from factory.training.kd import KDSettings, KDStudent, kd_terms
from tests.unit.factory.tiny_models import tiny_llama, token_blocks


@pytest.fixture
def tokens():
    return token_blocks()


def reference_kl(student, teacher, batch, temperature=1.0):
    """T^2 * KL(teacher || student) per token, mean over tokens, from full logits."""
    with torch.no_grad():
        t = teacher(batch).logits[:, :-1] / temperature
        s = student(batch).logits[:, :-1] / temperature
    logp, logq = t.log_softmax(-1), s.log_softmax(-1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean() * temperature**2)


def test_settings_default_to_the_minitron_recipe():
    kd = KDSettings()
    assert (kd.kind, kd.temperature, kd.top_k, kd.kd_scale, kd.lm_weight, kd.chunk) == (
        "forward_kl",
        1.0,
        None,
        1.0,
        0.0,
        256,
    )


def test_a_student_equal_to_its_teacher_has_zero_kl(tokens):
    teacher = tiny_llama(seed=0)
    loss, n, extras = kd_terms(KDStudent(tiny_llama(seed=0), None, 64, 64), teacher, tokens, KDSettings())
    assert n == 3 * 11  # every position but the last predicts a next token
    assert set(extras) == {"kd_loss"}
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and extras["kd_loss"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_is_the_forward_kl_of_the_logits(tokens, temperature):
    teacher, student = tiny_llama(seed=0), tiny_llama(seed=1)
    want = reference_kl(student, teacher, tokens, temperature)
    loss, _, extras = kd_terms(
        KDStudent(student, None, 64, 64), teacher, tokens, KDSettings(temperature=temperature, chunk=5)
    )
    assert want > 0.01
    assert extras["kd_loss"] == pytest.approx(want, rel=1e-4)
    assert loss.item() == pytest.approx(want, rel=1e-4)


def test_lm_weight_adds_the_students_own_next_token_loss(tokens):
    teacher, student = tiny_llama(seed=0), tiny_llama(seed=1)
    with torch.no_grad():
        logits = student(tokens).logits[:, :-1]
    ce = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)))
    loss, _, extras = kd_terms(
        KDStudent(student, None, 64, 64), teacher, tokens, KDSettings(kd_scale=0.5, lm_weight=0.25)
    )
    assert extras["lm_loss"] == pytest.approx(ce, rel=1e-4)
    assert loss.item() == pytest.approx(0.5 * extras["kd_loss"] + 0.25 * ce, rel=1e-4)


def test_gradients_reach_the_student_and_not_the_teacher(tokens):
    teacher, student = tiny_llama(seed=0), tiny_llama(seed=1)
    student.train()
    loss, _, _ = kd_terms(KDStudent(student, None, 64, 64), teacher, tokens, KDSettings())
    loss.backward()
    assert student.lm_head.weight.grad is not None and student.lm_head.weight.grad.abs().sum() > 0
    assert student.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_intermediate_pairs_project_a_narrower_student_onto_the_teacher(tokens):
    teacher, student = tiny_llama(seed=0), tiny_llama(seed=1, hidden_size=32, intermediate_size=64)
    wrapper = KDStudent(student, [[0, 0], [1, 1]], 32, 64)
    assert wrapper.pairs == [(0, 0), (1, 1)]
    assert [type(p).__name__ for p in wrapper.proj] == ["Linear", "Linear"]
    assert wrapper.proj[0].weight.shape == (64, 32)
    loss, _, extras = kd_terms(wrapper, teacher, tokens, KDSettings(intermediate_scale=2.0))
    assert set(extras) == {"kd_loss", "intermediate_loss"}
    assert 0.0 < extras["intermediate_loss"] < 2.0  # 1 - cosine similarity
    assert loss.item() == pytest.approx(extras["kd_loss"] + 2.0 * extras["intermediate_loss"], rel=1e-4)
    loss.backward()
    assert wrapper.proj[0].weight.grad is not None  # the projection trains with the student


def test_equal_widths_need_no_projection():
    wrapper = KDStudent(tiny_llama(), [[1, 1]], 64, 64)
    assert isinstance(wrapper.proj[0], torch.nn.Identity)
    assert not [n for n, _ in wrapper.named_parameters() if n.startswith("proj")]
