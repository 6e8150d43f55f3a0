"""Reading dataset sources: JSONL, JSON (an array) or Parquet; one file or a directory of them.

Every record comes with its file and line (Parquet: row) number, so rejections can point at it.
Unparseable lines are yielded as `RawRecord(error=...)`, never dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.contract import layout

from ..errors import DataError
from ..settings import TrainerSettings

if TYPE_CHECKING:
    from ..context import StageContext

EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
DATA_MOUNT_ENV = layout.ENV_DATA_DIR


@dataclass
class RawRecord:
    file: str
    line: int
    value: Any = None
    error: str | None = None


def resolve_source(ctx: StageContext, source: Any, field: str) -> Path:
    """A DataSource (path | pvc | s3) as a local path that exists."""
    if source.path:
        p = ctx.resolve(source.path)
    elif source.pvc:
        p = TrainerSettings.from_env().data_dir / source.pvc.path.lstrip("/")
    elif source.s3:
        raise DataError(f"{field}.s3 ({source.s3.uri}) cannot be read by the trainer directly", hint=f"copy it to a PVC and use {field}.pvc")
    else:
        raise DataError(f"{field} names no source")
    if not p.exists():
        raise DataError(f"{field}: {p} does not exist")
    return p


def list_files(path: Path, file_type: str, field: str) -> list[Path]:
    """The data files of a source: the file itself, or every supported file under the directory (sorted)."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")
                       and (f.suffix.lower() in EXTENSIONS if file_type == "auto" else EXTENSIONS.get(f.suffix.lower()) == file_type))
        if not files:
            want = "/".join(EXTENSIONS) if file_type == "auto" else file_type
            raise DataError(f"{field}: directory {path} holds no {want} files")
        return files
    if file_type == "auto" and path.suffix.lower() not in EXTENSIONS:
        raise DataError(
            f"{field}: unsupported file type {path.suffix or '(none)'!r} for {path.name}",
            hint="use .jsonl, .json or .parquet, or set dataset.fileType",
        )
    return [path]


def file_type_of(path: Path, file_type: str) -> str:
    return EXTENSIONS[path.suffix.lower()] if file_type == "auto" else file_type


def sha256_files(files: list[Path]) -> tuple[str, dict[str, str]]:
    """(combined sha256 over names and bytes in order, per-file sha256)."""
    total = hashlib.sha256()
    per: dict[str, str] = {}
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        per[str(f)] = h.hexdigest()
        total.update(f.name.encode() + b"\0" + h.hexdigest().encode())
    return total.hexdigest(), per


def read_file(path: Path, kind: str) -> Iterator[RawRecord]:
    name = str(path)
    if kind == "jsonl":
        yield from _read_jsonl(path, name)
    elif kind == "json":
        yield from _read_json(path, name)
    elif kind == "parquet":
        yield from _read_parquet(path, name)
    else:
        raise DataError(f"unsupported file type {kind!r} for {name}")


def _read_jsonl(path: Path, name: str) -> Iterator[RawRecord]:
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(name, n, error=f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not text.strip():
                yield RawRecord(name, n, error="blank")
                continue
            line = text.rstrip("\r\n")
            try:
                yield RawRecord(name, n, json.loads(line))
            except json.JSONDecodeError as exc:
                # the column within this line (the newline is not part of it); an error past the last character is at its end
                if exc.msg.startswith("Unterminated string"):
                    error = f"invalid JSON: the line ends inside a string that starts at column {exc.pos + 1} (truncated record?)"
                elif exc.pos >= len(line.rstrip()):
                    error = f"invalid JSON: {exc.msg} at the end of the line (truncated record?)"
                else:
                    error = f"invalid JSON: {exc.msg} at column {exc.pos + 1}"
                yield RawRecord(name, n, error=error)


def _read_json(path: Path, name: str) -> Iterator[RawRecord]:
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "[":
        # a single JSON document that is not an array: maybe JSON Lines named .json
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            if "\n" in text.strip():
                yield from _read_jsonl(path, name)
                return
            raise DataError(f"{name}: not valid JSON") from None
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            raise DataError(f"{name}: records are under the key 'data'", hint="store a top-level JSON array of records, or JSON Lines")
        raise DataError(f"{name}: a .json dataset must hold a top-level array of records")
    line, pos = 1, 0
    i += 1
    while True:
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == "]":
            return
        line += text.count("\n", pos, i)
        pos = i
        try:
            value, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        yield RawRecord(name, line, value)
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i += 1
        elif i < len(text) and text[i] == "]":
            return
        else:
            line += text.count("\n", pos, i)
            raise DataError(f"{name}: invalid JSON array near line {line}: expected ',' or ']'")


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _read_parquet(path: Path, name: str) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 — pyarrow raises several unrelated types for a bad file
        raise DataError(f"{name}: not a readable Parquet file ({exc})") from None
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            row += 1
            yield RawRecord(name, row, rec)
