"""A record longer than a stage can use is never shortened silently: a 2 MB document packed for
`correct` and a 2 MB conversation for `sft` are counted in the stage's manifest."""

import json
import random

from factory.pipeline import Pipeline
from factory.recipe import load_recipe
from foundation.artifacts import read_manifest

TINY = (
    "{tiny: {num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, num_key_value_heads: 1, "
    "intermediate_size: 64}}"
)
HUGE = 2 * 1024 * 1024  # characters; the tiny tokenizer makes one token per byte


def _run(tmp_path, runs, stage: str, data: str, fmt: str) -> dict:
    (tmp_path / "r.yaml").write_text(
        f"name: cuts\nseed: 0\nmodels:\n  base: {TINY}\n"
        f"datasets:\n  d: {{path: {data}, format: {fmt}, licence: CC0-1.0}}\n"
        f"stages:\n  {stage}\n"
    )
    Pipeline(load_recipe(tmp_path / "r.yaml"), runs, progress=False).run()
    return read_manifest(runs / "cuts" / stage.split(":")[0])["data"]


def test_a_2mb_document_cut_by_the_budget_is_counted(tmp_path, runs):
    docs = [{"text": "x" * HUGE}] + [{"text": f"short document {i}"} for i in range(40)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    data = _run(
        tmp_path,
        runs,
        "correct: {kind: correct, model: base, data: d, seq_len: 32, batch_size: 2, "
        "max_tokens: 256, eval_tokens: 64, device: cpu}",
        "c.jsonl",
        "jsonl",
    )
    # 10 blocks of 32 tokens are kept (2 held out, 8 for training): the rest of what was read is counted
    assert data["train_blocks"] == 8
    assert data["tokens_unused"] >= HUGE - 10 * 32
    assert data["documents_cut"] in (0, 1) and data["documents_cut"] + data["documents_unused"] >= 1


def test_a_2mb_conversation_cut_to_seq_len_is_counted(tmp_path, runs):
    rng = random.Random(0)
    chats = []
    for _i in range(40):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        chats.append([{"role": "user", "content": f"add {a} and {b}"}, {"role": "assistant", "content": f"{a + b}"}])
    chats[3] = [{"role": "user", "content": "say a lot"}, {"role": "assistant", "content": "y" * HUGE}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    data = _run(
        tmp_path,
        runs,
        "sft: {kind: sft, model: base, data: d, seq_len: 64, batch_size: 4, "
        "max_tokens: 512, eval_conversations: 8, device: cpu}",
        "c.jsonl",
        "chat",
    )
    assert data["records_cut"] == 1
    assert HUGE - 64 < data["tokens_cut"] < HUGE + 64  # the answer past seq_len, give or take the template
