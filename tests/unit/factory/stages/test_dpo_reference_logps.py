"""The dpo stage's reference log-probs, kept in its work dir for a resumed run, are used
again only when they match the sha256 recorded at their write: a truncated or edited
file is reported in one line naming it and computed again."""

from types import SimpleNamespace

import torch

from factory.stages import dpo
from foundation import storage

HONEST = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])


def _reference(tmp_path, monkeypatch):
    """``_cached_reference`` on three pairs; returns (log-probs, times the reference ran)."""
    calls = []

    def pair_logps(model, pairs, pad, batch_size, device):
        calls.append(len(pairs))
        return HONEST.clone()

    monkeypatch.setattr(dpo, "pair_logps", pair_logps)
    ctx = SimpleNamespace(work_dir=tmp_path)
    ref = dpo._cached_reference(ctx, None, [None] * 3, 0, SimpleNamespace(eval_batch_size=1), "cpu")
    return ref, len(calls)


def test_kept_reference_logps_are_reused_when_they_match(tmp_path, monkeypatch):
    assert _reference(tmp_path, monkeypatch)[1] == 1
    path = tmp_path / "reference_logps.pt"
    assert storage.problem(path) is None
    ref, ran = _reference(tmp_path, monkeypatch)
    assert ran == 0 and torch.equal(ref, HONEST)


def test_truncated_or_edited_reference_logps_are_reported_and_computed_again(tmp_path, monkeypatch, capsys):
    _reference(tmp_path, monkeypatch)
    path = tmp_path / "reference_logps.pt"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:100])  # truncated
    capsys.readouterr()
    ref, ran = _reference(tmp_path, monkeypatch)
    assert ran == 1 and torch.equal(ref, HONEST)
    assert capsys.readouterr().err == (
        f"warning: {path}: reference log-probs discarded, it has 100 bytes, {size} were written; computing them again\n"
    )

    torch.save(torch.zeros(3, 2), path)  # a forged reference: every pair looks equally likely
    ref, ran = _reference(tmp_path, monkeypatch)
    assert ran == 1 and torch.equal(ref, HONEST)
    assert capsys.readouterr().err.startswith(f"warning: {path}: reference log-probs discarded, ")
    assert storage.problem(path) is None and torch.equal(torch.load(path), HONEST)
