"""The eval completion cache reads back what it wrote and shrugs off damage."""

from evals.api import Completion, Request, Sampling
from evals.completion_cache import CompletionCache, engine_identity


def test_keys_follow_what_decides_the_output(tmp_path):
    hf = engine_identity({"engine": "hf", "model_hash": "abc", "dtype": "float32", "max_batch": 64})
    assert hf == engine_identity({"engine": "hf", "model_hash": "abc", "dtype": "float32", "max_batch": 8})
    served = engine_identity({"engine": "openai", "model_hash": None, "model": "m", "base_url": "http://x/v1"})
    assert served["model"] == "m" and served["base_url"] == "http://x/v1"
    r = Request(messages=[{"role": "user", "content": "hi"}], sampling=Sampling(max_tokens=8))
    key = CompletionCache.request_key(hf, r)
    assert key == CompletionCache.request_key(
        hf, Request(messages=[{"role": "user", "content": "hi"}], sampling=Sampling(max_tokens=8))
    )
    assert key != CompletionCache.request_key(hf, Request(messages=r.messages, sampling=Sampling(max_tokens=9)))
    assert key != CompletionCache.request_key(hf, Request(messages=r.messages, sampling=Sampling(max_tokens=8, seed=1)))
    assert key != CompletionCache.request_key({**hf, "model": "abd"}, r)


def test_round_trip_and_damaged_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = CompletionCache(path)
    cache.add_completions(
        ["a", "b"], [Completion(["x"], [1], ["stop"]), Completion(["y", "z"], [2, 3], ["length"] * 2)]
    )
    cache.add_records("t", [{"id": "1", "metrics": {"acc": 1.0}}])
    with open(path, "a") as f:
        f.write('not json\n{"no_key": 1}\n[1, 2]\n')
    cache.add_completions(["c"], [Completion(["w"], [1], ["stop"])])
    with open(path, "a") as f:
        f.write('{"key": "d", "texts": ["half')  # killed mid-write
    again = CompletionCache(path)
    assert len(again) == 4
    assert again.completion("b") == Completion(["y", "z"], [2, 3], ["length", "length"])
    assert again.completion("c").texts == ["w"] and again.completion("d") is None
    assert again.records("t") == [{"id": "1", "metrics": {"acc": 1.0}}] and again.completion("t") is None
    assert path.read_text().endswith('"finish": ["stop"]}\n')  # the torn tail is gone
    again.add_completions(["d"], [Completion(["v"], [1], ["stop"])])
    assert CompletionCache(path).completion("d").texts == ["v"]


def test_loglik_keys_follow_model_settings_and_token_split(tmp_path):
    from evals.completion_cache import LoglikStore

    cache = CompletionCache(tmp_path / "c.jsonl")
    store = LoglikStore(cache, {"model": "abc", "code": "1"})
    settings = {"dtype": "torch.float32", "max_length": 2048}
    (key,) = store.keys([([1, 2], [3])], settings)
    assert store.keys([([1, 2], [3])], settings) == [key]
    assert store.keys([([1], [2, 3])], settings) != [key]  # same tokens, another split
    assert store.keys([([1, 2], [3])], {**settings, "max_length": 1024}) != [key]
    assert LoglikStore(cache, {"model": "abd", "code": "1"}).keys([([1, 2], [3])], settings) != [key]
    assert LoglikStore(cache, {"model": "abc", "code": "2"}).keys([([1, 2], [3])], settings) != [key]


def test_loglik_answers_are_buffered_then_kept(tmp_path):
    from evals.completion_cache import LoglikStore

    path = tmp_path / "c.jsonl"
    store = LoglikStore(CompletionCache(path), {"model": "abc"}, flush_s=3600)
    keys = store.keys([([1], [2]), ([1], [3])], {})
    store.add(keys, [(-1.5, True), (-7.25, False)])
    assert not path.exists()  # buffered: one append per flush, not per answer
    store.close()
    again = LoglikStore(CompletionCache(path), {"model": "abc"})
    assert [again.get(k) for k in keys] == [(-1.5, True), (-7.25, False)]
    assert again.get("missing") is None and CompletionCache(path).completion(keys[0]) is None
    eager = LoglikStore(CompletionCache(path), {"model": "abc"}, flush_s=0)
    eager.add(["k"], [(-0.5, True)])  # due at once
    assert CompletionCache(path).loglik("k") == (-0.5, True)


