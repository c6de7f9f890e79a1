"""Release the shared memory that killed streaming runs leave in ``/dev/shm``.

A ``StreamingDataset`` registers itself in a set of POSIX shared-memory segments named
``NNNNNN_locals``, ``NNNNNN_barrier``, ... (one integer prefix per dataset; ``locals`` lists its local
folders). A run that exits normally releases them; one killed with its whole process group (Slurm's
time limit or requeue, the OOM killer, ``kill -9`` of a job) also kills Python's resource tracker, and
the segments stay until the machine reboots. Every resume of a preempted job on the same node leaks
another set; with reader workers it includes the epoch's sample ordering (8 bytes a sample).

streaming's own ``clean_stale_shared_memory`` does not fit: it walks prefixes from 0 and stops at the
first free one, so it misses the prefixes runs actually leave (streaming skips any prefix whose lock
file is in the temp folder, and those accumulate), and it unlinks every segment it can open, those of
a dataset another job on the node is reading at that moment included. Here a prefix is stale only when
its ``locals`` names one of *our* folders and no process has any of its segments mapped (read from
``/proc/*/maps``); only such prefixes are removed, lock files included. Linux only: elsewhere, nothing
is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Collection, Iterator

from sma.data.streaming_import import import_streaming

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
_SEGMENT = re.compile(r"(\d{6})_[a-z_]+")


def mapped_segments() -> set[str]:
    """Names of the ``/dev/shm`` segments some process on this machine has mapped (that we may read)."""
    names = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    at = line.find(SHM_DIR + "/")
                    if at >= 0:
                        names.add(line[at + len(SHM_DIR) + 1:].split()[0])
        except OSError:  # gone meanwhile, or another user's process
            continue
    return names


def _stale_segments(local_dirs: Collection[str] | None) -> dict[str, list[str]]:
    """Segment names per stale prefix: registered for one of ``local_dirs`` (None: for any folder), and
    mapped by no live process."""
    if not os.path.isdir(SHM_DIR) or not os.path.isdir("/proc"):
        return {}
    import_streaming()
    from streaming.base.shared.prefix import _unpack_locals  # the format of the "locals" segment

    wanted = None if local_dirs is None else {os.path.abspath(d) for d in local_dirs}
    by_prefix: dict[str, list[str]] = {}
    for name in os.listdir(SHM_DIR):
        if (m := _SEGMENT.fullmatch(name)):
            by_prefix.setdefault(m[1], []).append(name)
    candidates = {}
    for prefix, names in by_prefix.items():
        try:
            with open(os.path.join(SHM_DIR, f"{prefix}_locals"), "rb") as f:
                their_locals, _ = _unpack_locals(f.read())
        except (OSError, ValueError, UnicodeDecodeError, IndexError):
            continue  # no readable registration: not ours to judge
        if wanted is None or wanted & {os.path.abspath(d) for d in their_locals}:
            candidates[prefix] = names
    if not candidates:
        return {}
    in_use = mapped_segments()
    return {p: names for p, names in candidates.items() if not any(n in in_use for n in names)}


def stale_prefixes(local_dirs: Collection[str] | None) -> list[str]:
    """Prefixes registered for one of ``local_dirs`` (None: for any folder) whose segments no live
    process maps."""
    return sorted(_stale_segments(local_dirs))


def release_stale_shared_memory(local_dirs: Collection[str] | None) -> list[str]:
    """Remove the segments and lock files of :func:`stale_prefixes`; return the prefixes removed.

    Call it on one process per machine (the local leader) before its dataset exists, and make the
    other local ranks wait for it: they would otherwise meet the stale registration first.
    """
    import_streaming()  # streaming's own import would pull in torchvision first
    from streaming.base.shared.prefix import BARRIER_FILELOCK, CACHE_FILELOCK

    stale = _stale_segments(local_dirs)
    for prefix, names in sorted(stale.items()):
        paths = [os.path.join(SHM_DIR, n) for n in names]
        paths += [os.path.join(tempfile.gettempdir(), f"{prefix}_{lock}") for lock in (BARRIER_FILELOCK, CACHE_FILELOCK)]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    removed = sorted(stale)
    if removed:
        where = "any folder" if local_dirs is None else ", ".join(sorted(local_dirs))
        log.warning("released shared memory left by killed streaming run(s) on %s (prefixes %s)",
                    where, ", ".join(removed))
    return removed


REGISTRATION_LOCK = "sma_streaming_registration.lock"


def registration_lock_path() -> str:
    """Beside the prefixes it guards: ``/dev/shm`` is one per machine, whatever ``$TMPDIR`` a scheduler
    sets per job."""
    return os.path.join(SHM_DIR if os.path.isdir(SHM_DIR) else tempfile.gettempdir(), REGISTRATION_LOCK)


def _open_lock(path: str) -> int | None:
    try:  # an existing file first: O_CREAT on another user's file in a sticky folder is refused (protected_regular)
        return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("cannot open %s (%s): registering this dataset without it", path, err)
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        log.warning("cannot create %s (%s): registering this dataset without it", path, err)
        return None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # other users' jobs on this machine share the prefixes, so the lock too
    return fd


def _acquire(fd: int, path: str, timeout_s: float) -> None:
    import fcntl

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if time.monotonic() > deadline:
                log.warning("%s still held after %.0f s; registering without it", path, timeout_s)
                return
            time.sleep(0.02)


@contextlib.contextmanager
def registration_lock(timeout_s: float = 120.0) -> Iterator[None]:
    """Make a ``StreamingDataset`` inside this: one job at a time per machine registers its prefix.

    streaming has every rank look for the first free prefix before its first barrier, then the local
    leader creates ``NNNNNN_locals`` without looking again; two jobs starting together on one machine (a
    sweep, a scheduler packing small jobs) pick the same prefix, and one dies with ``FileExistsError:
    '/NNNNNN_locals'`` or, worse, a rank of one job attaches to the other's segments. Here each local
    leader takes a machine-wide lock, and every rank of the job (the caller's process group) waits until
    all its leaders hold theirs before any of them looks for a prefix. The wait is bounded: two
    multi-machine jobs sharing machines must not wait on each other for ever; after ``timeout_s`` a
    leader goes on unlocked, as streaming alone would.
    """
    import torch.distributed as dist

    path = registration_lock_path()
    fd = _open_lock(path) if int(os.environ.get("LOCAL_RANK", "0")) == 0 else None
    try:
        if fd is not None:
            _acquire(fd, path, timeout_s)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
