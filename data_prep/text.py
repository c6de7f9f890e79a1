"""Text corpora (Wikipedia, BooksCorpus, any text) -> byte-id windows in MDS or tar shards.

Inputs, recognized by name:
  *.xml, *.xml.bz2       MediaWiki XML dump (enwiki-*-pages-articles*.xml.bz2): streamed page by page;
                         redirects and non-article namespaces skipped; markup stripped by
                         mwparserfromhell (a real wikitext parser)
  *.parquet              Hugging Face dumps: the ``text`` column (--text-column)
  *.jsonl, *.json[.gz]   JSON lines with a ``text`` field (wikiextractor --json output)
  anything else          plain text (BooksCorpus: one sentence per line); blank lines separate documents

Documents become ``bytes + [SEP]`` and are packed into windows of --window ids: short documents share
a window, a document that does not fit starts the next window, long documents fill whole windows.

    python -m data_prep.text --src 'enwiki-*.xml.bz2' books/*.txt --dst s3://bucket/text --format mds
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from data_prep.cli import execute, parser, parts_by_split, sources
from data_prep.sources import decode_utf8, numbered_lines, paragraphs, parquet_column
from data_prep.writer import Part, WindowCorpus
from sma.data.storage import open_url

PROG = "data_prep.text"


INPUT_FORMATS = ("mediawiki", "parquet", "jsonl", "plain")


def source_kind(url: str) -> str:
    name = url.lower().rsplit("/", 1)[-1]
    for suffix in (".bz2", ".gz", ".xz"):
        name = name.removesuffix(suffix)
    if name.endswith(".xml"):
        return "mediawiki"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    return "plain"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop the export-schema namespace


def mediawiki_pages(url: str, endpoint_url: str = "") -> Iterator[tuple[str, Any]]:
    """``("page N (title)", (namespace, is_redirect, wikitext))`` for each ``<page>``, streamed."""
    with open_url(url, "rb", endpoint_url, compression="infer") as f:
        n = 0
        try:
            for _, elem in ET.iterparse(f, events=("end",)):
                if _local(elem.tag) != "page":
                    continue
                fields = {_local(c.tag): c for c in elem}
                rev = fields.get("revision")
                text = None if rev is None else next((c.text for c in rev if _local(c.tag) == "text"), None)
                title = fields["title"].text if "title" in fields else "?"
                ns = fields["ns"].text if "ns" in fields else "0"
                yield f"page {n} ({title})", (ns, "redirect" in fields, text)
                n += 1
                elem.clear()  # keep memory flat over a 20 GB dump
        except ET.ParseError as e:
            yield f"page {n} (XML error)", e


_DROPPED_TAGS = ("ref", "references", "gallery", "math", "score", "timeline")


def wikitext_to_plain(text: str) -> str:
    """Article text without markup: mwparserfromhell drops templates, keeps link labels; we also drop
    footnotes and other non-prose tags, and trim the spaces headings leave on their lines."""
    import mwparserfromhell

    code = mwparserfromhell.parse(text)
    for tag in code.filter_tags(recursive=False, matches=lambda t: str(t.tag).lower() in _DROPPED_TAGS):
        code.remove(tag)
    plain = code.strip_code(normalize=True, collapse=True)
    return "\n".join(re.sub(r" {2,}", " ", line.strip()) for line in plain.strip().splitlines())


class TextCorpus(WindowCorpus):
    name = "text"

    def __init__(self, window: int, text_column: str = "text", input_format: str = "auto"):
        super().__init__(window)
        self.text_column, self.input_format = text_column, input_format

    def records(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        kind = source_kind(part.source) if self.input_format == "auto" else self.input_format
        if kind == "mediawiki":
            return ((loc, ("mediawiki", r)) for loc, r in mediawiki_pages(part.source, endpoint_url))
        if kind == "parquet":
            return ((loc, ("plain", r)) for loc, r in parquet_column(part.source, self.text_column, endpoint_url))
        if kind == "jsonl":
            return ((loc, ("jsonl", r)) for loc, r in numbered_lines(part.source, endpoint_url))
        return ((loc, ("plain", r)) for loc, r in paragraphs(part.source, endpoint_url))

    def parse(self, raw: tuple[str, Any]) -> str | None:
        """The document text, or None for records that are not documents (redirects, blank lines)."""
        kind, value = raw
        if isinstance(value, Exception):
            raise ValueError(str(value))
        if kind == "mediawiki":
            ns, redirect, text = value
            if redirect or ns != "0" or not text:
                return None
            return wikitext_to_plain(text) or None
        if kind == "jsonl":
            if not value.strip():
                return None
            obj = json.loads(value)
            if not isinstance(obj, dict) or not isinstance(obj.get(self.text_column), str):
                raise ValueError(f"expected an object with a string {self.text_column!r} field")
            return obj[self.text_column] or None
        if value is None:
            return None
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"text must be a string, got {type(value).__name__}")
        return (decode_utf8(value) if isinstance(value, bytes) else value) or None


def main(argv: list[str] | None = None) -> dict:
    ap = parser(PROG, __doc__, window=1024)
    ap.add_argument("--split", default="train", help="split these sources are written to (default train)")
    ap.add_argument("--text-column", default="text", help="parquet/JSON field holding the text")
    ap.add_argument("--input-format", default="auto", choices=("auto", *INPUT_FORMATS),
                    help="how to read every --src: auto (default) goes by the file name (.xml[.bz2] MediaWiki "
                         "dump, .parquet, .jsonl/.json JSON lines, anything else plain text); wikiextractor's "
                         "--json output (wiki_00, ...) has no suffix: give jsonl")
    args = ap.parse_args(argv)
    corpus = TextCorpus(args.window, args.text_column, args.input_format)
    parts = parts_by_split([(s, args.split) for s in sources(args)])
    return execute(corpus, parts, args, argv, PROG)


if __name__ == "__main__":
    main()
