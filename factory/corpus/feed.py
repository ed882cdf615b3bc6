"""Training stages fed from tokenized corpora: a stage's ``data`` that names a
``tokenize`` stage's artifact (or a datasets: entry pointing at one), or a blend
of such, trains from memory-mapped shards through the samplers instead of
``pack()``. The held-out blocks come from the corpora's held-out shards."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from factory.corpus.artifact import CORPUS_FILE, is_corpus, load_corpus, tokenizer_digest
from factory.corpus.blend import Blend
from factory.corpus.sampler import BlendedSampler, BlockSampler
from factory.sources.datasets import DatasetSpec
from factory.sources.documents import iter_documents
from factory.training.data import TrainingBlocks, blocks_for, pack
from foundation.errors import FactoryError


def corpus_dir(spec: DatasetSpec, base: Path) -> Path | None:
    """The tokenized corpus ``spec`` points at (a spec of format ``megatron-indexed``,
    or a path to a ``corpus.json`` or the directory holding one, relative to ``base``),
    or None for any other dataset."""
    if spec.path is None:
        return None
    p = Path(spec.path)
    p = p if p.is_absolute() else base / p
    if p.name == CORPUS_FILE and p.is_file():
        return p.parent
    if is_corpus(spec) or (p.is_dir() and (p / CORPUS_FILE).is_file()):
        return p  # load_corpus says in one line what is missing
    return None


@dataclass
class CorpusEntry:
    """One corpus a stage reads: its name in the recipe, its weight and where it is."""

    name: str
    weight: float
    path: Path


def corpus_entries(data, datasets: dict[str, DatasetSpec], base: Path, field: str, where: str) -> list | None:
    """The corpora a stage's ``data`` names, or None when it names a plain dataset
    (which ``pack()`` reads as before). Every member of a blend must be a tokenized corpus."""
    if not isinstance(data, Blend):
        found = corpus_dir(datasets[field], base)
        return None if found is None else [CorpusEntry(data, 1.0, found)]
    out = []
    for i, (name, weight) in enumerate(zip(data.corpora, data.weights())):
        found = corpus_dir(datasets[f"{field}.corpora[{i}]"], base)
        if found is None:
            raise FactoryError(
                f"{where}.{field}.blend[{i}]: {name!r} is not a tokenized corpus (a blend reads `tokenize` stages)"
            )
        out.append(CorpusEntry(name, weight, found))
    return out


@dataclass
class CorpusData:
    """Training blocks from tokenized corpora, read like ``PackedData``: ``batch`` is a
    pure function of (step, micro, seed, shard layout); ``heldout`` is a small tensor."""

    sampler: BlockSampler | BlendedSampler
    heldout: torch.Tensor
    entries: list
    train_blocks: list[int]
    heldout_blocks: list[int]
    licences: list[str]
    seed: int

    def batch(self, step: int, micro: int, batch_size: int, grad_accum: int, seed: int) -> torch.Tensor:
        if seed != self.seed:
            raise ValueError(f"the samplers were built for seed {self.seed}, not {seed}")
        return self.sampler.batch(step, micro, batch_size, grad_accum)

    def realised(self, samples: int) -> list[int]:
        """Samples each corpus gave among the first ``samples``."""
        if isinstance(self.sampler, BlendedSampler):
            return self.sampler.realised(samples)
        return [samples]

    def licence(self) -> str:
        return "; ".join(dict.fromkeys(self.licences))

    def manifest(self, tokens: int) -> dict:
        """The stage manifest's ``data`` entry after training on ``tokens`` tokens:
        per corpus its weight, blocks, and realised samples and tokens."""
        seq_len = self.sampler.seq_len
        counts = self.realised(tokens // seq_len)
        total = sum(e.weight for e in self.entries)
        corpora = {
            e.name: {
                "weight": e.weight / total,
                "train_blocks": n,
                "heldout_blocks": h,
                "realised_samples": c,
                "realised_tokens": c * seq_len,
                "epochs": c / n,
            }
            for e, n, h, c in zip(self.entries, self.train_blocks, self.heldout_blocks, counts)
        }
        return {
            "corpora": corpora,
            "train_blocks": sum(self.train_blocks),
            "heldout_blocks": int(self.heldout.shape[0]),
            "licence": self.licence(),
        }


def corpus_data(
    entries: list, tokenizer_dir: Path, seq_len: int, heldout_blocks: int, seed: int, where: str
) -> CorpusData:
    """Open the corpora (memory maps only), refuse shards of another tokenizer than
    the one in ``tokenizer_dir``, and build the sampler and the held-out blocks: each
    corpus gives its weight's share of ``heldout_blocks`` (at least one) from the
    start of its held-out shards. Corpus ``i`` is shuffled with seed ``(seed, i)``."""
    want = tokenizer_digest(Path(tokenizer_dir))
    total = sum(e.weight for e in entries)
    samplers, held, train_n, held_n, licences = [], [], [], [], []
    for i, e in enumerate(entries):
        corpus = load_corpus(e.path, expect_tokenizer=want)  # another tokenizer's shards: refused in one line
        train = BlockSampler(corpus.train, seq_len, seed * 1_000_003 + i)
        heldout = BlockSampler(corpus.heldout, seq_len, seed)
        for kind, s in (("train", train), ("held-out", heldout)):
            if len(s) == 0:
                raise FactoryError(
                    f"{where}: {e.name}: the {kind} shards hold {int(s.starts[-1])} tokens, fewer than one "
                    f"block of {seq_len}: tokenize more data (or a larger held-out split) or use a smaller seq_len"
                )
        take = min(len(heldout), max(1, math.ceil(heldout_blocks * e.weight / total)))
        samplers.append(train)
        held.append(heldout.head(take))
        train_n.append(len(train))
        held_n.append(take)
        licences.append(str(corpus.meta.get("licence") or "unknown"))
    sampler = samplers[0] if len(samplers) == 1 else BlendedSampler(samplers, [e.weight for e in entries], seed)
    return CorpusData(sampler, torch.cat(held), entries, train_n, held_n, licences, seed)


def training_data(ctx, tok, tokenizer_dir: Path, cfg) -> TrainingBlocks:
    """The stage's ``data`` as training blocks: a tokenized corpus or a blend of them
    through the memory-mapped samplers, any other dataset packed in memory by ``pack()``.
    Shared by the stages that train on a corpus (correct, distill); ``ctx`` is their
    StageContext, ``cfg`` their TrainConfig, ``tok`` the tokenizer ``pack()`` uses."""
    where = f"stages.{ctx.name}"
    heldout_blocks = blocks_for(cfg.eval_tokens, cfg.seq_len)
    entries = corpus_entries(ctx.config.data, ctx.datasets, ctx.base, "data", where)
    if entries is not None:
        return corpus_data(entries, tokenizer_dir, cfg.seq_len, heldout_blocks, ctx.seed, f"{where}.data")
    return pack(
        iter_documents(ctx.datasets["data"], ctx.base),
        tok,
        cfg.seq_len,
        train_blocks=blocks_for(cfg.max_tokens, cfg.seq_len),
        heldout_blocks=heldout_blocks,
        seed=ctx.seed,
        source=f"{where}.data",
    )
