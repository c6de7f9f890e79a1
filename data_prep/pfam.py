"""Pfam protein sequences -> byte-id windows in MDS or tar shards (one sequence per sample).

Inputs, recognized by name:
  *.lmdb                 TAPE's LMDB (``pfam_{train,valid,holdout}.lmdb``): key ``num_examples`` holds
                         a pickled count, records are pickled dicts under ``b"0"``, ``b"1"``, ... with
                         ``primary``, ``protein_length``, ``clan``, ``family``. Local folders only
                         (LMDB memory-maps its file). The pickles are TAPE's; only unpickle files you trust.
  *.json                 TAPE's JSON (one array of record dicts; streamed with ijson, never loaded whole)
  *.fasta, *.fa[.gz]     Pfam-A FASTA, gzipped or not
The split comes from the file name (train / valid / holdout), else --split.
Sequences of --longer-than residues or fewer are dropped (default 50, as in the SMA paper); a sequence
longer than --window - 1 residues is cut into consecutive windows.

    python -m data_prep.pfam --src pfam/pfam_*.lmdb --dst s3://bucket/pfam --format mds --workers 3
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

from data_prep.cli import execute, parser, parts_by_split, sources, split_from_name
from data_prep.sources import decode_utf8, numbered_lines
from data_prep.writer import Part, WindowCorpus
from sma.data.storage import is_local, local_path, open_url

PROG = "data_prep.pfam"
SPLITS = ("train", "valid", "holdout")


def source_kind(url: str) -> str:
    name = url.lower().rstrip("/").removesuffix(".gz")
    if name.endswith(".lmdb"):
        return "lmdb"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".fasta", ".fa", ".faa")):
        return "fasta"
    raise ValueError(f"{url}: not a Pfam input (expected .lmdb, .json, .fasta or .fa[.gz])")


def lmdb_records(url: str) -> Iterator[tuple[str, Any]]:
    import lmdb

    if not is_local(url):
        raise ValueError(f"{url}: LMDB inputs must be local folders (LMDB memory-maps its data file)")
    env = lmdb.open(local_path(url), readonly=True, lock=False, readahead=False, subdir=True)
    try:
        with env.begin() as txn:
            raw_count = txn.get(b"num_examples")
            if raw_count is None:
                raise ValueError(f"{url}: no 'num_examples' key; not a TAPE LMDB")
            for i in range(int(pickle.loads(raw_count))):
                yield f"record {i}", ("lmdb", txn.get(str(i).encode()))
    finally:
        env.close()


def json_records(url: str, endpoint_url: str) -> Iterator[tuple[str, Any]]:
    import ijson

    with open_url(url, "rb", endpoint_url, compression="infer") as f:
        i = 0
        try:
            for i, obj in enumerate(ijson.items(f, "item")):
                yield f"record {i}", ("json", obj)
        except ijson.JSONError as e:
            yield f"record {i + 1}", ("json", ValueError(f"invalid JSON: {e}"))


def fasta_records(url: str, endpoint_url: str) -> Iterator[tuple[str, Any]]:
    """``("line N", (header, sequence))`` per FASTA entry, N being the header's line."""
    header, where, seq = None, "", []
    for location, line in numbered_lines(url, endpoint_url):
        if line.startswith(b">"):
            if header is not None or seq:
                yield where, ("fasta", (header, b"".join(seq)))
            header, where, seq = line[1:], location, []
        elif line.strip():
            if header is None:
                yield location, ("fasta", ValueError("sequence data before the first '>' header"))
                continue
            seq.append(line.strip())
    if header is not None:
        yield where, ("fasta", (header, b"".join(seq)))


class PfamCorpus(WindowCorpus):
    name = "pfam"
    pack = False  # one protein per sample, as TAPE feeds them

    def __init__(self, window: int, longer_than: int):
        super().__init__(window)
        self.longer_than = longer_than

    def keep(self, doc: str) -> bool:
        return len(doc) > self.longer_than

    def records(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        kind = source_kind(part.source)
        if kind == "lmdb":
            return lmdb_records(part.source)
        if kind == "json":
            return json_records(part.source, endpoint_url)
        return fasta_records(part.source, endpoint_url)

    def parse(self, raw: tuple[str, Any]) -> str:
        kind, value = raw
        if isinstance(value, Exception):
            raise value
        if kind == "lmdb":
            if value is None:
                raise KeyError("record missing (num_examples says it exists)")
            value = pickle.loads(value)
        if kind == "fasta":
            seq = decode_utf8(value[1])
        else:
            if not isinstance(value, dict) or not isinstance(value.get("primary"), str):
                raise ValueError("expected a dict with a string 'primary' field")
            seq = value["primary"]
        if not seq.isalpha() or not seq.isascii():
            raise ValueError(f"sequence has non-residue characters: {seq[:40]!r}")
        return seq.upper()


def main(argv: list[str] | None = None) -> dict:
    ap = parser(PROG, __doc__, window=1024)
    ap.add_argument("--split", default="train", help="split for files whose name names none (default train)")
    ap.add_argument("--longer-than", type=int, default=50, help="keep sequences longer than this (default 50)")
    args = ap.parse_args(argv)
    srcs = sources(args)
    for s in srcs:
        try:
            source_kind(s)  # reject unknown inputs before any work starts
        except ValueError as e:
            ap.error(str(e))
    parts = parts_by_split([(s, split_from_name(s, SPLITS, args.split)) for s in srcs])
    return execute(PfamCorpus(args.window, args.longer_than), parts, args, argv, PROG)


if __name__ == "__main__":
    main()
