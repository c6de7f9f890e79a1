"""Shard readers for the trainer: exact resume, every sample once per epoch over 2 ranks x 2 workers,
equal batch counts per rank, fixed evaluation passes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from data_prep import text
from sma.config import load_config
from sma.train.env import free_port
from sma.data import build_loader
from sma.data.mds import set_local_world_size
from sma.inputs import decode
from test_prep_formats import FORMATS, write_jsonl

NUM_SAMPLES = 96  # = 2 ranks x 2 workers x 4 per batch x 6 batches: no sample needs to be dropped

pytestmark = pytest.mark.usefixtures("streaming_shm_cleanup")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """96 distinct one-window samples in 3 source files, as MDS and tar (uneven shards of 7 samples)."""
    root = tmp_path_factory.mktemp("shards")
    srcs = [str(write_jsonl(root / f"{i}.jsonl", [f"sample {i * 32 + j:03d} " + "x" * 30 for j in range(32)]))
            for i in range(3)]
    out = {}
    for fmt in FORMATS:
        text.main(["--src", *srcs, "--dst", str(root / fmt), "--format", fmt, "--window", "48",
                   "--shard-samples", "7", "--shard-bytes", "2048", "--quiet"])
        out[fmt] = str(root / fmt / "train")
    return out


def config(url: str, fmt: str, tmp: Path, workers: int = 0, batch: int = 4, seed: int = 0):
    return load_config(None, [f"data.format={fmt}", f"data.train_url={url}", f"data.eval_url={url}",
                              "model.max_len=64", "model.num_latents=16", f"data.num_workers={workers}",
                              f"data.micro_batch_size={batch}", f"seed={seed}", f"run_dir={tmp}/run",
                              "data.shuffle_buffer=16"])


def names(batch) -> list[str]:
    return [decode(row[valid])[:10] for row, valid in zip(batch.inputs, batch.valid)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_exactly_like_an_uninterrupted_run(shards, tmp_path, fmt, workers):
    cfg = config(shards[fmt], fmt, tmp_path, workers)
    reference = build_loader(cfg, "train", 0, 1)
    per_epoch = len(reference)
    expected = [b.inputs for b in itertools.islice(iter(reference), per_epoch + 4)]
    first = build_loader(cfg, "train", 0, 1)
    stream = iter(first)
    for _ in range(per_epoch - 3):  # stop mid-epoch, with an odd count so the worker rotation matters
        next(stream)
    state = first.state_dict()
    del stream, first
    resumed = build_loader(cfg, "train", 0, 1)
    resumed.load_state_dict(state)
    got = [b.inputs for b in itertools.islice(iter(resumed), 7)]  # crosses into the next epoch
    assert len(got) == 7 and all(torch.equal(a, b) for a, b in zip(got, expected[per_epoch - 3:]))
    assert not torch.equal(expected[0], expected[per_epoch])  # the next epoch is reshuffled


@pytest.mark.parametrize("fmt", FORMATS)
def test_reading_with_workers_leaves_the_global_torch_rng_alone(shards, tmp_path, fmt):
    # The model draws masks from the global RNG; a loader that touched it would break exact resume.
    loader = build_loader(config(shards[fmt], fmt, tmp_path, workers=2), "train", 0, 1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for _ in itertools.islice(iter(loader), len(loader) + 2):  # includes starting the next epoch
        pass
    assert torch.equal(torch.get_rng_state(), before)


def test_wds_two_ranks_two_workers_read_every_sample_once_per_epoch(shards, tmp_path):
    seen: Counter[str] = Counter()
    lengths = []
    for rank in range(2):
        loader = build_loader(config(shards["wds"], "wds", tmp_path, workers=2), "train", rank, 2)
        lengths.append(len(loader))
        for batch in itertools.islice(iter(loader), len(loader)):
            seen.update(names(batch))
    assert lengths == [12, 12]
    assert seen == Counter(f"sample {i:03d}" for i in range(NUM_SAMPLES))


def test_wds_ranks_get_equal_batch_counts_when_samples_do_not_divide(shards, tmp_path):
    counts = []
    for rank in range(3):  # 96 samples over 3 ranks x 2 workers x batch 5: 6 samples must be left out
        loader = build_loader(config(shards["wds"], "wds", tmp_path, workers=2, batch=5), "eval", rank, 3)
        counts.append(sum(1 for _ in loader))  # a one-epoch pass, counted by iterating
        assert len(loader) == counts[-1]
    assert counts == [6, 6, 6]


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_is_a_finite_pass_that_is_the_same_every_time(shards, tmp_path, fmt):
    loader = build_loader(config(shards[fmt], fmt, tmp_path, workers=2), "eval", 0, 1)
    first, second = [names(b) for b in loader], [names(b) for b in loader]
    assert first == second and len(first) == NUM_SAMPLES // 4
    assert sorted(itertools.chain(*first)) == [f"sample {i:03d}" for i in range(NUM_SAMPLES)]


def test_deepspeed_launcher_local_size_becomes_local_world_size(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "")  # recorded, so the value set below is undone afterwards
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("LOCAL_SIZE", "2")
    set_local_world_size()
    assert os.environ["LOCAL_WORLD_SIZE"] == "2"


def test_mds_refuses_a_rank_layout_that_disagrees_with_the_environment(shards, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE=1.*rank 1 of 2"):
        build_loader(config(shards["mds"], "mds", tmp_path), "train", 1, 2)


RANK_SCRIPT = textwrap.dedent("""
    import faulthandler, itertools, json, sys
    faulthandler.dump_traceback_later(60, exit=True)  # a hung rank shows where it hangs, then fails
    from sma.config import load_config
    from sma.data import build_loader
    from sma.inputs import decode
    import torch.distributed as dist
    url, run_dir, rank, out = sys.argv[1:5]
    dist.init_process_group("gloo")  # as the trainer does before building loaders (streaming then reuses it)
    cfg = load_config(None, ["data.format=mds", f"data.train_url={url}", "model.max_len=64",
                             "model.num_latents=16", "data.num_workers=2", "data.micro_batch_size=4",
                             f"run_dir={run_dir}"])
    loader = build_loader(cfg, "train", int(rank), 2)
    seen = [decode(r[v])[:10] for b in itertools.islice(iter(loader), len(loader)) for r, v in zip(b.inputs, b.valid)]
    json.dump({"batches": len(loader), "seen": seen}, open(out, "w"))
    dist.destroy_process_group()
""")


def run_two_ranks(script: str, args: list[str], folder: Path) -> list[Path]:
    """Run ``python -c script *args RANK OUT`` as ranks 0 and 1 of one node, laid out the way torchrun lays
    them out (streaming reads the environment); both must exit 0. Returns each rank's OUT file."""
    port = free_port()  # streaming may start a gloo group for its shared-memory cleanup
    outputs = [folder / f"rank{rank}.out" for rank in range(2)]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", script, *args, str(rank), str(outputs[rank])], env=env))
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outputs


@pytest.mark.slow
def test_mds_two_ranks_two_workers_read_every_sample_once_per_epoch(shards, tmp_path):
    # Two real processes. Without a process group of the caller's, streaming creates and destroys its own
    # twice in a row on the same port, which sometimes hangs; the trainer always has one.
    outputs = run_two_ranks(RANK_SCRIPT, [shards["mds"], str(tmp_path / "run")], tmp_path)
    results = [json.loads(out.read_text()) for out in outputs]
    assert [r["batches"] for r in results] == [12, 12]
    seen = Counter(itertools.chain(*(r["seen"] for r in results)))
    assert seen == Counter(f"sample {i:03d}" for i in range(NUM_SAMPLES))

