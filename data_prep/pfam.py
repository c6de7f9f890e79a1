"""Pfam protein sequences -> byte-id windows in MDS or tar shards (one sequence per sample).

Inputs, recognized by name:
  *.lmdb                 TAPE's LMDB (``pfam_{train,valid,holdout}.lmdb``): key ``num_examples`` holds
                         a pickled count, records are pickled dicts under ``b"0"``, ``b"1"``, ... with
                         ``primary``, ``protein_length``, ``clan``, ``family``. Local folders only
                         (LMDB memory-maps its file). The pickles are TAPE's; only unpickle files you trust.
  *.json                 TAPE's JSON (one array of record dicts; streamed with ijson, never loaded whole)
  *.fasta, *.fa, *.faa[.gz]  Pfam-A (or any protein) FASTA, gzipped or not
The split comes from the file name (train / valid / holdout), else --split.
Residues are letters (the 20 amino acids and IUPAC's B Z J X U O; lower case is upper-cased); a final
'*' (a stop codon, as genome annotation writes it) is stripped. Any other character is a malformed
record, reported by its line in the file, its position in the sequence and its value.
Sequences of --longer-than residues or fewer are dropped and counted (default 50, as in the SMA paper);
a sequence longer than --window - 1 residues is cut into consecutive windows.

    python -m data_prep.pfam --src pfam/pfam_*.lmdb --dst s3://bucket/pfam --format mds --workers 3
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from typing import Any

from data_prep.cli import execute, parser, parts_by_split, sources, split_from_name
from data_prep.sources import numbered_lines
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


class ResidueError(ValueError):
    """A character that is no residue, at ``position`` (1-based) of its sequence."""

    def __init__(self, position: int, char: str):
        super().__init__(f"residue {position} is {char!r}, not an amino-acid letter (A-Z, IUPAC codes "
                         "included; a final '*' is stripped)")
        self.position = position


_NOT_RESIDUE = re.compile(r"[^A-Za-z]")


def protein(seq: str) -> str:
    """The residues of one sequence, upper-cased, without a terminal stop ``*`` (genome annotation ends
    proteins with one). Every letter is kept: the 20 amino acids and IUPAC's ``B Z J X U O``."""
    residues = seq[:-1] if seq.endswith("*") else seq
    bad = _NOT_RESIDUE.search(residues)
    if bad:
        raise ResidueError(bad.start() + 1, bad.group())
    return residues.upper()


def fasta_records(url: str, endpoint_url: str) -> Iterator[tuple[str, Any]]:
    """``("line N", (header, sequence))`` per FASTA entry, N being the line of its first residue (of its
    header if it has none); for an entry holding a character that is no residue, N is that
    character's line and the record is the ``ResidueError``."""
    header, header_at, lines = None, "", []

    def entry() -> tuple[str, Any]:
        seq = "".join(text for _, text in lines)
        try:
            protein(seq)
        except ResidueError as e:
            position = e.position
            for where, text in lines:  # the line holding that residue
                if position <= len(text):
                    return where, ("fasta", e)
                position -= len(text)
        return (lines[0][0] if lines else header_at), ("fasta", (header, seq))

    for location, line in numbered_lines(url, endpoint_url):
        if line.startswith(b">"):
            if header is not None:
                yield entry()
            header, header_at, lines = line[1:], location, []
        elif line.strip():
            if header is None:
                yield location, ("fasta", ValueError("sequence data before the first '>' header"))
                continue
            lines.append((location, line.strip().decode("utf-8", errors="replace")))
    if header is not None:
        yield entry()


class PfamCorpus(WindowCorpus):
    name = "pfam"
    pack = False  # one protein per sample, as TAPE feeds them

    def __init__(self, window: int, longer_than: int):
        super().__init__(window)
        self.longer_than = longer_than

    @property
    def dropped_what(self) -> str:
        return f"sequences of {self.longer_than} residues or fewer (--longer-than)"

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
            return protein(value[1])
        if not isinstance(value, dict) or not isinstance(value.get("primary"), str):
            raise ValueError("expected a dict with a string 'primary' field")
        return protein(value["primary"])


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
