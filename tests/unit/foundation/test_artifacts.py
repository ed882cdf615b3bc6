"""Artifact directories: replacement by rename, and what a kill between the renames leaves."""

from foundation.artifacts import replace_dir, sweep_trash


def _dir(path, text):
    path.mkdir()
    (path / "model.safetensors").write_text(text)
    return path


def test_replace_dir_swaps_in_the_new_copy_and_leaves_no_trash(tmp_path):
    old, new = _dir(tmp_path / "release", "old"), _dir(tmp_path / "incoming", "new")
    replace_dir(new, old)
    assert (tmp_path / "release" / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


def test_sweep_trash_removes_only_trash_dirs(tmp_path):
    _dir(tmp_path / ".trash-release-11-22", "old")
    _dir(tmp_path / "release", "new")
    (tmp_path / ".trash-note").write_text("a file, not a left-aside artifact")
    assert sweep_trash(tmp_path) == [".trash-release-11-22"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".trash-note", "release"]
    assert sweep_trash(tmp_path) == []
