"""The mask diagnostics reach metrics.jsonl through the real trainer (builtin text, a few steps)."""

from __future__ import annotations

import math
from pathlib import Path

from helpers_train import run
from sma.mask_stats import BYTE_CLASSES
from sma.train.metrics import read_metrics


def test_every_evaluation_logs_mask_diagnostics_in_range(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = run(1, [f"run_dir={run_dir}", "max_steps=6", "eval_every=3", "eval_batches=2", "checkpoint_every=0",
                  "wandb_mode=disabled"])
    evals = [r for r in read_metrics(run_dir) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        for suffix in ("", "_random"):
            assert 0.0 < r[f"mask_position_entropy{suffix}"] <= 1.0
            assert 0.15 <= r[f"mask_top15_share{suffix}"] <= 1.0
            assert 0.0 <= r[f"mask_draw_overlap{suffix}"] <= 1.0
            assert 0.0 <= r[f"mask_byte_tv{suffix}"] <= 1.0
            shares = {k: v for k, v in r.items() if k.startswith("mask_share_") and k.endswith(suffix)}
            assert "mask_share_letters" + suffix in shares and "mask_share_whitespace" + suffix in shares
            assert all(math.isfinite(v) and v >= 0 for v in shares.values())
        classes = {k[len("mask_share_"):] for k in r if k.startswith("mask_share_") and not k.endswith("_random")}
        assert classes <= set(BYTE_CLASSES)
        # two independent random draws of 15% overlap by about r / (2 - r) = 0.08
        assert r["mask_draw_overlap_random"] < 0.2
    assert "masks at step 6 (the run's / random): position_entropy" in job.output()
