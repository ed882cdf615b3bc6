"""Packing documents into fixed-length token blocks with a held-out split."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from foundation.errors import FactoryError


@dataclass
class Cuts:
    """Records cut to a length limit: how many and how many tokens they lost. Stages
    record ``as_dict()`` in their manifest, so no record is shortened silently."""

    records: int = 0
    tokens: int = 0

    def cut(self, ids: list, limit: int) -> list:
        """``ids`` cut to ``limit`` tokens, counted when that loses any."""
        if len(ids) > limit:
            self.records += 1
            self.tokens += len(ids) - limit
        return ids[:limit]

    def as_dict(self) -> dict:
        return {"records_cut": self.records, "tokens_cut": self.tokens}


class TrainingBlocks(Protocol):
    """What a training stage reads: ``PackedData`` (documents packed in memory) or a
    tokenized corpus read from its shards (``factory.corpus.feed.CorpusData``)."""

    heldout: torch.Tensor  # [n_heldout, seq_len] int64

    def batch(self, step: int, micro: int, batch_size: int, grad_accum: int, seed: int) -> torch.Tensor:
        """Micro-batch ``micro`` of step ``step``, a pure function of the arguments."""
        ...


@dataclass
class PackedData:
    train: torch.Tensor  # [n_train, seq_len] int64
    heldout: torch.Tensor  # [n_heldout, seq_len] int64
    documents_used: int
    tokens_read: int
    documents_cut: int = 0  # documents only partly in the blocks (the one the budget ends inside)
    documents_unused: int = 0  # documents tokenized but wholly past the budget
    tokens_unused: int = 0  # tokens read but not in any block

    def cuts(self) -> dict:
        """What the budget left out of the documents read, for the stage's manifest."""
        return {
            "documents_cut": self.documents_cut,
            "documents_unused": self.documents_unused,
            "tokens_unused": self.tokens_unused,
        }

    def batch(self, step: int, micro: int, batch_size: int, grad_accum: int, seed: int) -> torch.Tensor:
        """Micro-batch ``micro`` of optimizer step ``step``: a pure function of its
        arguments, so a resumed run sees exactly the batches it would have seen."""
        n = self.train.shape[0]
        per_step = batch_size * grad_accum
        first = step * per_step + micro * batch_size
        idx = [self._order(first + i, n, seed) for i in range(batch_size)]
        return self.train[idx]

    @staticmethod
    def _order(position: int, n: int, seed: int) -> int:
        epoch, offset = divmod(position, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        return int(perm[offset])


def render(doc, tokenizer) -> str:
    """Plain text as is; a conversation through the tokenizer's chat template, so
    calibration or distillation sees the model's own chat format."""
    if isinstance(doc, str):
        return doc
    return tokenizer.apply_chat_template(doc, tokenize=False)


def pack(
    documents: Iterable,
    tokenizer,
    seq_len: int,
    train_blocks: int,
    heldout_blocks: int,
    seed: int,
    source: str,
    tokenize_batch: int = 64,
) -> PackedData:
    """Shuffle documents (text or conversations), tokenize them with an EOS after each, and cut the stream
    into ``seq_len`` blocks: the first ``heldout_blocks`` are held out, up to
    ``train_blocks`` more are for training (fewer if the corpus is smaller: the
    trainer then makes several passes)."""
    docs = list(documents)
    if not docs:
        raise FactoryError(f"{source}: the dataset has no documents")
    random.Random(seed).shuffle(docs)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise FactoryError(f"{source}: the tokenizer has no eos token")
    need = (train_blocks + heldout_blocks) * seq_len
    stream: list[int] = []
    ends: list[int] = []  # where each document's tokens end in the stream
    used = 0
    for start in range(0, len(docs), tokenize_batch):
        chunk = [render(d, tokenizer) for d in docs[start : start + tokenize_batch]]
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
            ends.append(len(stream))
        used += len(chunk)
        if len(stream) >= need:
            break
    n_blocks = len(stream) // seq_len
    if n_blocks < heldout_blocks + 1:
        raise FactoryError(
            f"{source}: {len(stream)} tokens make {n_blocks} blocks of {seq_len}; need at least "
            f"{heldout_blocks + 1} (held-out + 1): use more data or a smaller seq_len / eval_tokens"
        )
    blocks = torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)
    blocks = blocks[: heldout_blocks + train_blocks]
    kept = blocks.shape[0] * seq_len
    whole = bisect.bisect_right(ends, kept)  # documents that end inside the blocks
    cut = int(whole < len(ends) and (ends[whole - 1] if whole else 0) < kept)
    return PackedData(
        train=blocks[heldout_blocks:],
        heldout=blocks[:heldout_blocks],
        documents_used=used,
        tokens_read=len(stream),
        documents_cut=cut,
        documents_unused=len(ends) - whole - cut,
        tokens_unused=len(stream) - kept,
    )


def blocks_for(tokens: int, seq_len: int) -> int:
    return max(1, math.ceil(tokens / seq_len))
