"""Optimizer side of the DeepSpeed engine: the DeepSpeed JSON config, AdamW parameter groups, and the
client optimizer and scheduler handed to ``deepspeed.initialize``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sma.config import ConfigError, TrainConfig
from sma.train.schedule import warmup_cosine

# DeepSpeed prints its own progress every `steps_per_print` steps; our logger does that job.
_NEVER = 1 << 30


def batch_plan(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """``(micro_batch_size, grad_accum)`` per rank for ``world_size`` ranks.

    Without ``optim.global_batch_size`` both come from the config. With it, the global batch is the
    recipe and stays the same on any number of ranks (a run resumed on another world size keeps it):
    each rank takes ``global / world_size`` samples per step, in the fewest equal micro-batches no larger
    than ``data.micro_batch_size`` (the memory bound). So 256 on 8 ranks with micro-batches of at most 32
    is 1 x 32 per rank, and on 32 ranks 1 x 8.
    """
    micro, world_batch = cfg.data.micro_batch_size, cfg.optim.global_batch_size
    if world_batch == 0:
        return micro, cfg.optim.grad_accum
    if world_batch % world_size:
        raise ConfigError(f"optim.global_batch_size: {world_batch} samples cannot be split evenly over "
                          f"{world_size} ranks; use a multiple of the world size")
    per_rank = world_batch // world_size
    accum = next(a for a in range(-(-per_rank // micro), per_rank + 1) if per_rank % a == 0)
    return per_rank // accum, accum


def deepspeed_config(cfg: TrainConfig, world_size: int, *, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config for ``cfg`` on ``world_size`` ranks (ZeRO stage, precision, batch, clipping).

    With ``optim.optimizer = deepspeed_adamw`` the optimizer is DeepSpeed's own (fused AdamW, or CPU Adam
    under ZeRO-Offload); otherwise the client ``torch.optim.AdamW`` from ``client_optimizer`` is used.
    ``load_universal`` loads a universal checkpoint (a resume on a different world size).
    """
    micro, accum = batch_plan(cfg, world_size)
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.optim.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        # loss_scale 0 = dynamic loss scaling, the only safe default for fp16 training.
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    if cfg.optim.optimizer == "deepspeed_adamw":
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.lr,
                "betas": list(cfg.optim.betas),
                "eps": cfg.optim.eps,
                "weight_decay": cfg.optim.weight_decay,
                "adam_w_mode": True,  # decoupled weight decay
            },
        }
    return ds


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only; biases, LayerNorm gains and other vectors decay-free
    (decaying a gain towards 0 only fights the normalisation)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def client_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer | None:
    """``torch.optim.AdamW`` (decoupled weight decay, no C++ build), or None when DeepSpeed builds its own."""
    if cfg.optim.optimizer == "deepspeed_adamw":
        return None
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                             weight_decay=cfg.optim.weight_decay)


def scheduler_factory(cfg: TrainConfig) -> Callable[[torch.optim.Optimizer], Any]:
    """What ``deepspeed.initialize(lr_scheduler=...)`` calls with the optimizer it ends up using."""
    return lambda opt: warmup_cosine(opt, cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.min_lr_ratio)
