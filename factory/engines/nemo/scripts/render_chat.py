"""Conversations and preference pairs -> NeMo-Aligner's jsonl, rendered with the
model's own chat template (copied into the job dir as render_chat.py).

    python render_chat.py sft HF_DIR DATA_DIR   # {train,valid}.jsonl -> {train,valid}.aligner.jsonl
    python render_chat.py dpo HF_DIR DATA_DIR

The factory exported the records on the host ({"messages": [...]} for sft;
{"prompt": [...], "chosen": [...], "rejected": [...]} for dpo, each optionally
with "tools"). SFT: one record per assistant turn, {"input": the conversation
so far with the generation prompt, "output": that turn with its end-of-turn
text}, so the loss covers exactly the assistant turns (Aligner's label_key
"output"). DPO: {"prompt", "chosen_response", "rejected_response"}, the
format of Aligner's DPO dataset when the prompt is a string."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _text(tok, messages: list[dict], tools, generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


def completion(tok, prefix: list[dict], turn: list[dict], tools) -> tuple[str, str] | None:
    """(prompt text, completion text) with prompt + completion == the whole rendered conversation;
    None when the template does not render the prefix as a prefix (then the record is skipped)."""
    prompt = _text(tok, prefix, tools, True)
    whole = _text(tok, prefix + turn, tools, False)
    if not whole.startswith(prompt) or len(whole) == len(prompt):
        return None
    return prompt, whole[len(prompt) :]


def sft_records(tok, record: dict):
    messages, tools = record["messages"], record.get("tools")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and i > 0:
            pair = completion(tok, messages[:i], [m], tools)
            yield None if pair is None else {"input": pair[0], "output": pair[1]}


def dpo_records(tok, record: dict):
    tools = record.get("tools")
    chosen = completion(tok, record["prompt"], record["chosen"], tools)
    rejected = completion(tok, record["prompt"], record["rejected"], tools)
    if chosen is None or rejected is None or chosen[0] != rejected[0]:
        yield None
        return
    yield {"prompt": chosen[0], "chosen_response": chosen[1], "rejected_response": rejected[1]}


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] not in ("sft", "dpo"):
        sys.exit("usage: render_chat.py sft|dpo HF_DIR DATA_DIR")
    from transformers import AutoTokenizer  # heavy: only rendering needs it, not --help

    tok = AutoTokenizer.from_pretrained(argv[1])
    make = sft_records if argv[0] == "sft" else dpo_records
    data = Path(argv[2])
    for split in ("train", "valid"):
        written = skipped = 0
        with open(data / f"{split}.jsonl") as src, open(data / f"{split}.aligner.jsonl", "w") as out:
            for line in src:
                for rec in make(tok, json.loads(line)):
                    if rec is None:
                        skipped += 1
                    else:
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        written += 1
        print(f"[render_chat] {split}: {written} records, {skipped} skipped (template does not extend its prefix)")
        if written == 0:
            sys.exit(f"{data / split}.jsonl: no usable records")


if __name__ == "__main__":
    main(sys.argv[1:])
