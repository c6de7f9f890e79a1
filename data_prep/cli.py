"""Command-line options shared by every ``python -m data_prep.<corpus>`` command."""

from __future__ import annotations

import argparse
import logging
import re
import sys

from data_prep.shards import FORMATS
from data_prep.writer import Corpus, Part, PrepError, WriteOptions, run
from sma.data.storage import expand_sources


def parser(prog: str, description: str, window: int | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", nargs="+", required=True, help="input files, globs or fsspec URLs")
    ap.add_argument("--dst", required=True, help="destination folder or URL (file://, s3://, any fsspec URL)")
    ap.add_argument("--format", choices=FORMATS, default="mds", help="MDS (streaming) or tar (webdataset)")
    ap.add_argument("--compression", action="store_true", help="zstd for MDS shards, gzip for tar shards")
    ap.add_argument("--shard-bytes", type=int, default=64 << 20, help="shard size limit (default 64 MiB)")
    ap.add_argument("--shard-samples", type=int, default=100_000, help="tar only: samples per shard")
    ap.add_argument("--workers", type=int, default=1, help="parallel worker processes (over input files)")
    ap.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                    help="on a malformed record: stop (default) or skip it and count it")
    ap.add_argument("--endpoint-url", default="",
                    help="S3 endpoint (default: S3_ENDPOINT_URL or AWS_ENDPOINT_URL from the environment)")
    ap.add_argument("--staging", default="", help="local folder for shards before upload (default: temp)")
    ap.add_argument("--quiet", action="store_true", help="only warnings and errors")
    if window is not None:
        ap.add_argument("--window", type=int, default=window, help="ids per sample window (default %(default)s)")
    return ap


def options(args: argparse.Namespace, argv: list[str] | None, prog: str) -> WriteOptions:
    if args.shard_bytes < 1 << 10 or args.shard_samples < 1 or args.workers < 1:
        raise SystemExit("--shard-bytes must be >= 1024, --shard-samples and --workers >= 1")
    return WriteOptions(
        dst=args.dst.rstrip("/"), format=args.format, compression=args.compression,
        shard_bytes=args.shard_bytes, shard_samples=args.shard_samples, workers=args.workers,
        on_error=args.on_error, endpoint_url=args.endpoint_url, staging=args.staging,
        command=["python", "-m", prog, *(sys.argv[1:] if argv is None else argv)],
    )


def sources(args: argparse.Namespace) -> list[str]:
    """The expanded ``--src`` list; a pattern that matches nothing ends the command naming it."""
    try:
        return expand_sources(args.src, args.endpoint_url)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None


def split_from_name(url: str, splits: tuple[str, ...], default: str) -> str:
    """The split named in a file name (``pfam_valid.lmdb`` -> valid), else ``default``."""
    name = url.rstrip("/").rsplit("/", 1)[-1].lower()
    return next((s for s in splits if re.search(rf"(^|[_.-]){s}([_.-]|$)", name)), default)


def parts_by_split(sources_with_split: list[tuple[str, str]]) -> list[Part]:
    """Number one part per (source, split), in a stable order."""
    return [Part(i, split, src) for i, (src, split) in enumerate(sources_with_split)]


def execute(corpus: Corpus, parts: list[Part], args: argparse.Namespace, argv: list[str] | None, prog: str,
            extra: dict | None = None) -> dict:
    """Run the writer; bad input exits with its message (file and record) and status 1, a split that got
    no samples from its inputs with status 2."""
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run(corpus, parts, options(args, argv, prog), extra)
    except PrepError as e:
        logging.getLogger("data_prep").error("%s", e)
        raise SystemExit(e.exit_code) from None
