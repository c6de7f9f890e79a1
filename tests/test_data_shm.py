"""Shared memory that killed streaming runs leave behind: released on restart, never a live run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep import text
from sma.data.shm import stale_prefixes
from test_prep_formats import write_jsonl

pytestmark = [pytest.mark.usefixtures("streaming_shm_cleanup"),
              pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory lives in /dev/shm on Linux")]

READ_ONE_BATCH = """
import sys, time
from sma.config import load_config
from sma.data import build_loader
cfg = load_config(None, ["data.format=mds", f"data.train_url={sys.argv[1]}", "model.max_len=64",
                         "model.num_latents=16", "data.micro_batch_size=2", f"data.cache_dir={sys.argv[2]}"])
batch = next(iter(build_loader(cfg, "train", 0, 1)))
print("READ", batch.inputs.shape[0], flush=True)
if sys.argv[3] == "wait":
    time.sleep(600)
"""


def write_mds(tmp_path: Path, dst: str) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [f"doc {i} " + "abc " * (i % 11) for i in range(60)])
    text.main(["--src", str(src), "--dst", dst, "--window", "64", "--quiet"])


def reader(tmp_path: Path, url: str) -> list[str]:
    script = tmp_path / "read.py"
    script.write_text(READ_ONE_BATCH)
    return [sys.executable, str(script), url, str(tmp_path / "cache")]


def start_waiting_reader(args: list[str], folder: Path) -> tuple[subprocess.Popen, list[str]]:
    """A reader in a process group of its own, holding its dataset; and the segments it registered
    (those under the prefix whose ``locals`` names ``folder``: other processes may add their own)."""
    before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen([*args, "wait"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().startswith("READ 2")
    new = set(os.listdir("/dev/shm")) - before
    prefixes = {n.split("_")[0] for n in new if n.endswith("_locals")
                and str(folder).encode() in Path(f"/dev/shm/{n}").read_bytes()}
    assert len(prefixes) == 1, (new, prefixes)
    return proc, sorted(n for n in new if n.split("_")[0] in prefixes)


def kill_group(proc: subprocess.Popen) -> None:
    # The whole group, as Slurm or the OOM killer do: Python's resource tracker dies too, so nothing
    # releases the segments.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_killed_s3_run_restarting_on_its_cache_releases_what_it_left(s3, tmp_path):
    write_mds(tmp_path, s3.url("mds"))
    args = reader(tmp_path, s3.url("mds", "train"))
    proc, left = start_waiting_reader(args, tmp_path / "cache")
    kill_group(proc)
    assert any(name.endswith("_locals") for name in left), left
    assert all(os.path.exists(f"/dev/shm/{name}") for name in left)

    restarted = subprocess.run([*args, "exit"], capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 0 and restarted.stdout.startswith("READ 2"), restarted.stderr[-3000:]
    assert "released shared memory left by killed streaming run" in restarted.stderr
    assert not any(os.path.exists(f"/dev/shm/{name}") for name in left)


def test_only_registrations_of_dead_runs_on_our_folder_are_stale(tmp_path):
    folder = tmp_path / "mds" / "train"
    write_mds(tmp_path, str(tmp_path / "mds"))
    proc, left = start_waiting_reader(reader(tmp_path, str(folder)), folder)
    prefix = next(name for name in left if name.endswith("_locals")).split("_")[0]
    try:
        assert stale_prefixes([str(folder)]) == []  # alive: another job may read the same folder
    finally:
        kill_group(proc)
    assert stale_prefixes([str(tmp_path / "elsewhere")]) == []  # not registered for that folder
    assert stale_prefixes([str(folder)]) == [prefix]
    subprocess.run([*reader(tmp_path, str(folder)), "exit"], check=True, capture_output=True, timeout=300)
    assert stale_prefixes([str(folder)]) == [] and not os.path.exists(f"/dev/shm/{prefix}_locals")


READ_TOGETHER = """
import os, sys, time
import torch.distributed as dist
from sma.config import load_config
from sma.data import build_loader
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:
    dist.init_process_group("gloo")
cfg = load_config(None, ["data.format=mds", f"data.train_url={sys.argv[1]}", "model.max_len=64",
                         "model.num_latents=16", "data.micro_batch_size=2"])
open(sys.argv[2] + f".{os.getpid()}", "w").close()  # ready
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
batch = next(iter(build_loader(cfg, "train", rank, world)))
print("READ", batch.inputs.shape[0], flush=True)
if world > 1:
    dist.destroy_process_group()
"""


@pytest.mark.parametrize("ranks", [1, 2])
def test_jobs_starting_together_on_one_folder_all_read(tmp_path, ranks):
    """Independent jobs on one node (a sweep, or a scheduler packing small jobs) that open the same local
    MDS folder at the same moment each register a shared-memory prefix; all of them must start. With 2
    ranks a job, every rank looks for a free prefix, not only the one that registers it."""
    folder = tmp_path / "mds" / "train"
    write_mds(tmp_path, str(tmp_path / "mds"))
    script, go = tmp_path / "read_together.py", tmp_path / "go"
    script.write_text(READ_TOGETHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={ranks}"]
    jobs = 6 // ranks
    procs = [subprocess.Popen([*launch, str(script), str(folder), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, start_new_session=True) for _ in range(jobs)]
    try:
        while len(list(tmp_path.glob("go.*"))) < jobs * ranks and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        go.touch()
        outcomes = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    failed = [err[-2000:] for p, (out, err) in zip(procs, outcomes)
              if p.returncode or out.count("READ 2") != ranks]
    assert not failed, failed[0]
