"""Tar shards (webdataset) for the trainer.

The split folder holds ``shards.json`` (written by ``data_prep`` after every shard is complete) with
each shard's sample count. Each epoch, the shard order is permuted (seeded by ``seed`` and the epoch)
and the concatenated sample stream is cut into equal ranges per rank and worker (``sma.data.epochs``).

We do not use webdataset's ``split_by_node``/``split_by_worker``: they hand out whole shards, so ranks
get different sample counts and the rank with fewer batches leaves the others waiting forever at the
end of an epoch. A reader role opens only the shards overlapping its range (at most two of them
partially), so the I/O cost of exact splitting is small. Within a role, a seeded webdataset shuffle
buffer mixes samples; resume replays the role's stream through the same buffer and drops the samples
already consumed, before decoding them, which reproduces the uninterrupted order exactly.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from sma.config import TrainConfig
from sma.data.collate import collate_for_shards
from sma.data.epochs import EpochLoader, EpochStream, Plan
from sma.data.samples import Sample, from_wds
from sma.data.storage import join, open_url, read_json, register_webdataset_s3
from sma.inputs import InputError

INDEX = "shards.json"


def read_shard_index(split_url: str, endpoint_url: str = "") -> list[dict[str, Any]]:
    """``[{"url": absolute URL, "samples": n, "bytes": size, "sha256": hex}, ...]`` from the split's
    ``shards.json`` (``bytes`` and ``sha256`` None where it records none)."""
    index_url = join(split_url, INDEX)
    try:
        index = read_json(index_url, endpoint_url)
    except FileNotFoundError:
        raise InputError(
            f"{index_url} not found: not a tar shard folder, or its data_prep run has not finished "
            "(the index is written last)"
        ) from None
    shards = [{"url": join(split_url, s["url"]), "samples": int(s["samples"]), "bytes": s.get("bytes"),
               "sha256": s.get("sha256")} for s in index["shards"]]
    if not shards:
        raise InputError(f"{index_url} lists no shards")
    return shards


def _raise(exn: Exception) -> bool:
    # webdataset appends the shard URL to the exception's args; name it in our message.
    where = next((a for a in reversed(exn.args) if isinstance(a, str) and ("/" in a or "." in a)), "?")
    raise InputError(f"damaged tar shard {where}: {type(exn).__name__}: {exn.args[0] if exn.args else exn}")


def _checked(samples: Iterator[dict[str, Any]], expected: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Pass samples through; a shard that ends before its indexed sample count is an error (a silently
    short shard would give this rank fewer batches than the others)."""
    url, seen = None, 0
    for s in samples:
        if s.get("__url__") != url:
            if url is not None and seen < expected[url]:
                raise InputError(f"damaged tar shard {url}: {seen} samples, the index says {expected[url]}")
            url, seen = s.get("__url__"), 0
        seen += 1
        yield s


def _verified(src: Iterator[dict[str, Any]], shards: dict[str, dict[str, Any]], endpoint_url: str
              ) -> Iterator[dict[str, Any]]:
    """``data.validate_hash``: open each shard by reading it whole and checking its size and sha256 against
    ``shards.json`` before any of its samples is used (in place of webdataset's ``url_opener``)."""
    for item in src:
        url = item["url"]
        try:
            with open_url(url, "rb", endpoint_url) as f:
                data = f.read()
        except Exception as e:
            e.args = (*e.args, url)
            _raise(e)
        expected = shards[url]
        if len(data) != expected["bytes"]:
            what = f"{len(data)} bytes, shards.json says {expected['bytes']}"
        elif hashlib.sha256(data).hexdigest() != expected["sha256"]:
            what = "sha256 mismatch"
        else:
            yield {**item, "stream": io.BytesIO(data)}
            continue
        raise InputError(f"data.validate_hash: tar shard {url} fails its check against shards.json ({what}); "
                         "re-run the data_prep command that wrote it (it rewrites the parts whose files fail "
                         "their checksums) or restore the file")


def _tar_samples(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset's ``tarfile_to_samples`` after the opening: tar members grouped into samples."""
    return group_by_keys(tar_file_expander(src, handler=_raise), handler=_raise)


class TarStream(EpochStream):
    def __init__(self, shards: list[dict[str, Any]], plan: Plan, rank: int, collate, seed: int, shuffle: bool,
                 shuffle_buffer: int, endpoint_url: str, validate_hash: bool = False):
        super().__init__(plan, rank, collate)
        self.shards, self.seed, self.shuffle = shards, seed, shuffle
        self.shuffle_buffer, self.endpoint_url = shuffle_buffer, endpoint_url
        self.validate_hash = validate_hash

    def epoch_shards(self, epoch: int) -> list[dict[str, Any]]:
        if not self.shuffle:
            return self.shards
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return [self.shards[i] for i in order]

    def role_samples(self, epoch: int, role: int, start: int, stop: int, skip: int) -> Iterator[Sample]:
        register_webdataset_s3(self.endpoint_url)  # in the worker process too
        shards = self.epoch_shards(epoch)
        ends = np.cumsum([s["samples"] for s in shards]).tolist()
        first = bisect.bisect_right(ends, start)
        last = bisect.bisect_left(ends, stop)
        offset = start - (ends[first - 1] if first > 0 else 0)
        chosen = shards[first : last + 1]
        if self.validate_hash:
            by_url = {s["url"]: s for s in chosen}
            opened = [lambda src: _verified(src, by_url, self.endpoint_url), _tar_samples]
        else:
            opened = [wds.tarfile_to_samples(handler=_raise)]
        stages: list[Any] = [
            wds.SimpleShardList([s["url"] for s in chosen]),
            *opened,
            lambda src: _checked(src, {s["url"]: s["samples"] for s in chosen}),
            wds.slice(offset, offset + stop - start),
        ]
        if self.shuffle:
            rng = random.Random(f"{self.seed}-{epoch}-{self.rank}-{role}")
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        stages.append(wds.slice(skip, None))  # undecoded: skipping costs only the read
        for raw in wds.DataPipeline(*stages):
            yield from_wds(raw, raw.get("__url__", "?"))


def build_wds_loader(cfg: TrainConfig, url: str, train: bool, rank: int, world_size: int) -> EpochLoader:
    data = cfg.data
    register_webdataset_s3(data.endpoint_url)
    shards = read_shard_index(url, data.endpoint_url)
    if data.validate_hash:
        unrecorded = [s["url"] for s in shards if not s["sha256"] or s["bytes"] is None]
        if unrecorded:
            raise InputError(f"data.validate_hash: {join(url, INDEX)} records no sha256 (or size) for "
                             f"{', '.join(unrecorded)}; data_prep records both for every shard: re-prep the data "
                             "with it, or set data.validate_hash=false")
    num_roles = max(1, data.num_workers)
    plan = Plan(sum(s["samples"] for s in shards), world_size, num_roles, data.micro_batch_size)
    collate = collate_for_shards(cfg.model.max_len, url, data.endpoint_url)
    stream = TarStream(shards, plan, rank, collate, cfg.seed, train and data.shuffle, data.shuffle_buffer,
                       data.endpoint_url, data.validate_hash)
    return EpochLoader(stream, data.num_workers, train, f"wds:{url}")