def test_a_burst_is_written_without_waiting_for_the_next_completion(tmp_path):
    """Answers that land together and are followed by a long quiet spell (a wave of
    long generations) reach the disk on the timer, not at the next arrival."""
    import time

    from evals.completion_cache import CompletionWriter

    path = tmp_path / "c.jsonl"
    writer = CompletionWriter(CompletionCache(path), flush_s=0.05)
    for k in "abc":
        writer.add(k, Completion([k], [1], ["stop"]))
    deadline = time.monotonic() + 10
    while len(CompletionCache(path)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(CompletionCache(path)) == 3
    writer.add("d", Completion(["d"], [1], ["stop"]))
    writer.close()  # the rest, and the timer stops
    assert len(CompletionCache(path)) == 4 and writer._thread is None


def test_readonly_reader_leaves_a_live_file_alone(tmp_path):
    import pytest

    from foundation.errors import FactoryError

    path = tmp_path / "c.jsonl"
    ident = {"engine": "vllm", "dtype": "float32", "model": "abc"}
    CompletionCache(path).add_completions(["a", "b"], [Completion(["x"], [1], ["stop"])] * 2, ident)
    CompletionCache(path).add_completions(["c"], [Completion(["y"], [1], ["stop"])])  # an untagged (older) row
    with open(path, "a") as f:
        f.write('{"key": "d", "texts": ["half')  # a writer mid-append
    before = path.read_bytes()
    reader = CompletionCache(path, readonly=True)
    assert len(reader) == 3 and reader.completion("c").texts == ["y"] and reader.completion("d") is None
    assert reader.identities() == [(ident, 2)]
    with pytest.raises(FactoryError, match="opened read-only"):
        reader.add_completions(["e"], [Completion(["z"], [1], ["stop"])])
    assert path.read_bytes() == before


def test_writer_lock_is_exclusive_and_released(tmp_path):
    import os
    import re

    import pytest

    from evals.completion_cache import writer_lock
    from foundation.errors import FactoryError

    path = tmp_path / "out" / "c.jsonl"
    with writer_lock(path):
        assert (tmp_path / "out" / "c.jsonl.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(FactoryError) as e:
            with writer_lock(path):
                pass
        assert re.fullmatch(
            rf".*c\.jsonl: another eval \(pid {os.getpid()}\) is writing it; wait for it, "
            r"use another --out, or read what it has so far with --cached-only",
            str(e.value),
        )
    with writer_lock(path):  # released on exit, also after the failed attempt
        pass


def test_cached_identity_finds_a_few_rows_the_probe_skips(tmp_path):
    """The engine a file was written under is found from a sample of the requests, and
    from all of them when the file holds too few for the sample to hit."""
    from evals.engines.cached import cached_identity
    from foundation.artifacts import content_hash
    from foundation.hashing import hash_tree

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    digest = content_hash(hash_tree(model))
    requests = [
        Request(messages=[{"role": "user", "content": str(i)}], sampling=Sampling(max_tokens=4)) for i in range(1000)
    ]
    untagged = {"engine": "vllm", "dtype": "float32", "model": digest}  # rows from before rows named it
    path = tmp_path / "c.jsonl"
    cache = CompletionCache(path)
    cache.add_completions(
        [cache.request_key(untagged, requests[i]) for i in (1, 2, 3)], [Completion(["x"], [1], ["stop"])] * 3
    )

    def found(model, engine=None):
        ident, got = cached_identity(CompletionCache(path, readonly=True), requests, model, engine)
        assert len(got) == len(requests)
        return ident, [i for i, c in enumerate(got) if c is not None], {c.texts[0] for c in got if c}

    assert found(str(model)) == (untagged, [1, 2, 3], {"x"})
    assert found(str(model), engine="hf") == (None, [], set())
    tagged = {"engine": "openai", "dtype": None, "model": "served", "base_url": "http://h/v1"}
    cache.add_completions(
        [cache.request_key(tagged, r) for r in requests[::2]], [Completion(["y"], [1], ["stop"])] * 500, tagged
    )
    assert found("served") == (tagged, list(range(0, 1000, 2)), {"y"})


def test_model_hash_is_computed_once_until_a_file_changes(tmp_path, monkeypatch):
    import os

    import foundation.hashing
    from evals.engines.common import model_hash

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 64)
    calls = []
    real = foundation.hashing.hash_tree
    monkeypatch.setattr(foundation.hashing, "hash_tree", lambda root, *a: calls.append(root) or real(root, *a))
    first = model_hash(str(tmp_path))
    assert model_hash(str(tmp_path)) == first and len(calls) == 1
    (tmp_path / "model.safetensors").write_bytes(b"\1" * 64)  # same size: the mtime tells
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    changed = model_hash(str(tmp_path))
    assert changed != first and len(calls) == 2
    (tmp_path / "extra.txt").write_text("x")  # a new file
    assert model_hash(str(tmp_path)) not in (first, changed) and len(calls) == 3
