"""``tokenize``: a dataset tokenized once into Megatron indexed shards (``.bin`` +
``.idx``) with a held-out split, for training stages of either engine to read
memory-mapped instead of tokenizing the corpus again (``factory.corpus``)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from itertools import islice
from typing import Literal

from factory.corpus.artifact import CORPUS_FILE, CORPUS_FORMAT
from factory.corpus.tokenize import TokenizeSettings, corpus_documents, tokenize_corpus
from factory.stages.base import StageContext, StageResult, no_model, register
from foundation import storage
from foundation.configs import field, require


@dataclass
class TokenizeConfig:
    kind: str = field("tokenize", help="stage kind")
    data: str = field(None, ref="dataset", help="the corpus to tokenize: a datasets: entry")
    tokenizer: str = field(None, ref="model", help="model whose tokenizer is used (a models: entry or a stage)")
    shard_tokens: int = field(64 * 2**20, help="tokens per train shard (a document is never split across shards)")
    heldout_tokens: int = field(0, help="the first documents of the stream, up to this many tokens, are held out")
    workers: int | None = field(None, help="tokenizer worker processes (default: the machine's cores)", hashed=False)
    append_eos: bool = field(True, help="append the tokenizer's EOS token to every document")
    window_chars: int = field(
        1 << 18,
        help="a longer document is tokenized this many characters at a time (bounded memory; the same ids "
        "for byte-level BPE tokenizers, see docs/recipes.md)",
    )
    max_documents: int | None = field(None, help="tokenize at most this many documents of the stream")
    on_bad_record: Literal["error", "skip"] | None = field(
        None,
        help="undecodable lines and bad records stop the run (error) or are skipped and counted (skip); "
        "default: the dataset's own setting",
    )

    def check(self, where: str) -> None:
        require(self.data is not None, where, "data", "missing required key")
        require(self.tokenizer is not None, where, "tokenizer", "missing required key")
        require(self.shard_tokens > 0, where, "shard_tokens", "must be positive")
        require(self.heldout_tokens >= 0, where, "heldout_tokens", "must be zero or positive")
        require(self.workers is None or self.workers > 0, where, "workers", "must be positive")
        require(self.window_chars >= 2, where, "window_chars", "must be at least 2")
        require(self.max_documents is None or self.max_documents > 0, where, "max_documents", "must be positive")


@register(
    "tokenize",
    TokenizeConfig,
    "tokenize a dataset once into Megatron indexed shards (.bin + .idx) with a held-out split",
    shape=no_model,
)
def run(ctx: StageContext) -> StageResult:
    """Tokenize the dataset into ``shards/`` and ``corpus.json`` (resuming a killed run at its last shard)."""
    cfg: TokenizeConfig = ctx.config
    spec = ctx.datasets["data"]
    if cfg.on_bad_record is not None:
        spec = dataclasses.replace(spec, on_bad_record=cfg.on_bad_record)
    undecodable: dict[str, int] = {}
    documents = islice(corpus_documents(spec, ctx.base, undecodable), cfg.max_documents)
    settings = TokenizeSettings(
        shard_tokens=cfg.shard_tokens,
        heldout_tokens=cfg.heldout_tokens,
        workers=cfg.workers or os.cpu_count() or 1,
        append_eos=cfg.append_eos,
        window_chars=cfg.window_chars,
        progress=ctx.progress,
    )
    made = tokenize_corpus(documents, ctx.models["tokenizer"], ctx.work_dir, settings)
    empty, rate = made.pop("empty_documents"), made.pop("tokens_per_s")
    licence = spec.licence_of()
    meta = {**made, "licence": licence, "source": ctx.config.data}
    meta["tokenizer"]["source"] = cfg.tokenizer
    (ctx.out_dir / "shards").mkdir()
    for shard in meta["heldout"] + meta["train"]:
        for ext in (".bin", ".idx"):
            storage.link_or_copy(ctx.work_dir / f"{shard['prefix']}{ext}", ctx.out_dir / f"{shard['prefix']}{ext}")
    (ctx.out_dir / CORPUS_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    counts = {
        split: [{k: s[k] for k in ("documents", "tokens")} for s in meta[split]] for split in ("train", "heldout")
    }
    extra = {
        "dataset": {"file": CORPUS_FILE, "format": CORPUS_FORMAT, "licence": licence, "records": meta["documents"]},
        "corpus": {
            "tokenizer": meta["tokenizer"],
            "documents": meta["documents"],
            "tokens": meta["tokens"],
            "empty_documents": empty,
            "undecodable_lines": dict(sorted(undecodable.items())),
            "shards": counts,
        },
    }
    metrics = {"documents": meta["documents"], "tokens": meta["tokens"], "tokens_per_s": rate}
    return StageResult(metrics=metrics, tokens=meta["tokens"], extra=extra)
