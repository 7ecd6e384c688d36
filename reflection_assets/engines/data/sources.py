"""Reading dataset sources from disk: Alpaca JSON arrays, JSON Lines, CSV, Parquet and
datasets saved with Hugging Face `datasets`. Yields (source_row, row) pairs; mapping rows to
records is the method layer's job. A file that cannot be parsed raises SourceError naming
the file, the line and what was expected, before anything is written anywhere."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from reflection_assets.errors import UserError
from reflection_assets.method.records import CONVERSATION_FIELDS, INSTRUCTION_FIELDS

FORMATS = ("json", "jsonl", "csv", "parquet", "hf")
BUNDLED_PREFIX = "bundled:"
BUNDLED = {"sample": "sample_alpaca.json", "eval_prompts": "eval_prompts.jsonl"}

SourceRow = tuple[int, object]


class SourceError(UserError):
    """A source that cannot be read at all. The message is meant for the user."""


def resolve_source(source: str) -> Path:
    """`bundled:sample` names a file shipped in the package; anything else is a path."""
    if source.startswith(BUNDLED_PREFIX):
        name = source[len(BUNDLED_PREFIX) :]
        if name not in BUNDLED:
            raise SourceError(
                f"{source}: no such bundled dataset; bundled ones are "
                + ", ".join(BUNDLED_PREFIX + n for n in BUNDLED)
            )
        return Path(str(resources.files("reflection_assets") / "data" / BUNDLED[name]))
    return Path(source).expanduser()


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (
            path / "dataset_dict.json"
        ).exists():
            return "hf"
        raise SourceError(
            f"{path}: a folder, but not one saved by Hugging Face `datasets` "
            "(no dataset_info.json, state.json or dataset_dict.json)"
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        # Many `.json` files are really JSON Lines. An array is JSON; an object may be one
        # document wrapping the rows ({"data": [...]}) or the first of many lines.
        with path.open("rb") as fh:
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if not head.startswith(b"{"):
            return "json"
        try:
            json.loads(_decode(path, path.read_bytes()))
        except json.JSONDecodeError:
            return "jsonl"
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise SourceError(
        f"{path}: cannot tell the format from the extension '{suffix}'; expected one of "
        ".json, .jsonl, .ndjson, .csv, .tsv, .parquet or a `datasets` folder "
        "(or pass --format)"
    )


def fingerprint_source(path: Path) -> str:
    """sha256 of the file's bytes (of every file, in name order, for a folder)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _decode(path: Path, data: bytes) -> str:
    # surrogateescape keeps invalid bytes visible as lone surrogates, so one bad row is
    # rejected as undecodable instead of failing the whole file.
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}: starts with a UTF-16 mark but is not valid UTF-16") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def _json_error(path: Path, exc: json.JSONDecodeError, line_offset: int = 0) -> SourceError:
    return SourceError(
        f"{path}: line {exc.lineno + line_offset}, column {exc.colno}: not valid JSON ({exc.msg})"
    )


def read_json_array(path: Path) -> Iterator[SourceRow]:
    text = _decode(path, path.read_bytes())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _json_error(path, exc) from None
    if isinstance(data, dict) and any(
        name in data for name in (*INSTRUCTION_FIELDS, *CONVERSATION_FIELDS)
    ):
        data = [data]  # one record on its own
    elif isinstance(data, dict):
        # Some exports wrap the rows: {"data": [...]} or {"train": [...]}.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise SourceError(
                f"{path}: line 1: expected a JSON array of records (Alpaca layout), got an object"
            )
        data = lists[0]
    if not isinstance(data, list):
        raise SourceError(
            f"{path}: line 1: expected a JSON array of records (Alpaca layout), "
            f"got {type(data).__name__}"
        )
    yield from enumerate(data, start=1)


def read_jsonl(path: Path) -> Iterator[SourceRow]:
    """source_row is the line number; blank lines are skipped."""
    text = _decode(path, path.read_bytes())
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(
                f"{path}: line {lineno}, column {exc.colno}: not valid JSON ({exc.msg}); "
                "expected one JSON object per line"
            ) from None


def read_csv(path: Path) -> Iterator[SourceRow]:
    """source_row is the data row number (the header is row 0)."""
    csv.field_size_limit(sys.maxsize)
    text = _decode(path, path.read_bytes())
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise SourceError(f"{path}: line 1: expected a header row naming the columns")
        header = [h.strip() for h in header]
        for number, values in enumerate(reader, start=1):
            if not values:
                continue
            if len(values) != len(header):
                raise SourceError(
                    f"{path}: line {reader.line_num}: {len(values)} fields, "
                    f"expected {len(header)} as in the header"
                )
            yield number, dict(zip(header, values, strict=True))
    except csv.Error as exc:
        raise SourceError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None


def read_parquet(path: Path) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from enumerate(table.to_pylist(), start=1)


def read_hf_saved(path: Path) -> Iterator[SourceRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise SourceError(f"{path}: not readable with datasets.load_from_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise SourceError(
                f"{path}: a DatasetDict without a 'train' split (has {', '.join(loaded)}); "
                "save the split you want on its own"
            )
        loaded = loaded["train"]
    yield from enumerate(loaded.to_list(), start=1)


def read_json_rows(path: Path) -> tuple[list[SourceRow], str]:
    """The rows of a JSON array (or an object wrapping one) or of a JSON Lines file, told
    apart by the content, not the extension, and what their numbers count: `item` or
    `line`. For files whose layout is not a dataset's (test sets)."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    try:
        array = _decode(path, path.read_bytes()).lstrip().startswith("[")
        return (list(read_json_array(path)), "item") if array else (list(read_jsonl(path)), "line")
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from None


READERS = {
    "json": read_json_array,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
    "hf": read_hf_saved,
}


def read_source(path: Path, fmt: str | None = None) -> list[SourceRow]:
    """All rows of a source, parsed. Raises SourceError for anything unreadable."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise SourceError(f"{path}: unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    try:
        return list(READERS[fmt](path))
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from None
