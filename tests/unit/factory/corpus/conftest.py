"""A tiny byte-level tokenizer saved to disk, shared by the corpus tests."""

import pytest

from factory.sources.tiny import byte_tokenizer


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    byte_tokenizer().save_pretrained(path)
    return path
