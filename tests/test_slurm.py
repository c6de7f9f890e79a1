"""The sbatch scripts on a real Slurm: two simulated nodes (n1, n2) on this machine, one CPU rank each.

The cluster is installed (Debian's slurm-wlm, munge) and started by the module fixture; where that is
impossible (not root, no apt) the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sma.train.checkpointing import find_checkpoint, read_meta
from sma.train.metrics import METRICS_FILE, read_metrics
from slurm_cluster import FINAL_STATES, SlurmCluster, SlurmUnavailable, ensure_installed

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
# Replace the GPU/CPU request of the script's header: the test nodes have no GPUs and two cores.
CPU_ONLY = ("--gpus-per-node=0", "--cpus-per-task=1")
JOB_TIMEOUT = 150.0


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    try:
        ensure_installed()
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
        cluster.start()
    except SlurmUnavailable as e:
        pytest.skip(f"no real Slurm here: {e}")
    shm_before = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    yield cluster
    cluster.stop()
    # DeepSpeed's CPU all-reduce buffers outlive the ranks that made them.
    for leftover in set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) - shm_before:
        leftover.unlink(missing_ok=True)


DECOY_MARK = "decoy-python3-ran"


def decoy_python3(folder: Path) -> Path:
    """A ``bin/`` whose ``python3`` only leaves a mark and fails: first on a job's PATH, it catches any
    step that runs ``python3`` from PATH instead of ``SMA_PYTHON``, as a venv not on PATH would."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    decoy = bin_dir / "python3"
    decoy.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {folder / DECOY_MARK}\nexit 97\n")
    decoy.chmod(0o755)
    return bin_dir


def submit_higgs(slurm: SlurmCluster, run_dir: Path, overrides: str) -> int:
    """``sbatch slurm/higgs.sh`` from the repository root with the tiny config on CPU (gloo), run by the
    interpreter that runs the tests (``SMA_PYTHON``), whatever ``python3`` is on PATH."""
    env = {
        "SMA_CONFIG": "configs/tiny_higgs.yaml",
        "SMA_RUN_DIR": str(run_dir),
        "SMA_OVERRIDES": f"zero_stage=1 log_every=1 {overrides}",
        "SMA_PYTHON": sys.executable,
        "PATH": f"{decoy_python3(run_dir.parent)}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",  # two simulated nodes share two cores
        "WANDB_MODE": "offline",
    }
    return slurm.submit(*CPU_ONLY, f"--output={run_dir.parent / 'slurm.out'}", "slurm/higgs.sh",
                        env=env, cwd=REPO)


def finish(slurm: SlurmCluster, job_id: int, run_dir: Path) -> tuple[dict[str, str], str]:
    """Wait for the job; return its record and its log (shown in the assertion messages)."""
    info = slurm.wait(job_id, JOB_TIMEOUT)
    log = (run_dir.parent / "slurm.out").read_text(errors="replace")
    return info, log


