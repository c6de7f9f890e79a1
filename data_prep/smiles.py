"""guacamol SMILES (``.smiles``, one molecule per line) -> byte-id windows in MDS or tar shards.

Molecules are encoded ``SMILES + [SEP]`` and concatenated into windows of --window ids (the SMA
paper); a molecule that does not fit the current window starts the next one. The split comes from
the file name (``guacamol_v1_train.smiles`` -> train; valid, test likewise), else --split.

    python -m data_prep.smiles --src guacamol_v1_*.smiles --dst s3://bucket/guacamol --window 256
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from data_prep.cli import execute, parser, parts_by_split, sources, split_from_name
from data_prep.sources import decode_utf8, numbered_lines
from data_prep.writer import Part, WindowCorpus

PROG = "data_prep.smiles"
SPLITS = ("train", "valid", "test")


class SmilesCorpus(WindowCorpus):
    name = "smiles"

    def records(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        return numbered_lines(part.source, endpoint_url)

    def parse(self, raw: bytes) -> str | None:
        text = decode_utf8(raw).strip()
        if not text:
            return None  # blank lines carry no molecule
        if any(c.isspace() for c in text) or not text.isascii() or not text.isprintable():
            raise ValueError(f"not a single SMILES string: {text[:60]!r}")
        return text


def main(argv: list[str] | None = None) -> dict:
    ap = parser(PROG, __doc__, window=256)
    ap.add_argument("--split", default="train", help="split for files whose name names none (default train)")
    args = ap.parse_args(argv)
    parts = parts_by_split([(s, split_from_name(s, SPLITS, args.split)) for s in sources(args)])
    return execute(SmilesCorpus(args.window), parts, args, argv, PROG)


if __name__ == "__main__":
    main()
