"""Record streams over input files, with the location of every record for error messages.

Everything here streams: no input file is ever read whole into memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sma.data.storage import open_url


def numbered_lines(url: str, endpoint_url: str = "") -> Iterator[tuple[str, bytes]]:
    """``("line N", raw bytes without the newline)``; ``.gz``/``.bz2``/``.xz`` are decompressed."""
    with open_url(url, "rb", endpoint_url, compression="infer") as f:
        for n, line in enumerate(f, 1):
            yield f"line {n}", line.rstrip(b"\r\n")


def decode_utf8(raw: bytes) -> str:
    """Strict UTF-8 (a bad byte is a malformed record, reported with its line)."""
    return raw.decode("utf-8")


def paragraphs(url: str, endpoint_url: str = "") -> Iterator[tuple[str, bytes]]:
    """Blank-line separated paragraphs of a plain text file: ``("lines A-B", text)``.

    A BooksCorpus book (one sentence per line, no blank lines) is one paragraph: the whole book is
    one document, so its windows are consecutive stretches of the book.
    """
    buf: list[bytes] = []
    first = 0
    location = ""
    for location, line in numbered_lines(url, endpoint_url):
        n = int(location.split()[1])
        if line.strip():
            if not buf:
                first = n
            buf.append(line)
        elif buf:
            yield f"lines {first}-{n - 1}", b"\n".join(buf)
            buf = []
    if buf:
        yield f"lines {first}-{location.split()[1]}", b"\n".join(buf)


def parquet_column(url: str, column: str, endpoint_url: str = "") -> Iterator[tuple[str, Any]]:
    """One column of a parquet file, batch by batch: ``("row N", value)``."""
    import pyarrow.parquet as pq

    with open_url(url, "rb", endpoint_url) as f:
        pf = pq.ParquetFile(f)
        if column not in pf.schema_arrow.names:
            raise ValueError(f"{url}: parquet file has no {column!r} column (columns: {pf.schema_arrow.names})")
        row = 0
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            for value in batch.column(0).to_pylist():
                yield f"row {row}", value
                row += 1
