"""What the training benchmarks share: the teacher, the packed data, peer trainer settings."""

from __future__ import annotations

import time
from pathlib import Path


def teacher_dir() -> Path:
    from factory.sources.models import ModelSpec, materialize

    return materialize(ModelSpec(packaged="smollm2-135m-instruct"), Path("."))


def packed_blocks(n: int, seq_len: int):
    """``n`` training blocks of ``seq_len`` tokens of Shakespeare, packed as the stages pack them."""
    from transformers import AutoTokenizer

    from factory.sources.datasets import DatasetSpec
    from factory.sources.documents import iter_documents
    from factory.training.data import pack

    tok = AutoTokenizer.from_pretrained(teacher_dir())
    return pack(
        iter_documents(DatasetSpec(packaged="shakespeare"), Path(".")), tok, seq_len, n, 1, seed=0, source="bench"
    ).train


def hf_dataset(blocks):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": blocks.tolist()})


class StepTimer:
    """Times each optimizer step of a transformers Trainer (data loading excluded)."""

    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_step_begin(self, *a, **k):
                timer._t = time.perf_counter()

            def on_step_end(self, *a, **k):
                timer.times.append(time.perf_counter() - timer._t)

        return CB()


def trainer_args(cls, out: str, batch: int, steps: int, lr: float, **extra):
    """Peer settings matching ours: AdamW (beta2 0.95, no decay), clip 1.0, constant lr, fp32
    (bf16=False: TRL's configs default to bf16 autocast), no logging, saving or progress bars."""
    return cls(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        bf16=False,
        weight_decay=0.0,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )
