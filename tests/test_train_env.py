"""CPU threads per rank (sma.train.env): the rule, where its inputs come from, and a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sma.train.env import intra_op_threads, slurm_task_cpus, thread_override


@pytest.mark.parametrize(("affinity", "local_ranks", "slurm", "override", "expected"), [
    (16, 1, None, None, 16),  # alone on the machine: every core
    (16, 4, None, None, 4),  # four ranks share the launcher's cores
    (16, 3, None, None, 5),  # rounded down: never more threads than cores
    (1, 2, None, None, 1),  # never below one
    (64, 8, 16, None, 2),  # Slurm granted 16 of the node's 64 cores (no binding task plugin)
    (16, 8, 64, None, 2),  # a binding plugin narrowed the affinity below what Slurm says
    (64, 1, 16, None, 16),  # srun started the process by itself: all of its task's cores
    (64, 8, None, 3, 3),  # an explicit number wins
    (1, 8, 1, 12, 12),  # ... even above the cores
])
def test_intra_op_threads(affinity: int, local_ranks: int, slurm: int | None, override: int | None,
                          expected: int) -> None:
    assert intra_op_threads(affinity, local_ranks, slurm, override) == expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    # The batch script holds all of the job's cores on its node, whatever --cpus-per-task says.
    ({"SLURM_CPUS_ON_NODE": "32", "SLURM_CPUS_PER_TASK": "8"}, 32),
    # An srun step's task has --cpus-per-task cores.
    ({"SLURM_STEP_ID": "0", "SLURM_CPUS_ON_NODE": "32", "SLURM_CPUS_PER_TASK": "8"}, 8),
    ({"SLURM_STEP_ID": "0", "SLURM_CPUS_ON_NODE": "32"}, None),
    ({"SLURM_CPUS_ON_NODE": ""}, None),
])
def test_slurm_task_cpus(environ: dict[str, str], expected: int | None) -> None:
    assert slurm_task_cpus(environ) == expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"OMP_NUM_THREADS": "3"}, 3),
    ({"OMP_NUM_THREADS": "4,2"}, 4),
    ({"SMA_NUM_THREADS": "2", "OMP_NUM_THREADS": "6"}, 2),
    # torchrun's own default for more than one worker per node is not a choice ...
    ({"OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "2"}, None),
    # ... but SMA_NUM_THREADS=1 is, and torchrun sets nothing for a single worker.
    ({"SMA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "2"}, 1),
    ({"OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "1"}, 1),
])
def test_thread_override(environ: dict[str, str], expected: int | None) -> None:
    assert thread_override(environ) == expected


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_thread_override_rejects_a_bad_number(value: str) -> None:
    with pytest.raises(ValueError, match="SMA_NUM_THREADS"):
        thread_override({"SMA_NUM_THREADS": value})


PROBE = """
import torch
from sma.train.env import prepare_environment
chosen = prepare_environment()
print(chosen, torch.get_num_threads(), torch.get_num_interop_threads())
"""


@pytest.mark.parametrize(("cores", "local_ranks", "expected"), [(1, 2, 1), (2, 1, 2), (2, 2, 1)])
def test_a_rank_gets_its_share_of_the_cores_it_may_use(cores: int, local_ranks: int, expected: int) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < cores:
        pytest.skip(f"needs {cores} cores, this process may use {len(allowed)}")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("OMP_NUM_THREADS", "SMA_NUM_THREADS")}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(local_ranks), LOCAL_WORLD_SIZE=str(local_ranks))
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.sched_setaffinity(0, allowed[:cores]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(expected)] * 3, done.stdout
