"""Per-rank memory figures for logs and benchmarks: peak process memory, and the bytes of model state
(parameters, fp32 master copies, optimizer moments) that this rank holds, which is what ZeRO shards."""

from __future__ import annotations

import resource
from typing import Any

import torch

_MB = float(1 << 20)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory on GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / _MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def model_state_mb(engine: Any) -> float:
    """Bytes of parameters and optimizer state held by this rank (each storage counted once).

    Under ZeRO-3 a parameter's local shard is ``p.ds_tensor`` (``p.data`` is empty outside forward);
    the wrapped torch optimizer holds the (partitioned) fp32 master weights and the Adam moments.
    """
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.numel() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for p in engine.module.parameters():
        add(getattr(p, "ds_tensor", p))
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO / bf16 wrappers keep the torch one inside
    for group in inner.param_groups:
        for p in group["params"]:
            add(p)
    for state in inner.state.values():
        for t in state.values():
            add(t)
    return total / _MB
