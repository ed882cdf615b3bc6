"""pack() and Cuts count what a length limit leaves out, so a stage's manifest can say it."""

import pytest

from factory.training.data import Cuts, pack


class CharTokenizer:
    """One token per character, EOS 0."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[1] * len(t) for t in texts]}


@pytest.mark.parametrize(
    "docs,cuts",
    [
        # a 2 MB document: the budget (3 blocks of 10) ends inside it; the rest is counted, not silent
        (
            ["x" * 2_000_000, "short", "tiny"],
            {"documents_cut": 1, "documents_unused": 2, "tokens_unused": 2_000_001 + 6 + 5 - 30},
        ),
        # ten documents of 10 tokens (EOS included): three fill the blocks exactly, seven are left
        (["a" * 9] * 10, {"documents_cut": 0, "documents_unused": 7, "tokens_unused": 70}),
        # a small corpus (32 tokens): only the tail that does not fill a fourth block is left out
        (["a" * 4] * 5 + ["b" * 6], {"documents_cut": 1, "documents_unused": 0, "tokens_unused": 2}),
    ],
)
def test_pack_counts_what_the_budget_leaves_out(docs, cuts):
    packed = pack(docs, CharTokenizer(), seq_len=10, train_blocks=2, heldout_blocks=1, seed=0, source="s")
    assert packed.cuts() == cuts
    kept = (packed.train.shape[0] + packed.heldout.shape[0]) * 10
    assert packed.tokens_read - kept == cuts["tokens_unused"]


def test_cuts_count_records_and_tokens():
    cuts = Cuts()
    assert cuts.cut(list(range(100)), 64) == list(range(64))
    assert cuts.cut([1, 2], 64) == [1, 2]
    assert cuts.as_dict() == {"records_cut": 1, "tokens_cut": 36}
