"""Labelled tables from any fsspec URL: CSV, TSV, JSON lines and parquet (``.gz``/``.bz2``/``.xz``
compressed text is decompressed; a UTF-8 byte-order mark, as on GLUE's MRPC files, is dropped).
A ``Table`` keeps every row with its location ("line 12", "row 7") so that an error names the file,
the row and the column.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from sma.config import ConfigError
from sma.data.storage import filesystem, open_url
from sma.inputs import InputError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".xz")


@dataclass
class Table:
    url: str
    columns: list[str]
    rows: list[list[Any]]  # one value per column; str for CSV/TSV, JSON / parquet scalars otherwise
    where: list[str]  # per row: "line N" (text formats, 1-based) or "row N" (parquet, 0-based)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows left out (bad_rows="drop")

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __len__(self) -> int:
        return len(self.rows)

    def index(self, column: str, key: str) -> int:
        """The position of ``column``; a missing column is a ``ConfigError`` naming ``key``."""
        if column not in self.columns:
            raise ConfigError(f"{key}: column {column!r} not in {self.url} (columns: {', '.join(self.columns)})")
        return self.columns.index(column)

    def location(self, row: int, column: str | None = None) -> str:
        """``"<file> line 12, column 'smiles'"`` for error messages."""
        col = f", column {column!r}" if column is not None else ""
        return f"{self.url} {self.where[row]}{col}"

    def row_id(self, row: int) -> str:
        return f"{self.name}:{self.where[row]}"


def is_missing(value: Any) -> bool:
    """An empty cell: None, a blank string, or a float NaN (parquet / JSON nulls)."""
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def table_format(url: str, file_format: str = "auto", key: str = "task.file_format") -> str:
    """``file_format`` if given, else the format named by the file's suffix (``.csv.gz`` is csv)."""
    if file_format != "auto":
        if file_format not in FORMATS:
            raise ConfigError(f"{key}: {file_format!r} is not one of auto, {', '.join(FORMATS)}")
        return file_format
    name = url.lower().rstrip("/")
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise ConfigError(f"{key}: cannot tell the format of {url} from its suffix; "
                      f"set it to one of {', '.join(FORMATS)}")


def read_table(url: str, file_format: str = "auto", *, key: str = "task.path", names: list[str] | None = None,
               quoting: int = csv.QUOTE_MINIMAL, max_rows: int = 0, bad_rows: str = "raise") -> Table:
    """Read a whole table. ``names``: the columns of a text file without a header row. ``quoting``:
    ``csv.QUOTE_NONE`` for files with stray quotes (GLUE). ``max_rows``: at most this many rows (0: all).
    ``bad_rows``: "raise" (``InputError`` naming the line) or "drop" (counted in ``Table.dropped``) for
    a text row whose field count differs from the header's. A missing file is a ``ConfigError`` on ``key``.
    """
    fmt = table_format(url, file_format, "task.file_format")
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise ConfigError(f"{key}: {url} does not exist")
    if fmt == "parquet":
        return _read_parquet(url, max_rows)
    if fmt == "jsonl":
        return _read_jsonl(url, max_rows)
    return _read_delimited(url, "," if fmt == "csv" else "\t", names, quoting, max_rows, bad_rows)


def _read_delimited(url: str, delimiter: str, names: list[str] | None, quoting: int, max_rows: int,
                    bad_rows: str) -> Table:
    table = Table(url, list(names or []), [], [])
    with open_url(url, "rb", compression="infer") as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""), delimiter=delimiter,
                            quoting=quoting)
        line = 0  # the physical line a record starts on (a quoted field may span lines)
        try:
            for record in reader:
                start, line = line + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # blank line
                if not table.columns:
                    table.columns = [c.strip() for c in record]
                    continue
                if len(record) != len(table.columns):
                    if bad_rows == "drop":
                        reason = f"{len(record)} fields instead of {len(table.columns)}"
                        table.dropped[reason] = table.dropped.get(reason, 0) + 1
                        continue
                    raise InputError(f"{url} line {start}: {len(record)} fields, expected {len(table.columns)} "
                                     f"({', '.join(table.columns)})")
                table.rows.append(record)
                table.where.append(f"line {start}")
                if max_rows and len(table.rows) >= max_rows:
                    break
        except UnicodeDecodeError as e:
            raise InputError(f"{url} near line {line + 1}: not UTF-8 text ({e.reason})") from None
        except csv.Error as e:
            raise InputError(f"{url} line {reader.line_num}: {e}") from None
    if not table.columns:
        raise InputError(f"{url}: no header row; the file is empty")
    return table


def _read_jsonl(url: str, max_rows: int) -> Table:
    objects: list[dict] = []
    where: list[str] = []
    columns: dict[str, None] = {}  # insertion-ordered union of the keys
    with open_url(url, "rb", compression="infer") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{url} line {n}: not a JSON object ({e})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{url} line {n}: expected a JSON object, got {type(obj).__name__}")
            columns.update(dict.fromkeys(obj))
            objects.append(obj)
            where.append(f"line {n}")
            if max_rows and len(objects) >= max_rows:
                break
    names = list(columns)
    return Table(url, names, [[obj.get(c) for c in names] for obj in objects], where)


def _read_parquet(url: str, max_rows: int) -> Table:
    import pyarrow.parquet as pq

    with open_url(url, "rb") as f:
        data = pq.read_table(f)
    if max_rows:
        data = data.slice(0, max_rows)
    columns = [data.column(i).to_pylist() for i in range(data.num_columns)]
    rows = [list(r) for r in zip(*columns)] if columns else []
    return Table(url, list(data.column_names), rows, [f"row {i}" for i in range(len(rows))])
