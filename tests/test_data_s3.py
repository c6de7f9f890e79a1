"""Shards on a real S3 endpoint (moto's server on loopback): written by data_prep through s3fs, read back
by streaming (MDS) and webdataset (tar) exactly as from a real bucket."""

from __future__ import annotations

import itertools

import pytest
import s3fs
import torch

from data_prep import text
from sma.config import load_config
from sma.data import build_loader
from sma.inputs import InputError
from test_prep_formats import FORMATS, read_back, write_jsonl

pytestmark = pytest.mark.usefixtures("streaming_shm_cleanup")


@pytest.mark.parametrize("fmt", FORMATS)
def test_shards_written_to_s3_read_back_like_local_ones(s3, tmp_path, fmt):
    src = write_jsonl(tmp_path / "docs.jsonl", [f"doc {i} " + "abc " * (i % 11) for i in range(150)])
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint})
    fs.put_file(str(src), f"{s3.bucket}/raw/docs.jsonl")
    args = ["--window", "64", "--format", fmt, "--compression", "--workers", "2", "--quiet"]
    text.main(["--src", s3.url("raw/*.jsonl"), "--dst", s3.url("shards"), *args])  # S3 in, S3 out
    text.main(["--src", str(src), "--dst", str(tmp_path / "local"), *args])
    fs.invalidate_cache()
    assert fs.exists(f"{s3.bucket}/shards/manifest.json")
    remote = read_back(s3.url("shards", "train"), fmt, 64, cache_dir=str(tmp_path / "cache"))
    assert remote == read_back(str(tmp_path / "local" / "train"), fmt, 64) and len(remote) > 10
    # the training order (shuffled, 2 workers) is the same from S3 as from disk
    over = lambda url: load_config(None, [f"data.format={fmt}", f"data.train_url={url}", "model.max_len=64",  # noqa: E731
                                          "model.num_latents=16", "data.num_workers=2", "data.micro_batch_size=2",
                                          f"data.cache_dir={tmp_path}/cache2"])
    a = [b.inputs for b in itertools.islice(iter(build_loader(over(s3.url("shards", "train")), "train", 0, 1)), 5)]
    b = [b.inputs for b in itertools.islice(iter(build_loader(over(str(tmp_path / "local" / "train")), "train", 0, 1)), 5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_corrupted_mds_shard_on_s3_fails_its_hash_check_naming_the_shard(s3, tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", [f"doc {i} " + "abc " * (i % 11) for i in range(150)])
    text.main(["--src", str(src), "--dst", s3.url("mds"), "--window", "64", "--quiet"])
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint})
    path = f"{s3.bucket}/mds/train/part-00000/shard.00000.mds"
    data = bytearray(fs.cat(path))
    data[2000:2004] = bytes(b ^ 0xFF for b in data[2000:2004])
    fs.pipe(path, bytes(data))
    with pytest.raises(InputError, match=r"part-00000/shard.00000.mds \(sha1 mismatch\)"):
        read_back(s3.url("mds", "train"), "mds", 64, cache_dir=str(tmp_path / "cache"), validate_hash="true")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bucket_path_without_shards_is_named_in_the_error(s3, tmp_path, fmt):
    index = "index.json" if fmt == "mds" else "shards.json"
    with pytest.raises(InputError, match=f"{s3.url('nothing', 'train', index)} not found"):
        read_back(s3.url("nothing", "train"), fmt, 64, cache_dir=str(tmp_path / "cache"))
