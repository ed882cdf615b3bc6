import json

import pytest

from factory.sources.datasets import DatasetSpec
from factory.sources.documents import iter_documents
from factory.sources.tiny import byte_tokenizer
from factory.training.data import pack
from foundation.errors import FactoryError


def test_chat_records_render_with_the_chat_template(tmp_path):
    rec = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    (tmp_path / "c.jsonl").write_text(json.dumps(rec) + "\n")
    docs = list(iter_documents(DatasetSpec(path="c.jsonl", format="chat"), tmp_path))
    assert docs == [rec["messages"]]
    tok = byte_tokenizer()
    packed = pack(docs * 20, tok, seq_len=16, train_blocks=4, heldout_blocks=1, seed=0, source="t")
    text = tok.decode(packed.train[0])
    assert "<|im_start|>user" in text or "<|im_start|>assistant" in text or "<|im_end|>" in text


@pytest.mark.parametrize(
    "line,msg",
    [
        ('{"messages": []}', "c.jsonl:1: field 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', "c.jsonl:1: message 0 needs string 'role' and 'content'"),
        ('{"text": "x"}', "c.jsonl:1: field 'messages' must be a non-empty list"),
    ],
)
def test_bad_chat_records(tmp_path, line, msg):
    (tmp_path / "c.jsonl").write_text(line + "\n")
    with pytest.raises(FactoryError, match=msg):
        list(iter_documents(DatasetSpec(path="c.jsonl", format="chat"), tmp_path))
