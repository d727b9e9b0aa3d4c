"""Reading release files with errors that name the file, the row and the field.

Rows are numbered from 1, the first data row (a CSV header is not counted).

Every reader returns plain rows (dicts or strings); loaders turn rows into records. A
missing file, a file that does not parse, a row without a required field: each is a
`RefusalScopeError` that says which file and what to do about it.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import RefusalScopeError

DATA_FIX = "pass --data-dir (or set $REFUSALSCOPE_DATA) to the folder that holds the original release files"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # jailbreak templates exceed the 128 kB default


def need_file(path: Path, what: str = "") -> Path:
    if not path.is_file():
        label = f" ({what})" if what else ""
        raise RefusalScopeError(f"dataset file {path} does not exist{label}", DATA_FIX)
    return path


def malformed(path: Path, detail: str, fix: str | None = None) -> RefusalScopeError:
    return RefusalScopeError(
        f"malformed dataset file {path}: {detail}",
        fix or "restore the original release file (see the dataset's SOURCE.md / upstream repository)",
    )


def read_csv(path: Path, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as dicts, checking the `required` columns."""
    need_file(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                raise malformed(path, f"missing column(s) {', '.join(repr(c) for c in missing)}; it has {columns}")
            rows = []
            for number, row in enumerate(reader, start=1):  # data rows, numbered from 1
                for column in required:
                    if row.get(column) is None:
                        raise malformed(path, f"row {number} has no value for field '{column}'")
                rows.append(row)
            return rows
    except (UnicodeDecodeError, csv.Error) as exc:
        raise malformed(path, f"not a readable CSV file ({exc})") from exc


def read_csv_lists(path: Path) -> list[list[str]]:
    """Rows of a CSV file without a header (MMLU's release files), as lists; blank lines skipped."""
    need_file(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [row for row in csv.reader(handle) if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise malformed(path, f"not a readable CSV file ({exc})") from exc


def read_json(path: Path) -> Any:
    need_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise malformed(path, f"not valid JSON ({exc})") from exc


def read_jsonl(path: Path) -> list[Any]:
    need_file(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except (json.JSONDecodeError, RecursionError) as exc:
                    raise malformed(path, f"line {number} is not valid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise malformed(path, f"not UTF-8 text ({exc})") from exc
    return rows


def read_lines(path: Path) -> list[str]:
    """Non-empty lines, stripped of their line ending (CRLF too)."""
    need_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(path, f"not UTF-8 text ({exc})") from exc
    return [line for line in text.splitlines() if line.strip()]


def read_parquet(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet file (the hub's format for most datasets); needs pyarrow."""
    need_file(path)
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise RefusalScopeError(
            f"reading {path.name} needs the pyarrow package (Hugging Face hub datasets are parquet files)",
            "pip install pyarrow, or pass --data-dir with the original release files",
        ) from exc
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise malformed(path, f"not a readable parquet file ({exc})") from exc


def read_table(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a .csv, .json (a list of objects), .jsonl or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path, required)
    if suffix == ".parquet":
        rows = read_parquet(path)
    elif suffix == ".jsonl":
        rows = read_jsonl(path)
    elif suffix == ".json":
        rows = read_json(path)
        if not isinstance(rows, list):
            raise malformed(path, f"expected a JSON list of objects, found {type(rows).__name__}")
    else:
        raise RefusalScopeError(f"cannot read {path}: unknown table format '{suffix}'")
    check_fields(path, rows, required)
    return rows


def field_of(
    path: Path, row: Any, index: int, name: str, types: type | tuple[type, ...] = str, allow_none: bool = False
) -> Any:
    """row[name], checked: a clear error names the file, the row and the field."""
    if not isinstance(row, dict):
        raise malformed(path, f"row {index} is a {type(row).__name__}, expected an object with field '{name}'")
    if name not in row:
        raise malformed(path, f"row {index} has no field '{name}'")
    value = row[name]
    if value is None and allow_none:
        return None
    if not isinstance(value, types):
        expected = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise malformed(path, f"row {index}: field '{name}' is {type(value).__name__}, expected {expected}")
    return value


def check_fields(path: Path, rows: Iterable[Any], required: Sequence[str]) -> None:
    for index, row in enumerate(rows, start=1):
        for name in required:
            field_of(path, row, index, name, object)


def text_of(path: Path, row: Any, index: int, name: str) -> str:
    """A required non-empty text field."""
    value = field_of(path, row, index, name, str)
    if not value.strip():
        raise malformed(path, f"row {index}: field '{name}' is empty")
    return value
