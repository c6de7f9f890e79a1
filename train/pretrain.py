"""SMA pretraining entry point.

    deepspeed --num_gpus 1 train/pretrain.py --config configs/default.yaml [key=value ...]
    torchrun --nproc_per_node 2 train/pretrain.py --config configs/tiny_text.yaml zero_stage=2

Exit codes: 0 done, 124 preempted by SIGUSR1/SIGTERM after saving a checkpoint (requeue), 2 bad config,
3 data that cannot be read (the message names the file or shard).
"""

import sys
from pathlib import Path

# Launchers put train/ first on sys.path; put the checkout this script belongs to ahead of any other
# installed copy of sma, so the code that runs is the code next to the script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sma.train.launch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
