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
    assert key == CompletionCache.request_key(hf, Request(messages=[{"role": "user", "content": "hi"}],
                                                          sampling=Sampling(max_tokens=8)))
    assert key != CompletionCache.request_key(hf, Request(messages=r.messages, sampling=Sampling(max_tokens=9)))
    assert key != CompletionCache.request_key(hf, Request(messages=r.messages, sampling=Sampling(max_tokens=8, seed=1)))
    assert key != CompletionCache.request_key({**hf, "model": "abd"}, r)


def test_round_trip_and_damaged_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = CompletionCache(path)
    cache.add_completions(["a", "b"], [Completion(["x"], [1], ["stop"]), Completion(["y", "z"], [2, 3], ["length"] * 2)])
    cache.add_records("t", [{"id": "1", "metrics": {"acc": 1.0}}])
    with open(path, "a") as f:
        f.write("not json\n{\"no_key\": 1}\n[1, 2]\n")
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

