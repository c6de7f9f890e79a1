"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio`` (the SMA paper).

Written as a plain function under ``torch.optim.lr_scheduler.LambdaLR`` rather than DeepSpeed's
``WarmupCosineLR`` because that one forbids ``warmup_steps = 0`` and spends its first step at lr 0.
LambdaLR's state is saved and restored by DeepSpeed's checkpoints like any client scheduler.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_ratio(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based: the step about to be taken).

    Warmup reaches the peak at its last step (``(step + 1) / warmup_steps``); the cosine then runs from
    1 at the first step after warmup to ``min_lr_ratio`` at the final step, and stays there.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """A scheduler stepped once per optimizer step (DeepSpeed does this inside ``engine.step()``)."""
    return LambdaLR(optimizer, lambda step: lr_ratio(step, warmup_steps, max_steps, min_lr_ratio))
