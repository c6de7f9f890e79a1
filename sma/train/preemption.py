"""SIGUSR1 / SIGTERM handling: a signal only raises a flag; the loop finishes its step, agrees with
the other ranks, saves a checkpoint and exits with ``PREEMPTED_EXIT_CODE`` so a scheduler requeues it."""

from __future__ import annotations

import logging
import signal
import types

PREEMPTED_EXIT_CODE = 124

log = logging.getLogger(__name__)


class PreemptionFlag:
    """Set by SIGUSR1/SIGTERM; polled once per optimizer step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        # Logging from a handler could deadlock on the logging lock; record and return.
        self.signal = signum

    @property
    def raised(self) -> bool:
        return self.signal is not None
