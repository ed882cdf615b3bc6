import math

import pytest
import torch
import torch.nn.functional as F

from factory.training.losses import IGNORE_INDEX, fused_linear_cross_entropy
from factory.training.optim import lr_at


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_fused_ce_matches_reference_loss_and_grads(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(53, 24, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(97, 24, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 97, (53,), generator=g)
    y[[0, 5, 52]] = IGNORE_INDEX
    loss = fused_linear_cross_entropy(h, w, y, chunk_size=chunk)
    (loss * 1.7).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy(h @ w.t(), y, ignore_index=IGNORE_INDEX)
    (ref * 1.7).backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    assert torch.allclose(gh, h.grad, atol=1e-12) and torch.allclose(gw, w.grad, atol=1e-12)


def test_fused_ce_no_grad_and_all_masked():
    h = torch.randn(4, 8)
    w = torch.randn(10, 8)
    y = torch.full((4,), IGNORE_INDEX)
    with torch.no_grad():
        assert fused_linear_cross_entropy(h, w, y).item() == 0.0


def test_fused_ce_bf16_close_to_fp32():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(32, 16, generator=g)
    w = torch.randn(50, 16, generator=g)
    y = torch.randint(0, 50, (32,), generator=g)
    ref = F.cross_entropy(h @ w.t(), y)
    got = fused_linear_cross_entropy(h.bfloat16(), w.bfloat16(), y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)


def test_lr_schedule_warmup_cosine_floor():
    total, peak, warm = 100, 1e-3, 10
    assert lr_at(0, total, peak, warm, 0.1) == pytest.approx(1e-4)
    assert lr_at(9, total, peak, warm, 0.1) == pytest.approx(1e-3)
    assert lr_at(10, total, peak, warm, 0.1) == pytest.approx(1e-3)
    mid = lr_at(55, total, peak, warm, 0.1)
    assert mid == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, total, peak, warm, 0.1) == pytest.approx(1e-4)
    assert all(lr_at(s, total, peak, warm, 0.1) >= lr_at(s + 1, total, peak, warm, 0.1) for s in range(10, 99))


def test_resume_refuses_a_checkpoint_of_another_layout(tmp_path):
    """A checkpoint written by an FSDP run is not silently loaded into a replicated one."""
    from foundation.errors import FactoryError
    from factory.training.loop import TrainConfig, train
    from factory.training.metrics import MetricsLog

    from foundation import storage

    model = torch.nn.Linear(4, 4)
    # written the way the loop writes checkpoints (with its sha256 record), so it is read, not discarded
    with storage.atomic_file(tmp_path / "checkpoint.pt", "training checkpoint", checked=True, record_first=True) as f:
        torch.save({"model": {}, "optimizer": {}, "step": 2, "layout": "fsdp", "rng": torch.get_rng_state()}, f)
    cfg = TrainConfig(seq_len=4, batch_size=2, max_tokens=64, device="cpu")
    with pytest.raises(FactoryError, match=r"checkpoint.pt was written with the model fsdp, this run has it "
                                           r"replicated: resume with the same parallel setting"):
        train(model, cfg, lambda s, m: torch.zeros(2, 4), lambda m, b: (m(b).sum(), 8), dict, tmp_path,
              MetricsLog(tmp_path / "metrics.jsonl"), progress=False)
