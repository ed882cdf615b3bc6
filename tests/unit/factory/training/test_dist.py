import pytest
import torch

from foundation.errors import FactoryError


def test_more_ranks_than_gpus_is_one_line(monkeypatch):
    from factory.training import dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(
        FactoryError,
        match=r"local rank 1 has no GPU of its own \(1 visible on this node\); "
        r"start at most 1 processes per node",
    ):
        dist.init_from_env()
