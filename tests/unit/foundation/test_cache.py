"""foundation.cache: where fetched sources live, and that asking for a place creates it."""

from pathlib import Path

from foundation.cache import cache_dir, cache_root


def test_factory_cache_wins_over_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = cache_root()
    assert root == tmp_path / "mine"
    assert root.is_dir()
    assert not (tmp_path / "xdg").exists()


def test_xdg_cache_home_when_factory_cache_is_unset_or_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FACTORY_CACHE")
    assert cache_root() == tmp_path / "xdg" / "factory"
    monkeypatch.setenv("FACTORY_CACHE", "")  # an empty setting counts as unset
    assert cache_root() == tmp_path / "xdg" / "factory"
    assert (tmp_path / "xdg" / "factory").is_dir()


def test_home_cache_when_neither_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("FACTORY_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "factory"
    assert (tmp_path / ".cache" / "factory").is_dir()


def test_cache_dir_joins_parts_and_creates_every_level(monkeypatch, tmp_path):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "c"))
    path = cache_dir("pypi", "pkg-1.0", "inner")
    assert path == tmp_path / "c" / "pypi" / "pkg-1.0" / "inner"
    assert path.is_dir()
    assert isinstance(path, Path)
    (path / "x").write_text("kept")
    assert cache_dir("pypi", "pkg-1.0", "inner") == path  # a second call is harmless
    assert (path / "x").read_text() == "kept"


def test_cache_dir_without_parts_is_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "c"))
    assert cache_dir() == cache_root() == tmp_path / "c"
