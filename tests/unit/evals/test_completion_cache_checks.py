"""Completion-cache rows are checked at read: an edited, damaged or unchecked row is
reported in one line naming the file and line, not used, and its entry computed again;
a writer drops such lines, a reader leaves the file alone."""

import json

from evals.api import Completion
from evals.completion_cache import SUM, CompletionCache, LoglikStore, row_checksum
from evals.engines.cached import CachedEngine
from tests.unit.evals.engines.test_cached import RecordingEngine, _requests


def _edit(path, n, change):
    """Apply ``change`` to the row on line ``n`` (1-based), keeping it valid JSON."""
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[n - 1])
    change(row)
    lines[n - 1] = json.dumps(row) + "\n"
    path.write_text("".join(lines))


def test_rows_carry_a_checksum_of_what_they_answer(tmp_path):
    path = tmp_path / "c.jsonl"
    CompletionCache(path).add_completions(["a"], [Completion(["x"], [1], ["stop"])], {"engine": "hf"})
    row = json.loads(path.read_text())
    assert row[SUM] == row_checksum(row)
    assert row_checksum({**row, "engine": {"engine": "other"}}) == row[SUM]  # the tag only describes the key
    assert row_checksum({**row, "texts": ["y"]}) != row[SUM]


def test_an_edited_completion_is_reported_not_used_and_made_again(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    CachedEngine(RecordingEngine(), CompletionCache(path)).generate(_requests("one", "two", "three"))
    _edit(path, 2, lambda r: r.update(texts=["forged"]))  # still valid JSON
    capsys.readouterr()
    later = RecordingEngine()
    got = CachedEngine(later, CompletionCache(path)).generate(_requests("one", "two", "three"))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"warning: {path}: 1 of its lines discarded, line 2 does not match its checksum; "
        "their entries are computed again"
    )
    assert later.calls == [["two"]] and [c.texts[0] for c in got] == ["eno", "owt", "eerht"]
    assert "forged" not in path.read_text()  # dropped by the writer: reported once
    CompletionCache(path)
    assert "warning" not in capsys.readouterr().err


def test_unchecked_damaged_and_foreign_lines_are_counted_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    cache = CompletionCache(path)
    cache.add_completions(["a", "b"], [Completion(["x"], [1], ["stop"])] * 2)
    with open(path, "a") as f:
        f.write('{"key": "old", "texts": ["y"], "tokens": [1], "finish": ["stop"]}\n')  # no checksum
        f.write("\x00\x00garbage\n")
        f.write('["not", "a", "row"]\n')
    _edit(path, 1, lambda r: r.update(tokens=[2]))
    capsys.readouterr()
    again = CompletionCache(path)
    err = capsys.readouterr().err
    assert err == (
        f"warning: {path}: 4 of its lines discarded, line 1 does not match its checksum (3 more lines "
        "fail their check); their entries are computed again\n"
    )
    assert len(again) == 1 and again.completion("b").texts == ["x"]
    assert again.completion("a") is None and again.completion("old") is None


def test_an_edited_loglik_answer_is_not_used(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    store = LoglikStore(CompletionCache(path), {"model": "abc"}, flush_s=0)
    keys = store.keys([([1], [2]), ([1], [3])], {})
    store.add(keys, [(-1.5, True), (-7.25, False)])
    _edit(path, 2, lambda r: r.update(ll=[-0.01, True]))  # a better answer than the model gave
    again = LoglikStore(CompletionCache(path), {"model": "abc"})
    assert again.get(keys[0]) == (-1.5, True) and again.get(keys[1]) is None
    assert "line 2 does not match its checksum" in capsys.readouterr().err


def test_a_reader_reports_but_leaves_the_file_alone(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    CompletionCache(path).add_completions(["a", "b"], [Completion(["x"], [1], ["stop"])] * 2)
    _edit(path, 1, lambda r: r.update(texts=["forged"]))
    with open(path, "a") as f:
        f.write('{"key": "c", "texts": ["half')  # a writer mid-append: not damage
    before = path.read_bytes()
    capsys.readouterr()
    reader = CompletionCache(path, readonly=True)
    assert capsys.readouterr().err == (
        f"warning: {path}: 1 of its lines discarded, line 1 does not match its checksum; not used by this read\n"
    )
    assert reader.completion("a") is None and reader.completion("b").texts == ["x"]
    assert path.read_bytes() == before
