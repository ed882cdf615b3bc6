from factory.sources.tiny import byte_tokenizer


def test_byte_tokenizer_specials_and_chat():
    tok = byte_tokenizer()
    ids = tok.encode("hi")
    assert len(ids) == 2 and tok.bos_token_id not in ids  # no stray BOS on plain text
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == tok.pad_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hé"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhé<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok.encode("héllo wörld")) == "héllo wörld"
