"""Tokenized corpora: Megatron indexed shards written once by a ``tokenize`` stage
and read memory-mapped by training (``indexed``: the format; ``artifact``: the
corpus and its loader; ``tokenize``: streaming tokenization)."""

from factory.corpus.artifact import CORPUS_FILE, CORPUS_FORMAT, Corpus, is_corpus, load_corpus, tokenizer_digest
from factory.corpus.indexed import IndexedReader, IndexedWriter, token_dtype

__all__ = [
    "CORPUS_FILE",
    "CORPUS_FORMAT",
    "Corpus",
    "IndexedReader",
    "IndexedWriter",
    "is_corpus",
    "load_corpus",
    "token_dtype",
    "tokenizer_digest",
]
