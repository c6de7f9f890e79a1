"""HIGGS -> continuous samples (28 tokens x 1 value, plus the 0/1 label) in MDS or tar shards.

Inputs:
  HIGGS.csv[.gz]         UCI's file: no header; label first, then 28 features; 11,000,000 rows. The
                         standard split: the last --test-rows (500,000) rows are ``test``, the rest ``train``.
                         Both splits are written in parallel from the one file.
  a folder with info.json, N_{train,val,test}.npy, y_{train,val,test}.npy
                         the "HIGGS small" benchmark (62,752 / 15,688 / 19,610 rows) as its authors
                         distribute it; splits train / val / test.
Per-feature mean and standard deviation are computed on the train split and stored with the shards
(``<dst>/<split>/stats.json`` and the manifest); readers standardize with them. The shards keep the raw
values, so other statistics can be applied later without rewriting them.

    python -m data_prep.higgs --src HIGGS.csv.gz --dst s3://bucket/higgs --format mds
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from data_prep.cli import execute, parser, sources
from data_prep.sources import numbered_lines
from data_prep.writer import Corpus, Part
from sma.data.samples import Sample
from sma.data.storage import filesystem, join, open_url, read_json

PROG = "data_prep.higgs"
NUM_FEATURES = 28
TEST_ROWS = 500_000
SMALL_SPLITS = ("train", "val", "test")


def count_rows(url: str, endpoint_url: str = "") -> int:
    """Lines in a (possibly gzipped) CSV, streamed."""
    n = 0
    with open_url(url, "rb", endpoint_url, compression="infer") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            n += chunk.count(b"\n")
    return n


class HiggsCorpus(Corpus):
    name = "higgs"

    def records(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        if part.source.endswith(".npy"):
            return self._npy_rows(part, endpoint_url)
        return self._csv_rows(part, endpoint_url)

    def _csv_rows(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        start, stop = part.rows or (0, None)
        for i, (location, line) in enumerate(numbered_lines(part.source, endpoint_url)):
            if i < start:
                continue
            if stop is not None and i >= stop:
                return
            yield location, ("csv", line)

    def _npy_rows(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        x = _load_npy(part.source, endpoint_url)
        y = _load_npy(part.source.rsplit("/", 1)[0] + "/y_" + part.source.rsplit("/N_", 1)[1], endpoint_url)
        if x.ndim != 2 or x.shape[1] != NUM_FEATURES or len(y) != len(x):
            yield "file", ("npy", ValueError(f"expected N (rows, {NUM_FEATURES}) and y (rows,), got {x.shape}, {y.shape}"))
            return
        for i in range(len(x)):
            yield f"row {i}", ("npy", (y[i], x[i]))

    def parse(self, raw: tuple[str, Any]) -> Sample:
        kind, value = raw
        if isinstance(value, Exception):
            raise value
        if kind == "csv":
            fields = value.split(b",")
            if len(fields) != NUM_FEATURES + 1:
                raise ValueError(f"expected {NUM_FEATURES + 1} comma-separated values, got {len(fields)}")
            row = np.array([float(v) for v in fields], dtype=np.float64)
            label, features = row[0], row[1:]
        else:
            label, features = value
            features = np.asarray(features, dtype=np.float64)
        if label not in (0.0, 1.0):
            raise ValueError(f"label must be 0 or 1, got {label}")
        if not np.isfinite(features).all():
            raise ValueError("a feature is NaN or infinite")
        return {"x": features.astype(np.float32)[:, None], "y": np.float32(label)}

    def samples(self, items: Iterator[Sample]) -> Iterator[Sample]:
        return items


def _load_npy(url: str, endpoint_url: str) -> np.ndarray:
    with open_url(url, "rb", endpoint_url) as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)  # HIGGS small is ~10 MB


def higgs_parts(src: list[str], test_rows: int, rows: int | None, endpoint_url: str) -> tuple[list[Part], dict]:
    """Parts for either input layout, plus what the manifest should record about the split."""
    if len(src) != 1:
        raise ValueError(f"--src takes one HIGGS.csv[.gz] file or one HIGGS-small folder, got {len(src)}")
    url = src[0]
    fs, path = filesystem(url, endpoint_url)
    if fs.isdir(path):
        info = read_json(join(url, "info.json"), endpoint_url)
        parts = [Part(i, s, join(url, f"N_{s}.npy")) for i, s in enumerate(SMALL_SPLITS)]
        return parts, {"source_info": info}
    total = rows if rows is not None else count_rows(url, endpoint_url)
    if not 0 < test_rows < total:
        raise ValueError(f"--test-rows {test_rows} must lie in (0, {total}) for a file of {total} rows")
    parts = [Part(0, "train", url, (0, total - test_rows)), Part(1, "test", url, (total - test_rows, total))]
    return parts, {"split_rule": f"last {test_rows} of {total} rows are test"}


def main(argv: list[str] | None = None) -> dict:
    ap = parser(PROG, __doc__)
    ap.add_argument("--test-rows", type=int, default=TEST_ROWS, help="CSV only: rows at the end for test")
    ap.add_argument("--rows", type=int, default=None, help="CSV only: row count if known (saves a counting pass)")
    args = ap.parse_args(argv)
    try:
        parts, extra = higgs_parts(sources(args), args.test_rows, args.rows, args.endpoint_url)
    except ValueError as e:
        ap.error(str(e))
    return execute(HiggsCorpus(), parts, args, argv, PROG, extra)


if __name__ == "__main__":
    main()
