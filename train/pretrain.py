"""SMA pretraining entry point.

    deepspeed --num_gpus 1 train/pretrain.py --config configs/default.yaml [key=value ...]
    torchrun --nproc_per_node 2 train/pretrain.py --config configs/tiny_text.yaml zero_stage=2

Exit codes: 0 done, 124 preempted by SIGUSR1/SIGTERM after saving a checkpoint (requeue), 2 bad config.
"""

import sys

from sma.train.launch import main

if __name__ == "__main__":
    sys.exit(main())
