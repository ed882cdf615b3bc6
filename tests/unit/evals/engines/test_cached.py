"""CachedEngine: the completion cache as an engine in front of another engine."""

import pytest

from evals.api import Completion, Request, Sampling
from evals.completion_cache import CompletionCache, engine_identity
from evals.engines.cached import CachedEngine
from foundation.errors import FactoryError

IDENT = {"engine": "recording", "dtype": "float32", "model": "abc123"}


class RecordingEngine:
    """Answers each prompt reversed; records every batch it is asked for."""

    name = "recording"

    def __init__(self, streams=False):
        self.streams = streams
        self.calls: list[list[str]] = []
        self.closed = False

    def generate(self, requests, progress=True, on_done=None):
        self.calls.append([r.prompt for r in requests])
        out = []
        for i, r in enumerate(requests):
            out.append(Completion([r.prompt[::-1]], [len(r.prompt)], ["stop"]))
            if on_done is not None:
                on_done(i, out[-1])
        return out

    def describe(self):
        return {"engine": "recording", "model": "m", "model_hash": "abc123", "dtype": "float32", "batch": 4}

    def close(self):
        self.closed = True


def _requests(*prompts, max_tokens=8):
    return [Request(prompt=p, sampling=Sampling(max_tokens=max_tokens)) for p in prompts]


@pytest.mark.parametrize("streams", [False, True])
def test_a_repeated_request_is_answered_from_the_cache(tmp_path, streams):
    inner = RecordingEngine(streams)
    eng = CachedEngine(inner, CompletionCache(tmp_path / "c.jsonl"))
    first = eng.generate(_requests("abc", "hello"))
    assert inner.calls == [["abc", "hello"]] and eng.reused == 0
    assert [c.texts for c in first] == [["cba"], ["olleh"]]

    again = eng.generate(_requests("abc", "hello"))
    assert inner.calls == [["abc", "hello"]]  # the inner engine was not asked again
    assert eng.reused == 2 and eng.wall_s >= 0
    assert [(c.texts, c.tokens, c.finish_reasons) for c in again] == [
        (["cba"], [3], ["stop"]),
        (["olleh"], [5], ["stop"]),
    ]

    # a new request and a changed sampling are forwarded; the known one is not
    mixed = eng.generate(_requests("abc", "new") + _requests("abc", max_tokens=9))
    assert inner.calls[1:] == [["new", "abc"]] and eng.reused == 1
    assert [c.texts[0] for c in mixed] == ["cba", "wen", "cba"]
    assert eng.identity == engine_identity(inner.describe()) == IDENT
    assert eng.describe() == inner.describe() and eng.name == "recording"


def test_the_cache_file_serves_a_later_run(tmp_path):
    path = tmp_path / "c.jsonl"
    CachedEngine(RecordingEngine(), CompletionCache(path)).generate(_requests("one", "two", "three"))
    assert len(path.read_text().splitlines()) == 3

    later = RecordingEngine()
    got = CachedEngine(later, CompletionCache(path)).generate(_requests("two", "four"))
    assert later.calls == [["four"]] and [c.texts[0] for c in got] == ["owt", "ruof"]
    assert len(path.read_text().splitlines()) == 4


def test_an_engine_that_does_not_stream_is_asked_in_chunks(tmp_path):
    inner = RecordingEngine(streams=False)
    eng = CachedEngine(inner, CompletionCache(tmp_path / "c.jsonl"), chunk=2)
    eng.generate(_requests("a", "b", "c", "d", "e"))
    assert inner.calls == [["a", "b"], ["c", "d"], ["e"]]
    streaming = RecordingEngine(streams=True)
    CachedEngine(streaming, CompletionCache(tmp_path / "s.jsonl"), chunk=2).generate(_requests("a", "b", "c"))
    assert streaming.calls == [["a", "b", "c"]]  # one call keeps its batch full; rows kept as they land


class PlannedEngine(RecordingEngine):
    """An engine that can say its cache identity before it is built (as LazyEngine does)."""

    def __init__(self):
        super().__init__()
        self.started = False

    def planned_identity(self):
        return IDENT

    def start(self):
        self.started = True
        return self

    def describe(self):
        return super().describe() if self.started else {"engine": "recording", "started": False}


def test_an_engine_whose_completions_are_all_cached_is_not_started(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    CachedEngine(RecordingEngine(), CompletionCache(path)).generate(_requests("x", "yz"))
    planned = PlannedEngine()
    eng = CachedEngine(planned, CompletionCache(path))
    got = eng.generate(_requests("x", "yz"))
    assert not planned.started and planned.calls == [] and eng.reused == 2 and eng.wall_s == 0.0
    assert [c.texts[0] for c in got] == ["x", "zy"]
    assert eng.describe() == {"engine": "recording", "started": False}
    assert "all 2 completions from" in capsys.readouterr().err
    eng.generate(_requests("x", "new"))  # one missing: the engine starts and makes only that one
    assert planned.started and planned.calls == [["new"]] and eng.reused == 1


def test_without_an_inner_engine_only_the_cache_answers(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    path = tmp_path / "c.jsonl"
    writer = CachedEngine(RecordingEngine(), CompletionCache(path))
    from evals.engines.common import model_hash

    digest = model_hash(str(model))
    writer.inner.describe = lambda: {"engine": "hf", "model_hash": digest, "dtype": "float32"}
    writer.generate(_requests("kept"))
    reader = CachedEngine(None, CompletionCache(path, readonly=True), model=str(model))
    got = reader.generate(_requests("kept", "never made"))
    assert got[0].texts == ["tpek"] and got[1] is None and reader.reused == 1 and reader.wall_s == 0.0
    assert reader.name == "none"
    assert reader.describe() == {
        "engine": "hf",
        "dtype": "float32",
        "cached_only": True,
        "cache": str(path),
        "model_hash": digest,
    }
    assert CachedEngine(None, CompletionCache(path, readonly=True), engine="vllm").name == "vllm"


def test_an_engine_that_loses_requests_is_a_one_line_error(tmp_path):
    inner = RecordingEngine()
    inner.generate = lambda requests, progress=True: []
    with pytest.raises(FactoryError, match=r"^engine recording returned 0 completions for 2 requests$"):
        CachedEngine(inner, CompletionCache(tmp_path / "c.jsonl")).generate(_requests("a", "b"))
