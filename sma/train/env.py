"""Process environment for training: accelerator choice, rendezvous defaults, threads, process group.

Must run before ``import deepspeed``: DeepSpeed picks its accelerator once, at import.
"""

from __future__ import annotations

import os
import socket
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


def prepare_environment() -> None:
    """Fill in what the launchers leave out, so that ``deepspeed``, ``torchrun``, ``srun`` and plain
    ``python`` all start the same way on CPU or GPU."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Plain `python train/pretrain.py`: without these DeepSpeed goes looking for MPI (mpi4py).
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    # The deepspeed launcher sets LOCAL_SIZE only; torch and mosaicml-streaming read LOCAL_WORLD_SIZE.
    if "LOCAL_WORLD_SIZE" not in os.environ:
        os.environ["LOCAL_WORLD_SIZE"] = os.environ.get("LOCAL_SIZE", os.environ["WORLD_SIZE"])
    # Neither launcher pins CPU threads; N ranks x all cores each oversubscribes the machine.
    if "OMP_NUM_THREADS" not in os.environ and not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(max(1, cores // int(os.environ["LOCAL_WORLD_SIZE"])))


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
