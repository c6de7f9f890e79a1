"""One node's launcher under Slurm: ``torchrun`` with the same arguments, keeping the trainer's exit code 124.

torchrun reports any failed worker as exit code 1 (and a signal it handles as a traceback), which would
hide the trainer's "checkpoint saved, requeue me" code from the batch script. This runs torchrun's own
entry point and exits 124 when every failed worker exited 124, 1 on any other failure, 0 on success.

    python slurm/node_launcher.py --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d ... train/pretrain.py ...
"""

from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from sma.train.preemption import PREEMPTED_EXIT_CODE


def main(argv: list[str] | None = None) -> int:
    """Run torchrun; map "all failed workers preempted" to ``PREEMPTED_EXIT_CODE``."""
    # `scancel --signal=USR1` reaches every process of the step, this launcher included: the workers
    # checkpoint on it, the launcher must outlive them (SIGUSR1's default action would kill it and
    # leave the workers orphaned). A Python handler, unlike SIG_IGN, is not inherited by the workers.
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        torchrun_main(argv)
    except ChildFailedError as e:
        codes = {failure.exitcode for failure in e.failures.values()}
        return PREEMPTED_EXIT_CODE if codes == {PREEMPTED_EXIT_CODE} else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
