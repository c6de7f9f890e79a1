"""Optimizer side of training: warmup + cosine schedule, the DeepSpeed config built from a run config, and
AdamW's decoupled weight decay groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sma.config import load_config
from sma.train.optim import client_optimizer, deepspeed_config, param_groups, scheduler_factory
from sma.train.schedule import lr_ratio

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_text.yaml"


def test_warmup_is_linear_and_reaches_the_peak_on_its_last_step() -> None:
    assert [lr_ratio(s, 4, 100, 0.0) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_decays_monotonically_to_the_floor_at_the_final_step() -> None:
    ratios = [lr_ratio(s, 10, 110, 0.1) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    assert ratios[0] == 1.0 and math.isclose(ratios[-1], 0.1)
    assert math.isclose(lr_ratio(60, 10, 111, 0.0), 0.5)  # half-way through the decay
    assert lr_ratio(500, 10, 110, 0.1) == pytest.approx(0.1)  # past the end: stays at the floor


def test_no_warmup_starts_at_the_peak() -> None:
    assert lr_ratio(0, 0, 50, 0.0) == 1.0


def test_scheduler_drives_the_optimizer_lr() -> None:
    cfg = load_config(TINY, ["optim.lr=0.01", "optim.warmup_steps=2", "max_steps=10"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = scheduler_factory(cfg)(opt)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.01 * lr_ratio(s, 2, 10, cfg.optim.min_lr_ratio) for s in range(4)])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_carries_stage_precision_batch_and_clipping(stage: int, precision: str) -> None:
    cfg = load_config(TINY, [f"zero_stage={stage}", f"precision={precision}", "optim.grad_accum=3",
                             "optim.grad_clip=0.5", "data.micro_batch_size=4"])
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["bf16"]["enabled"], ds["fp16"]["enabled"]) == (precision == "bf16", precision == "fp16")
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 3, 24)
    assert ds["gradient_clipping"] == 0.5
    assert "optimizer" not in ds  # torch AdamW is handed over as the client optimizer


def test_deepspeed_optimizer_and_offload_and_universal_loading() -> None:
    cfg = load_config(TINY, ["optim.optimizer=deepspeed_adamw", "optim.offload_optimizer=true", "zero_stage=2",
                             "optim.weight_decay=0.05"])
    ds = deepspeed_config(cfg, world_size=1, load_universal=True)
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["adam_w_mode"] is True
    assert ds["optimizer"]["params"]["weight_decay"] == 0.05
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["checkpoint"] == {"load_universal": True}
    assert client_optimizer(cfg, []) is None


def test_weight_decay_applies_to_matrices_only_and_is_decoupled() -> None:
    cfg = load_config(TINY, ["optim.weight_decay=0.5", "optim.lr=0.1"])
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    groups = param_groups(model, cfg.optim.weight_decay)
    assert [len(g["params"]) for g in groups] == [1, 3] and [g["weight_decay"] for g in groups] == [0.5, 0.0]
    opt = client_optimizer(cfg, groups)
    assert isinstance(opt, torch.optim.AdamW)
    before = model[0].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only the decoupled decay moves the weights, by lr * wd
    torch.testing.assert_close(model[0].weight, before * (1 - 0.1 * 0.5))
    torch.testing.assert_close(model[1].weight, torch.ones(3))
