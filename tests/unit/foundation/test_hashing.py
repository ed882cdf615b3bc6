def test_source_digests_name_files_by_part_and_skip_compiled_caches(tmp_path):
    from foundation.hashing import sha256_file, source_digests

    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "top.py").write_text("t = 1\n")
    want_a, want_top = sha256_file(tmp_path / "pkg" / "a.py"), sha256_file(tmp_path / "top.py")
    assert source_digests(tmp_path) == {"pkg/a.py": want_a, "top.py": want_top}
    assert source_digests(tmp_path, ("pkg", "top.py")) == {"pkg/a.py": want_a, "top.py": want_top}
    assert source_digests(tmp_path / "pkg") == {"a.py": want_a}
