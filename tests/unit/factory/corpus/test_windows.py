"""Long documents are tokenized in windows: the same ids as the whole document for a
byte-level BPE tokenizer, a bounded difference where no boundary is near a join, and
memory bounded by the window rather than the document."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from factory.corpus.tokenize import TokenizeSettings, tokenize_corpus
from factory.corpus.workers import window_ids
from tests.conftest import ROOT

WORDS = ["the", "quick", "fox", "it's", "don't", "12345", "3.14", "naïve", "日本語", "(x)", "==", "->", "foo_bar"]
GAPS = [" ", "  ", "", "\n", "\n\n", ", ", ". ", "\t", "    ", " \n  "]


def _text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(WORDS) + rng.choice(GAPS) for _ in range(words))


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE with real merges (trained here), as SmolLM2's and Llama 3's are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator([_text(s, 300) for s in range(40)] + ["x" * 64], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("window", [200, 257, 1000])
def test_windows_give_the_whole_documents_ids(bpe, window):
    for seed in range(20):
        text = _text(100 + seed, 1500)
        assert len(text) > 5 * window  # several joins per document
        assert window_ids(text, bpe, window, "<u2").tolist() == _ids(bpe, text), seed


def test_cutting_without_a_boundary_would_change_the_ids(bpe):
    """What the boundary search is for: naive fixed cuts give other ids on the same texts."""
    text = _text(7, 1500)
    naive = [i for k in range(0, len(text), 200) for i in _ids(bpe, text[k : k + 200])]
    assert naive != _ids(bpe, text)


def test_a_pretoken_longer_than_the_join_span_differs_by_at_most_two_tokens_a_join(bpe):
    text = "x" * 50_000  # one pre-token: no boundary anywhere, so each window is cut where it ends
    whole, windowed = _ids(bpe, text), window_ids(text, bpe, 1000, "<u2")
    joins = len(text) // 1000 - 1
    assert len(windowed) != len(whole)  # the documented case where ids may differ
    assert abs(len(windowed) - len(whole)) <= 2 * joins
    assert bpe.decode(windowed.tolist()) == text  # the text itself is kept, only its split differs


def test_the_shards_of_a_windowed_document_are_the_same_bytes(tmp_path, bpe):
    bpe.save_pretrained(tmp_path / "tok")
    docs = ["short one", _text(3, 4000), "after it"]
    shards = {}
    for window in (300, 1 << 20):
        work = tmp_path / f"w{window}"
        tokenize_corpus(
            iter(docs),
            tmp_path / "tok",
            work,
            TokenizeSettings(shard_tokens=10**6, workers=1, progress=False, window_chars=window),
        )
        shards[window] = (work / "shards" / "train-00000.bin").read_bytes()
    want = [i for d in docs for i in [*_ids(bpe, d), bpe.eos_token_id]]
    assert shards[300] == shards[1 << 20] == np.asarray(want, "<u2").tobytes()


@pytest.mark.slow
def test_smollm2s_tokenizer_gives_the_same_ids_in_windows():
    from factory.sources.datasets import DatasetSpec
    from factory.sources.documents import iter_documents
    from factory.sources.models import ModelSpec, materialize

    tok = AutoTokenizer.from_pretrained(materialize(ModelSpec(packaged="smollm2-135m-instruct"), Path(".")))
    docs = iter_documents(DatasetSpec(packaged="python-stdlib", max_documents=40), Path("."))
    text = "\n".join(docs)[:400_000]  # code: long whitespace runs, digits, punctuation
    assert window_ids(text, tok, 20_000, "<u2").tolist() == _ids(tok, text)


MEMORY = """
import resource, sys
from pathlib import Path
from transformers import AutoTokenizer
from factory.corpus.workers import window_ids

tok = AutoTokenizer.from_pretrained(Path(sys.argv[1]))
window_ids("warm up " * 1000, tok, 4096, "<u2")
text = ("lorem ipsum dolor sit amet, " * 40 + "\\n") * int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids = window_ids(text, tok, 1 << 13, "<u2")
print(len(ids), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_long_documents_tokenizer_memory_is_the_windows(tok_dir):
    """560K characters in 8K windows: the peak grows by the ids and a window's working memory
    (a whole-document call would take about 150 bytes a character, 80 MiB here)."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY, str(tok_dir), "500"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    tokens, grew_kib = map(int, out.stdout.split())
    assert tokens == 500 * 1121  # the byte tokenizer: one token a character
    assert grew_kib < 16 * 1024, grew_kib
