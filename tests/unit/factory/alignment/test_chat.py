"""Assistant-only label masks, checked token by token."""

from pathlib import Path

import pytest
import torch

from factory.alignment.chat import check_conversation, collate, render
from factory.sources.tiny import byte_tokenizer
from factory.training.losses import IGNORE_INDEX
from foundation.errors import FactoryError

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def _segments(tok, r):
    segs, cur = [], []
    for i, label in zip(r.input_ids, r.labels):
        if label != IGNORE_INDEX:
            assert label == i  # labels are the tokens themselves where they count
            cur.append(i)
        elif cur:
            segs.append(cur)
            cur = []
    if cur:
        segs.append(cur)
    return segs


def _check(tok):
    r = render(tok, CONVO)
    segs = _segments(tok, r)
    eot = tok.convert_tokens_to_ids(tok.eos_token)
    assert [tok.decode(s) for s in segs] == ["Hello!<|im_end|>", "4<|im_end|>"]
    for s in segs:  # exactly one end-of-turn token per turn, at its end
        assert s.count(eot) == 1 and s[-1] == eot
    masked = tok.decode([i for i, label in zip(r.input_ids, r.labels) if label == IGNORE_INDEX])
    assert "Be brief." in masked and "2+2?" in masked and "<|im_start|>assistant\n" in masked
    assert tok(r.text, add_special_tokens=False)["input_ids"] == r.input_ids


def test_mask_on_tiny_tokenizer():
    _check(byte_tokenizer())


@pytest.mark.slow
def test_mask_on_smollm2_template():
    from transformers import AutoTokenizer

    from factory.sources.models import ModelSpec, materialize

    tok = AutoTokenizer.from_pretrained(materialize(ModelSpec(packaged="smollm2-135m-instruct"), Path(".")))
    _check(tok)
    # SmolLM2's template adds its default system prompt when none is given; it stays masked
    r = render(tok, CONVO[1:])
    assert "SmolLM" in r.text and [tok.decode(s) for s in _segments(tok, r)] == ["Hello!<|im_end|>", "4<|im_end|>"]


@pytest.mark.parametrize(
    "messages,msg",
    [
        ([], "empty conversation"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}], "message 1: empty assistant turn"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1: two user turns in a row"),
        ([{"role": "bot", "content": "a"}], "message 0: unknown role 'bot'"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "message 1: a system message may only come first",
        ),
        ([{"role": "user", "content": "a"}], "no assistant turn"),
    ],
)
def test_bad_conversations(messages, msg):
    with pytest.raises(FactoryError, match=f"data.jsonl:3: {msg}"):
        check_conversation(messages, "data.jsonl:3")


def test_collate_pads_and_masks():
    tok = byte_tokenizer()
    a = render(tok, CONVO)
    b = render(tok, CONVO[:3], max_length=20)
    assert len(b.input_ids) == 20
    batch = collate([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(a.input_ids))
    assert int(batch["attention_mask"][1].sum()) == 20
    assert (batch["labels"][1, 20:] == IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][0], torch.tensor(a.input_ids))
