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


@contextlib.contextmanager
def registration_lock(timeout_s: float = 120.0) -> Iterator[None]:
    """On the local leader, hold a machine-wide lock while a ``StreamingDataset`` is made.

    streaming looks for the first free prefix, waits at a barrier, then creates ``NNNNNN_locals`` without
    looking again; two jobs starting together on one machine (a sweep, a scheduler packing small jobs)
    pick the same prefix and one dies with ``FileExistsError: '/NNNNNN_locals'``. The wait is bounded:
    a leader holding the lock may sit in a barrier with ranks on other machines, and two multi-machine
    jobs sharing machines must not wait on each other for ever; after ``timeout_s`` we go on unlocked,
    as streaming alone would. Other local ranks only look up what their leader registered.
    """
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        yield
        return
    import fcntl

    path = os.path.join(tempfile.gettempdir(), REGISTRATION_LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:  # another user's lock file we may not open: no worse than streaming alone
        log.debug("no registration lock (%s)", err)
        yield
        return
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # other users' jobs on this machine share the prefixes, so the lock too
    try:
        deadline, held = time.monotonic() + timeout_s, False
        while not held:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except OSError:
                if time.monotonic() > deadline:
                    log.warning("%s still held after %.0f s; registering without it", path, timeout_s)
                    break
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock
