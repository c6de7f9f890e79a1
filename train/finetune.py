"""SMA fine-tuning and evaluation entry point.

    python train/finetune.py --config configs/finetune/moleculenet_bbbp.yaml init=runs/chem/checkpoints
    deepspeed --num_gpus 8 train/finetune.py --config configs/finetune/glue_mnli.yaml init=text_16l.pt
    python train/finetune.py --config configs/finetune/csv.yaml init=none data.path=my.csv ...

Exit codes as pretraining: 0 done, 124 preempted after saving a checkpoint (requeue with resume=auto),
2 bad config, 3 data that cannot be read.
"""

import sys
from pathlib import Path

# Launchers put train/ first on sys.path; put the checkout this script belongs to ahead of any other
# installed copy of sma, so the code that runs is the code next to the script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sma.finetune.trainer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
