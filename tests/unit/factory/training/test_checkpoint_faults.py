"""Mid-stage checkpoints under faults: a damaged one is reported in one line and the stage
starts over (ending where an uninterrupted run ends); a full disk stops the run in one line,
keeps the previous checkpoint and leaves no partial file; HF checkpoint writes the same."""

import errno

import pytest
import torch

from factory.sources.tiny import byte_tokenizer
from factory.training.checkpoints import save_checkpoint
from factory.training.loop import TrainConfig, train
from factory.training.metrics import MetricsLog
from foundation import storage
from foundation.storage import StorageError
from tests.unit.factory.tiny_models import tiny_llama


class Stop(Exception):
    pass


def run(work, stop_at=None):
    """6 steps of a linear model, checkpointed every 2; ``stop_at``: interrupted at that step.
    Returns (result, final weights)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(64, 4)
    cfg = TrainConfig(seq_len=2, batch_size=2, max_tokens=24, checkpoint_every=2, device="cpu", lr=0.1)

    def batch_fn(step, micro):
        if stop_at is not None and step == stop_at:
            raise Stop
        return data[step * 2 : (step + 1) * 2]

    result = train(
        model,
        cfg,
        batch_fn,
        lambda m, b: (m(b).pow(2).mean(), 4),
        lambda: {"loss": float(model(data).detach().pow(2).mean())},
        work,
        MetricsLog(work / "metrics.jsonl"),
        progress=False,
        desc="correct",
    )
    return result, {k: v.clone() for k, v in model.state_dict().items()}


def _flip(data: bytes) -> bytes:
    """``data`` with one bit of its middle byte flipped."""
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def reference(tmp_path):
    (tmp_path / "ref").mkdir()
    return run(tmp_path / "ref")[1]


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "bytes, "),
        (lambda p: p.write_bytes(_flip(p.read_bytes())), "does not match the sha256"),
        (lambda p: storage.sidecar(p).unlink(), "no sha256 was recorded"),
    ],
)
def test_a_damaged_checkpoint_is_reported_and_the_stage_starts_over(tmp_path, capsys, reference, damage, why):
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(Stop):
        run(work, stop_at=5)  # checkpoints after steps 2 and 4
    damage(work / "checkpoint.pt")
    capsys.readouterr()
    result, weights = run(work)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"warning: {work / 'checkpoint.pt'}: training checkpoint discarded, ")
    assert why in lines[0] and lines[0].endswith("; correct starts over from step 0")
    assert result.resumed_from == 0 and _same(weights, reference)


def test_a_good_checkpoint_still_resumes(tmp_path, reference):
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(Stop):
        run(work, stop_at=5)
    result, weights = run(work)
    assert result.resumed_from == 4 and _same(weights, reference)


def _full_after(monkeypatch, good_writes: int):
    """Let ``good_writes`` checked files through, then fail every write as a full disk does."""
    real_open, count = open, [0]

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" not in mode or ".sha256." in str(path):  # the sha256 records are not counted
            return f
        count[0] += 1
        return f if count[0] <= good_writes else Full(f)

    monkeypatch.setattr(storage, "open", fake_open, raising=False)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, reference):
    work = tmp_path / "w"
    work.mkdir()
    _full_after(monkeypatch, good_writes=1)  # the step-2 checkpoint fits, the step-4 one does not
    with pytest.raises(StorageError) as e:
        run(work)
    msg = str(e.value)
    assert msg.startswith(f"cannot write training checkpoint {work / 'checkpoint.pt'}: no space left on device")
    assert "\n" not in msg and e.value.exit_code == 2
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256", "metrics.jsonl"]
    monkeypatch.undo()  # space freed
    result, weights = run(work)
    assert result.resumed_from == 2 and _same(weights, reference)


def test_a_full_disk_while_saving_weights_removes_what_the_save_wrote(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    model = tiny_llama(seed=1)

    def full(self, directory, **kw):
        (directory / "config.json").write_text("{}")
        (directory / "model.safetensors").write_bytes(b"\0" * 10)
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(type(model), "save_pretrained", full)
    with pytest.raises(StorageError, match=rf"^cannot write the model checkpoint {out}: no space left on device"):
        save_checkpoint(model, byte_tokenizer(), out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_a_read_only_weights_dir_is_one_line(tmp_path, monkeypatch):
    model = tiny_llama(seed=1)

    def read_only(self, directory, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(directory / "config.json"))

    monkeypatch.setattr(type(model), "save_pretrained", read_only)
    with pytest.raises(StorageError, match=rf"^cannot write the model checkpoint {tmp_path}: read-only file system"):
        save_checkpoint(model, byte_tokenizer(), tmp_path)
