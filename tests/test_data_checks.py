"""Checks the readers make before data is used: shard hashes (``data.validate_hash``), and, when a loader is
built, whether the samples the manifest records fit the model (``model.max_len``, ``model.d_raw``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep import higgs, text
from sma.config import ConfigError, load_config
from sma.data import build_loader
from sma.data.streaming_import import import_streaming
from sma.inputs import InputError
from test_data_readers import run_two_ranks
from test_prep_formats import FORMATS, read_back, write_higgs_small, write_jsonl

pytestmark = pytest.mark.usefixtures("streaming_shm_cleanup")


def prep(dst: Path, fmt: str, *extra: str, docs: int = 60) -> str:
    src = write_jsonl(dst.parent / f"{dst.name}.jsonl", [f"doc {i} " + "abc " * (i % 23) for i in range(docs)])
    text.main(["--src", str(src), "--dst", str(dst), "--format", fmt, "--window", "64", "--shard-bytes", "2048",
               "--shard-samples", "8", "--quiet", *extra])
    return str(dst / "train")


def config(fmt: str, train: str, tmp: Path, *over: str, eval_url: str = ""):
    return load_config(None, [f"data.format={fmt}", f"data.train_url={train}", f"data.eval_url={eval_url or train}",
                              "model.max_len=64", "model.num_latents=16", "data.micro_batch_size=2",
                              f"run_dir={tmp}/run", *over])


def flip(path: Path, at: int, mask: int = 0xFF, count: int = 4) -> None:
    """Alter bytes of a file in place, keeping its size (what a bad disk or a bad copy leaves)."""
    data = bytearray(path.read_bytes())
    data[at : at + count] = bytes(b ^ mask for b in data[at : at + count])
    path.write_bytes(bytes(data))


# ---- data.validate_hash ----------------------------------------------------------------------------

@pytest.mark.parametrize("compression", [False, True])
def test_validate_hash_checks_a_local_mds_folder_before_the_dataset_is_made(tmp_path, compression):
    url = prep(tmp_path / "out", "mds", *(["--compression"] if compression else []))
    shard = Path(url) / "part-00000" / ("shard.00001.mds" + (".zstd" if compression else ""))
    flip(shard, shard.stat().st_size // 2)
    with pytest.raises(InputError) as err:
        build_loader(config("mds", url, tmp_path, "data.validate_hash=true"), "train", 0, 1)
    assert str(err.value) == (
        f"data.validate_hash: 1 shard file(s) of {url} fail their check against {url}/index.json: "
        f"part-00000/{shard.name} (sha1 mismatch); re-run the data_prep command that wrote them (it rewrites the "
        "parts whose files fail their checksums) or restore the files")
    build_loader(config("mds", url, tmp_path), "train", 0, 1)  # not asked: nothing is hashed up front


def test_validate_hash_refuses_an_mds_index_without_sha1(tmp_path):
    out = tmp_path / "handmade"
    with import_streaming().MDSWriter(out=str(out), columns={"ids": "ndarray:int16"}, progress_bar=False) as w:
        for i in range(8):
            w.write({"ids": np.arange(6, 16 + i, dtype=np.int16)})
    with pytest.raises(InputError, match=r"shard.00000.mds \(the index records no sha1 for it\); data_prep writes a "
                                         r"sha1 for every shard: re-prep the data with it, or set data.validate_hash=false"):
        build_loader(config("mds", str(out), tmp_path, "data.validate_hash=true"), "train", 0, 1)
    assert len(read_back(str(out), "mds", 64)) == 8  # without validate_hash, it reads


def test_validate_hash_checks_remote_mds_shards_already_in_the_cache(s3, tmp_path):
    prep(tmp_path / "local", "mds")  # the same shards, written to S3 below
    text.main(["--src", str(tmp_path / "local.jsonl"), "--dst", s3.url("mds"), "--window", "64", "--shard-bytes",
               "2048", "--quiet"])
    url, cache = s3.url("mds", "train"), tmp_path / "cache"
    expected = read_back(url, "mds", 64, cache_dir=str(cache), validate_hash="true")  # downloads every shard
    cached = next(cache.rglob("part-00000/shard.00001.mds"))
    flip(cached, 100)
    with pytest.raises(InputError, match=r"part-00000/shard.00001.mds \(sha1 mismatch\); delete the cache folder "
                                         f"{cached.parents[1]} so they are downloaded again"):
        read_back(url, "mds", 64, cache_dir=str(cache), validate_hash="true")
    shutil.rmtree(cached.parents[1])  # what the message says to do
    assert read_back(url, "mds", 64, cache_dir=str(cache), validate_hash="true") == expected


def test_validate_hash_checks_each_tar_shard_against_shards_json_before_its_samples_are_used(tmp_path):
    url = prep(tmp_path / "out", "wds")
    shard = Path(url) / "part-00000-000002.tar"
    flip(shard, 700, mask=1, count=1)  # one id of the first sample changed by one: it still decodes
    good = read_back(url, "wds", 64)  # not asked: the altered shard is read as if intact
    assert len(good) > 16
    loader = build_loader(config("wds", url, tmp_path, "data.validate_hash=true", "data.shuffle=false"), "eval", 0, 1)
    batches = iter(loader)
    for _ in range(8):  # shards 0 and 1 (8 samples each, 2 per batch) verify and are read
        next(batches)
    with pytest.raises(InputError) as err:
        next(batches)
    assert str(err.value) == (
        f"data.validate_hash: tar shard {shard} fails its check against shards.json (sha256 mismatch); re-run the "
        "data_prep command that wrote it (it rewrites the parts whose files fail their checksums) or restore the file")


def test_validate_hash_refuses_a_shards_json_without_sha256(tmp_path):
    url = prep(tmp_path / "out", "wds")
    index = json.loads((Path(url) / "shards.json").read_text())
    for s in index["shards"]:
        del s["sha256"]
    (Path(url) / "shards.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r"records no sha256 \(or size\) for .*part-00000-000000.tar, .*; data_prep "
                                         "records both for every shard"):
        build_loader(config("wds", url, tmp_path, "data.validate_hash=true"), "train", 0, 1)
    assert len(read_back(url, "wds", 64)) > 16


# ---- samples vs the model --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_an_eval_split_longer_than_max_len_is_found_at_start_naming_key_split_and_url(tmp_path, fmt):
    dst = tmp_path / "out"
    train = prep(dst, fmt)  # --window 64
    src = write_jsonl(tmp_path / "eval.jsonl", ["x" * 200, "y" * 20])
    text.main(["--src", str(src), "--dst", str(dst), "--format", fmt, "--window", "128", "--split", "eval", "--quiet"])
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["settings"]["window"] == 128  # the last run's
    assert (manifest["splits"]["train"]["settings"]["window"], manifest["splits"]["eval"]["settings"]["window"]) == (64, 128)
    assert (manifest["splits"]["train"]["longest"], manifest["splits"]["eval"]["longest"]) == (64, 128)
    cfg = config(fmt, train, tmp_path, eval_url=str(dst / "eval"))
    build_loader(cfg, "train", 0, 1)  # the later run's window is not claimed for the train split
    with pytest.raises(ConfigError) as err:
        build_loader(cfg, "eval", 0, 1)
    assert str(err.value) == (
        f"model.max_len: 64 is shorter than the samples of the eval split (data.eval_url={dst}/eval): up to 128 ids "
        "(data_prep --window 128); raise model.max_len to at least 128, or re-prep that split with --window 64 or less")
    build_loader(config(fmt, train, tmp_path, "model.max_len=128", eval_url=str(dst / "eval")), "eval", 0, 1)


def test_a_manifest_with_the_window_only_at_top_level_is_still_read(tmp_path):
    url = prep(tmp_path / "out", "mds")
    manifest_path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for info in manifest["splits"].values():  # as earlier versions wrote it
        for key in ("settings", "longest", "d_raw", "dropped", "dropped_what", "compression", "warnings"):
            del info[key]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"model.max_len: 32 is shorter than the samples of the train split "
                                          rf"\(data.train_url={url}\): windows of up to 64 ids"):
        build_loader(config("mds", url, tmp_path, "model.max_len=32"), "train", 0, 1)


def test_handmade_shards_without_a_manifest_fail_when_the_batch_is_built(tmp_path):
    out = tmp_path / "handmade"
    with import_streaming().MDSWriter(out=str(out), columns={"ids": "ndarray:int16"}, hashes=["sha1"],
                                      progress_bar=False) as w:
        for _ in range(4):
            w.write({"ids": np.full(100, 7, dtype=np.int16)})
    loader = build_loader(config("mds", str(out), tmp_path), "train", 0, 1)  # no manifest: nothing to check
    with pytest.raises(InputError, match="length 100 does not fit the padded length 64"):
        next(iter(loader))


def test_continuous_tokens_and_d_raw_are_checked_against_the_model(tmp_path):
    higgs.main(["--src", str(write_higgs_small(tmp_path / "small")), "--dst", str(tmp_path / "out"), "--quiet"])
    url = str(tmp_path / "out" / "train")
    base = ["model.modality=continuous", "model.encoder=transformer", "model.d_embed=64"]
    with pytest.raises(ConfigError) as err:
        build_loader(config("mds", url, tmp_path, *base, "model.max_len=16"), "train", 0, 1)
    assert str(err.value) == (f"model.max_len: 16 is shorter than the samples of the train split (data.train_url={url}),"
                              " which have 28 tokens; set model.max_len to at least 28")
    with pytest.raises(ConfigError) as err:
        build_loader(config("mds", url, tmp_path, *base, "model.max_len=32", "model.d_raw=3"), "train", 0, 1)
    assert str(err.value) == (f"model.d_raw: 3, but the samples of the train split (data.train_url={url}) have 1 "
                              "value(s) per token; set model.d_raw=1")
    loader = build_loader(config("mds", url, tmp_path, *base, "model.max_len=32"), "train", 0, 1)
    assert next(iter(loader)).inputs.shape == (2, 32, 1)


RANK_SCRIPT = """
import faulthandler, sys
faulthandler.dump_traceback_later(60, exit=True)  # a rank left waiting shows where, then fails
import torch.distributed as dist
from sma.config import load_config
from sma.data import build_loader
from sma.inputs import InputError
url, run_dir, rank, out = sys.argv[1:5]
dist.init_process_group("gloo")
cfg = load_config(None, ["data.format=mds", f"data.train_url={url}", "model.max_len=64", "model.num_latents=16",
                         "data.micro_batch_size=2", f"run_dir={run_dir}", "data.validate_hash=true"])
try:
    build_loader(cfg, "train", int(rank), 2)
    message = "built"
except InputError as e:
    message = str(e)
open(out, "w").write(message)
dist.barrier()  # as the trainer's shutdown does: no rank tears down while the other is in a collective
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_validate_hash_on_two_ranks_both_ranks_get_the_local_leaders_verdict(tmp_path):
    url = prep(tmp_path / "out", "mds")
    flip(Path(url) / "part-00000" / "shard.00000.mds", 300)
    outputs = run_two_ranks(RANK_SCRIPT, [url, str(tmp_path / "run")], tmp_path)
    messages = [out.read_text() for out in outputs]
    assert messages[0] == messages[1] and "part-00000/shard.00000.mds (sha1 mismatch)" in messages[0]