def logged_steps(run_dir: Path) -> list[int]:
    """Steps of metrics.jsonl in the order written; [] before the first record."""
    return [r["step"] for r in read_metrics(run_dir)] if (run_dir / METRICS_FILE).is_file() else []


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The checkpoint ``resume=auto`` would pick, and its meta (step, world_size, zero_stage)."""
    tag_dir = find_checkpoint("auto", run_dir / "checkpoints")
    assert tag_dir is not None, f"no complete checkpoint under {run_dir}"
    return tag_dir, read_meta(tag_dir)


def test_higgs_job_trains_on_two_nodes_and_leaves_a_checkpoint(slurm: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    info, log = finish(slurm, submit_higgs(slurm, run_dir, "max_steps=4 checkpoint_every=2"), run_dir)

    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert (info["NodeList"], info["Restarts"]) == ("n[1-2]", "0"), info
    # n1 does not resolve on the test machine: the rendezvous must fall back to its NodeAddr.
    assert "2 nodes x 1 processes, rendezvous 127.0.0.1:" in log, log
    assert logged_steps(run_dir) == [1, 2, 3, 4], log
    tag_dir, meta = latest_checkpoint(run_dir)
    # One launcher per node, one rank each: a world of 2, a ZeRO shard per rank.
    assert (meta["step"], meta["world_size"]) == (4, 2), meta
    assert len(list(tag_dir.glob("zero_pp_rank_*_optim_states.pt"))) == 2
    # Every step ran SMA_PYTHON; none reached the python3 first on the job's PATH.
    assert not (tmp_path / DECOY_MARK).exists(), (tmp_path / DECOY_MARK).read_text()


def test_preempted_job_checkpoints_requeues_and_resumes(slurm: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    max_steps = 300  # ~15 s of training after the signal is sent: it lands well before the end
    # No periodic checkpoint before the end: the resume point can only come from the preemption save.
    job_id = submit_higgs(slurm, run_dir, f"max_steps={max_steps} checkpoint_every={max_steps}")
    deadline = time.monotonic() + JOB_TIMEOUT
    while len(logged_steps(run_dir)) < 3:
        job = slurm.job(job_id)
        assert time.monotonic() < deadline and job["JobState"] not in FINAL_STATES, job
        time.sleep(0.2)

    # What `#SBATCH --signal=B:USR1@300` does before the time limit: signal the batch shell.
    slurm.run("scancel", "--batch", "--signal=USR1", str(job_id))
    while (job := slurm.job(job_id))["Restarts"] == "0":
        assert time.monotonic() < deadline and job["JobState"] not in FINAL_STATES, job
        time.sleep(0.2)
    # Requeued; it may start again only after a few seconds. The first run ended on a checkpoint.
    tag_dir, meta = latest_checkpoint(run_dir)
    saved = meta["step"]
    assert 3 <= saved < max_steps and logged_steps(run_dir) == list(range(1, saved + 1))

    info, log = finish(slurm, job_id, run_dir)
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0"), log
    assert "requeueing job" in log and "run 1:" in log, log
    assert f"resumed from {tag_dir} at step {saved}" in log, log
    # Every step logged once, none lost or repeated, and a final checkpoint at the end.
    assert logged_steps(run_dir) == list(range(1, max_steps + 1))
    assert latest_checkpoint(run_dir)[1]["step"] == max_steps


def test_job_requeued_by_slurm_resumes_from_its_last_checkpoint(
        slurm: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    max_steps, every = 200, 10  # the requeue lands long before the end
    job_id = submit_higgs(slurm, run_dir, f"max_steps={max_steps} checkpoint_every={every}")
    deadline = time.monotonic() + JOB_TIMEOUT
    while find_checkpoint("auto", run_dir / "checkpoints") is None:
        job = slurm.job(job_id)
        assert time.monotonic() < deadline and job["JobState"] not in FINAL_STATES, job
        time.sleep(0.2)

    # Slurm stops the running job without warning and puts it back in the queue.
    slurm.run("scontrol", "requeue", str(job_id))
    info, log = finish(slurm, job_id, run_dir)

    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0"), log
    resumed = re.search(r"resumed from (\S+) at step (\d+)", log)
    assert resumed, log
    step = int(resumed[2])
    # From the last periodic checkpoint, or from the one the trainer saved on the SIGTERM that comes
    # KillWait seconds before Slurm's SIGKILL (when the step and the save fit in those seconds).
    saved_on_signal = f"stop signal received; saved step {step}," in log
    assert (step % every == 0 or saved_on_signal) and 0 < step < max_steps, log
    assert logged_steps(run_dir) == list(range(1, max_steps + 1))
    assert latest_checkpoint(run_dir)[1]["step"] == max_steps


def test_failed_training_is_not_requeued(slurm: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    info, log = finish(slurm, submit_higgs(slurm, run_dir, "no_such_key=1"), run_dir)

    # The trainer rejects the config (exit 2): a failure, not a preemption, so no requeue.
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "0"), log
    assert "no_such_key" in log and "requeueing" not in log, log
