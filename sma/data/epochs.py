"""Epoch bookkeeping shared by the in-memory (builtin) and tar (webdataset) readers.

Each epoch has a global sample order (seeded by ``seed`` and the epoch number). It is cut into
``world_size x num_roles`` contiguous, equally long ranges, one per reader stream ("role"; a role is a
DataLoader worker, or the main process when there are none). Equal lengths mean every rank yields the
same number of batches, so no rank waits forever at the end of an epoch; the few samples left over
(fewer than ``world_size * num_roles * batch_size``) are dropped for that epoch only, and since the
order changes every epoch different samples are dropped each time.

Resume is exact: the torch DataLoader takes batches from its workers round-robin, so batch ``j`` of an
epoch comes from role ``j % num_roles``. To continue after ``k`` batches, worker ``w`` plays role
``(k + w) % num_roles`` and skips the batches that role already produced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sma.data.samples import Sample
from sma.inputs import Batch, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """How one epoch of ``num_samples`` samples is split over ranks and reader roles."""

    num_samples: int
    world_size: int
    num_roles: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.batches_per_role == 0:
            raise InputError(
                f"{self.num_samples} samples are too few for world_size={self.world_size} x "
                f"{self.num_roles} reader(s) x micro_batch_size={self.batch_size}; use fewer workers or "
                "a smaller batch"
            )

    @property
    def batches_per_role(self) -> int:
        return self.num_samples // (self.world_size * self.num_roles * self.batch_size)

    @property
    def batches_per_rank(self) -> int:
        return self.batches_per_role * self.num_roles

    @property
    def dropped(self) -> int:
        """Samples left out of each epoch so that every rank and role gets whole, equal batches."""
        return self.num_samples - self.world_size * self.batches_per_rank * self.batch_size

    def role_range(self, rank: int, role: int) -> tuple[int, int]:
        """``[start, stop)`` of this role's samples in the epoch order."""
        per_role = self.batches_per_role * self.batch_size
        start = (rank * self.num_roles + role) * per_role
        return start, start + per_role


class EpochStream(IterableDataset):
    """Batches of one epoch for one rank; subclasses supply the samples of a role's range.

    ``epoch`` and ``start_batch`` are set by ``EpochLoader`` before each pass; DataLoader workers
    receive a copy of this object, so they see the values of the pass they serve.
    """

    def __init__(self, plan: Plan, rank: int, collate: Callable[[list[Sample]], Batch]):
        self.plan, self.rank, self.collate = plan, rank, collate
        self.epoch = 0
        self.start_batch = 0

    def role_samples(self, epoch: int, role: int, start: int, stop: int, skip: int) -> Iterator[Sample]:
        """Samples ``[start, stop)`` of the epoch order as this role yields them, minus the first
        ``skip`` (already consumed before a resume)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if num_workers != self.plan.num_roles:
            raise RuntimeError(f"plan made for {self.plan.num_roles} readers, running with {num_workers}")
        role = (self.start_batch + worker) % num_workers
        done = (self.start_batch - role + num_workers - 1) // num_workers  # batches this role yielded
        start, stop = self.plan.role_range(self.rank, role)
        bs = self.plan.batch_size
        buf: list[Sample] = []
        for sample in self.role_samples(self.epoch, role, start, stop, done * bs):
            buf.append(sample)
            if len(buf) == bs:
                yield self.collate(buf)
                buf = []


class EpochLoader:
    """The trainer-facing loader over an ``EpochStream``.

    ``train=True``: iterates forever, epoch after epoch. ``train=False``: one fixed pass, the same each
    time it is iterated. ``state_dict()`` is the exact position (epoch, batches consumed in it).
    """

    def __init__(self, stream: EpochStream, num_workers: int, train: bool, describe: str):
        self.stream, self.num_workers, self.train, self.describe = stream, num_workers, train, describe
        self.epoch = 0
        self.batch = 0
        log.info(
            "%s: %d batches per epoch per rank, %d samples per epoch dropped to keep ranks equal",
            describe, stream.plan.batches_per_rank, stream.plan.dropped,
        )

    @property
    def batches_per_epoch(self) -> int:
        return self.stream.plan.batches_per_rank

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _pass(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        self.stream.epoch, self.stream.start_batch = epoch, start_batch
        if self.num_workers == 0:
            yield from self.stream
            return
        yield from DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, generator=private_generator())

    def __iter__(self) -> Iterator[Batch]:
        if not self.train:
            yield from self._pass(0, 0)
            return
        while True:
            for batch in self._pass(self.epoch, self.batch):
                self.batch += 1  # counted before the yield: state_dict() then covers this batch
                yield batch
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"reader": self.describe, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("reader") != self.describe:
            raise ValueError(f"loader state is for {state.get('reader')!r}, this loader reads {self.describe!r}")
        if not 0 <= state["batch"] <= self.batches_per_epoch:
            raise ValueError(f"loader state batch={state['batch']} outside an epoch of {self.batches_per_epoch}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def private_generator() -> torch.Generator:
    """A generator for a DataLoader's worker seeds. Without one, every new DataLoader iterator (each epoch,
    each resume) draws from the global torch RNG, which the model uses for masks: a resumed run would
    then draw different masks than an uninterrupted one. Our readers seed their own shuffles."""
    return torch.Generator().manual_seed(0)
