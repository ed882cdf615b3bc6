import pytest
import torch


def test_resume_refuses_a_checkpoint_of_another_layout(tmp_path):
    """A checkpoint written by an FSDP run is not silently loaded into a replicated one."""
    from factory.training.loop import TrainConfig, train
    from factory.training.metrics import MetricsLog
    from foundation import storage
    from foundation.errors import FactoryError

    model = torch.nn.Linear(4, 4)
    # written the way the loop writes checkpoints (with its sha256 record), so it is read, not discarded
    with storage.atomic_file(tmp_path / "checkpoint.pt", "training checkpoint", checked=True, record_first=True) as f:
        torch.save({"model": {}, "optimizer": {}, "step": 2, "layout": "fsdp", "rng": torch.get_rng_state()}, f)
    cfg = TrainConfig(seq_len=4, batch_size=2, max_tokens=64, device="cpu")
    with pytest.raises(
        FactoryError,
        match=r"checkpoint.pt was written with the model fsdp, this run has it "
        r"replicated: resume with the same parallel setting",
    ):
        train(
            model,
            cfg,
            lambda s, m: torch.zeros(2, 4),
            lambda m, b: (m(b).sum(), 8),
            dict,
            tmp_path,
            MetricsLog(tmp_path / "metrics.jsonl"),
            progress=False,
        )
