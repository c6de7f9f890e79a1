"""MDS shards through mosaicml-streaming's ``StreamingDataset`` and ``StreamingDataLoader``.

streaming does the per-rank partitioning (it reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` from
the environment), the seeded epoch shuffle and the exact mid-epoch resume, which it supports only
through its loader's ``state_dict()`` (samples consumed so far) and ``load_state_dict()``. Pitfalls
handled here: the ``deepspeed`` launcher sets ``LOCAL_SIZE`` but not ``LOCAL_WORLD_SIZE``; a killed
run leaves stale shared memory (released before each dataset is made: ``sma.data.shm``); a cache folder
reused for another remote silently serves the old data (one cache folder per remote URL); the S3
endpoint is read from ``S3_ENDPOINT_URL``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from sma.config import TrainConfig
from sma.data.collate import TupleCollate, collate_for_shards, tuple_to_batch
from sma.data.epochs import private_generator
from sma.data.shm import registration_lock, release_stale_shared_memory
from sma.data.storage import filesystem, is_local, join, local_path, read_json, use_endpoint
from sma.data.streaming_import import import_streaming
from sma.inputs import Batch, InputError

log = logging.getLogger(__name__)


def set_local_world_size() -> None:
    """The ``deepspeed`` launcher exports ``LOCAL_SIZE`` only; streaming needs ``LOCAL_WORLD_SIZE``
    (without it, it fails with ``FileExistsError: '/000005_locals'``)."""
    if "LOCAL_WORLD_SIZE" not in os.environ and "LOCAL_SIZE" in os.environ:
        os.environ["LOCAL_WORLD_SIZE"] = os.environ["LOCAL_SIZE"]


def check_world(rank: int, world_size: int) -> None:
    """streaming takes the rank layout from the environment; make sure it agrees with the caller."""
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    env_rank = int(os.environ.get("RANK", "0"))
    if (env_rank, env_world) != (rank, world_size):
        raise ValueError(
            f"MDS reading takes the rank layout from the environment (RANK={env_rank}, WORLD_SIZE={env_world}) "
            f"but the caller asked for rank {rank} of {world_size}; start ranks with torchrun or deepspeed"
        )


def on_local_leader(work: Callable[[], list[str]]) -> list[str]:
    """Run ``work`` on the local leader (``LOCAL_RANK`` 0) while the other local ranks wait. With the
    caller's process group (the trainer's), every rank returns what the leaders found, so all of them
    fail alike instead of some waiting for a leader that stopped; with none, streaming makes a temporary
    group (whose backend may need a device we do not choose), only used to wait."""
    import torch.distributed as dist
    from streaming.base.distributed import maybe_init_dist  # as StreamingDataset itself does

    made_group = maybe_init_dist()
    try:
        found = work() if int(os.environ.get("LOCAL_RANK", "0")) == 0 else []
        if made_group:
            dist.barrier()
        elif dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, found)
            found = list(dict.fromkeys(x for g in gathered for x in g))
    finally:
        if made_group:
            dist.destroy_process_group()
    return found


def release_stale_registrations(local: str) -> None:
    """Before a dataset on ``local`` exists: the local leader releases what killed runs left registered
    for it, while the other local ranks wait (they would otherwise meet the stale registration first)."""
    def release() -> list[str]:
        release_stale_shared_memory([local])
        return []

    on_local_leader(release)


def cache_folder(cfg: TrainConfig, url: str) -> str:
    """One local cache folder per remote URL (streaming reuses a folder's files whatever the remote)."""
    base = cfg.data.cache_dir or os.path.join(cfg.run_dir, "cache")
    return os.path.join(base, hashlib.sha1(url.encode()).hexdigest()[:16])


def damaged_shards(local: str, index: dict[str, Any] | None = None, validate: bool = False) -> list[str]:
    """Shard files in ``local`` whose size or sha1 disagrees with the index (``local``'s ``index.json``
    unless given). Absent files are not yet downloaded and not counted. Used to name the culprit when
    streaming fails with a generic error, and, with ``validate`` (``data.validate_hash``), to check every
    shard before its first use: then a shard the index gives no sha1 for is reported too."""
    if index is None:
        with open(os.path.join(local, "index.json")) as f:
            index = json.load(f)
    bad = []
    for shard in index["shards"]:
        for info in (shard.get("raw_data"), shard.get("zip_data")):
            if not info:
                continue
            expected = (info.get("hashes") or {}).get("sha1")
            if validate and not expected:
                bad.append(f"{info['basename']} (the index records no sha1 for it)")
                continue
            path = os.path.join(local, info["basename"])
            if not os.path.exists(path):
                continue
            if os.path.getsize(path) != info["bytes"]:
                bad.append(f"{info['basename']} ({os.path.getsize(path)} bytes, the index says {info['bytes']})")
                continue
            if expected:
                with open(path, "rb") as fh:
                    if hashlib.file_digest(fh, "sha1").hexdigest() != expected:
                        bad.append(f"{info['basename']} (sha1 mismatch)")
    return bad


def validate_shards(url: str, local: str, remote: bool, endpoint_url: str) -> None:
    """``data.validate_hash``: check every shard present in ``local`` against the index before the dataset
    is made (streaming checks only the shards it downloads; a local folder, or shards already in the
    cache, it never checks). The local leader hashes; the other local ranks wait for its verdict."""
    index = read_json(join(url, "index.json"), endpoint_url)  # the remote's, for a cache
    bad = on_local_leader(lambda: damaged_shards(local, index, validate=True))
    if not bad:
        return
    todo = []
    if any("records no sha1" in b for b in bad):
        todo.append("data_prep writes a sha1 for every shard: re-prep the data with it, or set "
                    "data.validate_hash=false")
    if not all("records no sha1" in b for b in bad):
        todo.append(f"delete the cache folder {local} so they are downloaded again" if remote else
                    "re-run the data_prep command that wrote them (it rewrites the parts whose files fail "
                    "their checksums) or restore the files")
    raise InputError(f"data.validate_hash: {len(bad)} shard file(s) of {url} fail their check against "
                     f"{join(url, 'index.json')}: {', '.join(bad)}; {'; '.join(todo)}")


class MdsLoader:
    """Trainer-facing wrapper: endless epochs for training, one fixed pass for evaluation."""

    def __init__(self, loader: Any, train: bool, describe: str, local: str):
        self.loader, self.train, self.describe, self.local = loader, train, describe, local
        self._resumed = False

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        while True:  # each pass over a StreamingDataLoader is the dataset's next epoch
            resumed, self._resumed = self._resumed, False
            count = 0
            try:
                for t in self.loader:
                    count += 1
                    yield tuple_to_batch(t)
            except (InputError, GeneratorExit):
                raise
            except Exception as e:
                self._fail(f"{type(e).__name__}: {e}", e)
            # streaming ends an epoch early, silently, when a background download or checksum fails;
            # a short epoch would also leave this rank's peers waiting, so it is an error.
            if not resumed and count < len(self.loader):
                self._fail(f"the epoch ended after {count} of {len(self.loader)} batches", None)
            if not self.train:
                return

    def _fail(self, what: str, cause: Exception | None) -> None:
        bad = damaged_shards(self.local)
        culprit = f"damaged shard(s) {', '.join(bad)}" if bad else "no shard fails its size/sha1 check"
        raise InputError(f"reading {self.describe} failed ({culprit}): {what}") from cause

    def state_dict(self) -> dict[str, Any]:
        return {"reader": self.describe, "streaming": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("reader") != self.describe:
            raise ValueError(f"loader state is for {state.get('reader')!r}, this loader reads {self.describe!r}")
        self.loader.load_state_dict(state["streaming"])
        self._resumed = True  # the next pass is the rest of an epoch


def build_mds_loader(cfg: TrainConfig, url: str, train: bool, rank: int, world_size: int) -> MdsLoader:
    data = cfg.data
    streaming = import_streaming()
    set_local_world_size()
    check_world(rank, world_size)
    use_endpoint(data.endpoint_url)
    fs, root = filesystem(url, data.endpoint_url)
    if not fs.exists(join(root, "index.json")):
        raise InputError(f"{join(url, 'index.json')} not found: not an MDS folder, or its data_prep run has not "
                         "finished (the index is written last)")
    remote, local = (None, local_path(url)) if is_local(url) else (url, cache_folder(cfg, url))
    release_stale_registrations(local)
    if data.validate_hash:
        validate_shards(url, local, remote is not None, data.endpoint_url)
    with registration_lock():
        dataset = streaming.StreamingDataset(
            remote=remote, local=local, shuffle=train and data.shuffle, shuffle_seed=cfg.seed,
            batch_size=data.micro_batch_size, validate_hash="sha1" if data.validate_hash else None,
        )
    collate = collate_for_shards(cfg.model.max_len, url, data.endpoint_url)
    loader = streaming.StreamingDataLoader(
        dataset, batch_size=data.micro_batch_size, num_workers=data.num_workers, drop_last=True,
        collate_fn=TupleCollate(collate), persistent_workers=False, generator=private_generator(),
    )
    log.info("mds %s: %d samples, %d batches per epoch per rank (cache %s)", url, dataset.size, len(loader), local)
    return MdsLoader(loader, train, f"mds:{url}", local)
