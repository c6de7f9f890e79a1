"""Shard sinks: one part (the samples of one input file and split) into MDS or tar shards in a local
staging folder. Uploading, checksums and manifests are ``data_prep.writer``'s job.

Both sinks are deterministic: MDS files hold no timestamps, and tar members get ``mtime=0`` (an int:
a float adds a PAX header to every member, which doubles the reader's header parsing), a fixed owner
and mode; gzip streams are written with ``mtime=0`` (tarfile's own ``w|gz`` stamps the clock).
"""

from __future__ import annotations

import gzip
import os
from typing import IO, Any

import webdataset as wds

from sma.data.samples import Sample, mds_columns, to_wds
from sma.data.streaming_import import import_streaming

FORMATS = ("mds", "wds")


class MdsSink:
    """``streaming.MDSWriter`` into ``<staging>/<part>/`` (``index.json`` + ``shard.NNNNN.mds[.zstd]``)."""

    def __init__(self, staging: str, part: str, compression: bool, shard_bytes: int):
        self.root = os.path.join(staging, part)
        self.compression = "zstd" if compression else None
        self.shard_bytes = shard_bytes
        self.writer: Any = None

    def write(self, sample: Sample) -> None:
        if self.writer is None:  # the columns follow the first sample's fields
            MDSWriter = import_streaming().MDSWriter
            self.writer = MDSWriter(out=self.root, columns=mds_columns(sample), compression=self.compression,
                                    hashes=["sha1"], size_limit=self.shard_bytes, progress_bar=False)
        self.writer.write(sample)

    def close(self) -> list[tuple[str, int | None]]:
        """Finish the part; return its files relative to the staging folder (counts live in index.json)."""
        if self.writer is None:
            return []
        self.writer.finish()
        return [(f"{os.path.basename(self.root)}/{n}", None) for n in sorted(os.listdir(self.root))]


class WdsSink:
    """``webdataset.ShardWriter`` into ``<staging>/<part>-NNNNNN.tar[.gz]``."""

    def __init__(self, staging: str, part: str, compression: bool, shard_bytes: int, shard_samples: int):
        self.staging = staging
        self.compression = compression
        self.pattern = os.path.join(staging, f"{part}-%06d.tar" + (".gz" if compression else ""))
        self.open_streams: dict[str, tuple[IO, IO]] = {}
        self.writer = wds.ShardWriter(
            self.pattern, maxcount=shard_samples, maxsize=shard_bytes, verbose=0, opener=self._open,
            post=self._closed, encoder=False, mtime=0, compress=False,
        )
        self.count = 0
        self.counts: dict[str, int] = {}

    def _open(self, path: str) -> IO:
        raw = open(path, "wb")
        if not self.compression:
            self.open_streams[path] = (raw, raw)
            return raw
        gz = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0)
        self.open_streams[path] = (gz, raw)
        return gz

    def _closed(self, path: str) -> None:
        # The tar stream does not close a file object it was handed; close ours (gzip trailer first).
        for f in self.open_streams.pop(path):
            f.close()

    def write(self, sample: Sample) -> None:
        self.writer.write(to_wds(sample, f"{self.count:010d}"))
        self.count += 1
        name = os.path.basename(self.writer.fname)
        self.counts[name] = self.counts.get(name, 0) + 1

    def close(self) -> list[tuple[str, int | None]]:
        """Finish the part; return its shard files (relative to the staging folder) with sample counts."""
        self.writer.close()
        return sorted(self.counts.items())


def make_sink(fmt: str, staging: str, part: str, compression: bool, shard_bytes: int, shard_samples: int):
    if fmt == "mds":
        return MdsSink(staging, part, compression, shard_bytes)
    if fmt == "wds":
        return WdsSink(staging, part, compression, shard_bytes, shard_samples)
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
