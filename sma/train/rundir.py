"""One run per run directory: a lock that the running job holds on ``<run_dir>/.lock``.

The lock is a POSIX record lock (``fcntl.lockf``), not a lock file's mere existence, so it cannot be left
stuck: the kernel releases it when the holding process exits in any way, ``kill -9`` included. POSIX
locks (unlike ``flock``) are not inherited by forked children, so a data-loader worker that outlives
its parent for a moment holds nothing; and they are what NFS (lockd / NFSv4) and Lustre propagate
between nodes. On NFS a crashed node's lock is released when the server's lease expires (about 90 s
for NFSv4). The file's content names the holder (host, pid, start time) for the message a second run
gets.

Only global rank 0 holds the lock; the trainer tells every rank the outcome, so all of them stop.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import torch

from sma.config import ConfigError
from sma.train.env import DistEnv

LOCK_FILE = ".lock"


class RunDirBusy(ConfigError):
    """Another live process holds the run directory; the message names it."""


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"{holder.get('command', 'a run')} on host {holder.get('host')}, pid {holder.get('pid')}, started {started}"


class RunDirLock:
    """``with RunDirLock(run_dir, "pretrain"):`` holds ``run_dir`` or raises ``RunDirBusy`` at once."""

    def __init__(self, run_dir: str | Path, command: str) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.command = command
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirBusy(f"run_dir: {self.path.parent} is in use by {_describe(self.holder())}; wait for it "
                             "to finish or stop it, or pass another run_dir") from None
        me = {"command": self.command, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd

    def holder(self) -> dict:
        """Who holds the lock, as its holder wrote it (empty if unreadable). Read through a fresh open in
        a process that does not hold it: closing an fd of a locked file would drop this process's lock."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock; the file stays, holding nothing
            self.fd = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


@contextmanager
def hold_run_dir(run_dir: str | Path, env: DistEnv, command: str) -> Iterator[None]:
    """Rank 0 holds ``run_dir`` for the body; every rank raises ``RunDirBusy`` if it cannot (a collective)."""
    lock, busy = RunDirLock(run_dir, command), None
    if env.is_main:
        try:
            lock.acquire()
        except RunDirBusy as e:
            busy = e
    flag = torch.tensor([float(busy is not None)], device=env.device)
    torch.distributed.all_reduce(flag)
    if flag.item():
        raise busy or RunDirBusy(f"run_dir: {run_dir} is in use by another run (rank 0 could not hold it)")
    try:
        yield
    finally:
        lock.release()
