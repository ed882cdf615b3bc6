import pytest
import torch

from factory.sources.tiny import byte_tokenizer
from factory.training.data import pack
from foundation.errors import FactoryError


def test_pack_is_deterministic_and_holds_out():
    tok = byte_tokenizer()
    docs = [f"document number {i} " * 5 for i in range(50)]
    a = pack(docs, tok, seq_len=32, train_blocks=20, heldout_blocks=4, seed=3, source="t")
    b = pack(docs, tok, seq_len=32, train_blocks=20, heldout_blocks=4, seed=3, source="t")
    c = pack(docs, tok, seq_len=32, train_blocks=20, heldout_blocks=4, seed=4, source="t")
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert a.train.shape == (20, 32) and a.heldout.shape == (4, 32)
    assert (a.train == tok.eos_token_id).any()  # documents are separated by EOS
    # batches are a pure function of (step, micro): resuming sees the same data
    assert torch.equal(a.batch(7, 1, 4, 2, 0), b.batch(7, 1, 4, 2, 0))
    # one epoch visits every training block once
    seen = torch.cat([a.batch(s, 0, 4, 1, 0) for s in range(5)])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, a.train.tolist()))


def test_pack_too_small():
    with pytest.raises(FactoryError, match="need at least"):
        pack(["tiny"], byte_tokenizer(), seq_len=64, train_blocks=4, heldout_blocks=2, seed=0, source="stages.x.data")
