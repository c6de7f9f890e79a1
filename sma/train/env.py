"""Process environment for training: accelerator choice, rendezvous defaults, threads, process group.

Must run before ``import deepspeed``: DeepSpeed picks its accelerator once, at import.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, rank on its node, and its torch device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a single-machine rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def intra_op_threads(affinity_cores: int, local_world_size: int, slurm_cpus: int | None = None,
                     override: int | None = None) -> int:
    """CPU threads for one rank: an explicit ``override``, else its share of the cores, at least 1.

    The ranks of a node are started by one launcher (``torchrun``, ``deepspeed``; under Slurm, one
    srun task per node runs it, see ``slurm/launch.sh``), so all ``local_world_size`` of them share what
    that launcher was given:

    - ``affinity_cores``: the CPUs the process may run on (``os.sched_getaffinity``), inherited from the
      launcher. A binding Slurm task plugin (task/affinity, task/cgroup) narrows it to the task's cores;
      without one (task/none) it is the whole node, however few cores the job was granted.
    - ``slurm_cpus``: the cores Slurm granted the launcher's task (see ``slurm_task_cpus``), or None.

    The launcher's cores are the smaller of the two, and each rank gets ``cores // local_world_size``.
    Slurm's number is divided once, like the affinity: under ``slurm/launch.sh`` the node's ranks all
    live in the one task that has ``--cpus-per-task`` cores. A process that srun starts by itself (no
    launcher) is a world of one and keeps all of its task's cores.
    """
    if override is not None:
        return override
    cores = min(affinity_cores, slurm_cpus) if slurm_cpus else affinity_cores
    return max(1, cores // max(1, local_world_size))


def slurm_task_cpus(environ: Mapping[str, str]) -> int | None:
    """Cores Slurm granted the task this process runs in; None outside Slurm (or when it does not say).

    In an srun step (``SLURM_STEP_ID`` set) that is ``SLURM_CPUS_PER_TASK``. The batch script itself
    (no step id) holds every core the job has on its node, ``SLURM_CPUS_ON_NODE``, whatever
    ``--cpus-per-task`` says about the tasks it may start.
    """
    name = "SLURM_CPUS_PER_TASK" if "SLURM_STEP_ID" in environ else "SLURM_CPUS_ON_NODE"
    value = environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def thread_override(environ: Mapping[str, str]) -> int | None:
    """The thread count the user asked for: ``SMA_NUM_THREADS``, else ``OMP_NUM_THREADS``; None if neither.

    torchrun sets ``OMP_NUM_THREADS=1`` in every worker when it starts more than one per node and the
    variable was unset. That 1 is torchrun's default, not a choice: it counts as unset. To force one
    thread per rank under torchrun, set ``SMA_NUM_THREADS=1``.
    """
    for name in ("SMA_NUM_THREADS", "OMP_NUM_THREADS"):
        value = environ.get(name, "").split(",")[0].strip()  # OMP_NUM_THREADS may list nesting levels
        if not value:
            continue
        if name == "OMP_NUM_THREADS" and value == "1" and "TORCHELASTIC_RUN_ID" in environ \
                and int(environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{name}={environ[name]!r}: expected a positive number of threads")
        return int(value)
    return None


def prepare_environment() -> int:
    """Fill in what the launchers leave out, so that ``deepspeed``, ``torchrun``, ``srun`` and plain
    ``python`` all start the same way on CPU or GPU. Returns the number of CPU threads set for this rank
    (``intra_op_threads``)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Plain `python train/pretrain.py`: without these DeepSpeed goes looking for MPI (mpi4py).
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    # The deepspeed launcher sets LOCAL_SIZE only; torch and mosaicml-streaming read LOCAL_WORLD_SIZE.
    if "LOCAL_WORLD_SIZE" not in os.environ:
        os.environ["LOCAL_WORLD_SIZE"] = os.environ.get("LOCAL_SIZE", os.environ["WORLD_SIZE"])
    # Neither launcher gives a rank its share of the cores; N ranks x all cores each oversubscribes.
    threads = intra_op_threads(len(os.sched_getaffinity(0)), int(os.environ["LOCAL_WORLD_SIZE"]),
                               slurm_task_cpus(os.environ), thread_override(os.environ))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only possible before the first inter-op parallel work; keep what is set
        pass
    return threads


def init_distributed() -> DistEnv:
    """Join the process group (NCCL on GPU, gloo on CPU, chosen by DeepSpeed's accelerator)."""
    import deepspeed

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    deepspeed.init_distributed(dist_init_required=True)
    return DistEnv(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def shutdown() -> None:
    """Leave the process group; without it the deepspeed launcher sometimes sees a rank abort at exit."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
