"""Pretraining benchmark through the real trainer (``train/pretrain.py`` under the ``deepspeed``
launcher): tokens/s and per-rank peak memory for ZeRO 0/1/2/3 on 2 ranks with a small Perceiver (the
default config), and the per-rank parameter + optimizer memory of ZeRO-3 relative to ZeRO-0. With a GPU it
also runs ``text_16l`` at a reduced batch for 50 bf16 steps and reports tokens/s and model FLOPs
utilization. Prints a table; ``--json PATH`` also writes the figures.

    python bench/train.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from helpers_train import run  # noqa: E402
from step import matmul_peak, step_flops  # noqa: E402

from sma.config import load_config  # noqa: E402
from sma.data import build_loader  # noqa: E402
from sma.model import build_pretrain_model  # noqa: E402
from sma.train.metrics import read_metrics  # noqa: E402

SMALL = str(ROOT / "configs" / "default.yaml")
BIG = str(ROOT / "configs" / "text_16l.yaml")
QUIET = ["wandb_mode=disabled", "eval_every=0", "checkpoint_every=0", "log_every=1"]


def summarize(run_dir: Path, skip: int) -> dict[str, float]:
    """Median throughput over the steps after ``skip`` warm-up steps; memory as logged by the trainer."""
    records = read_metrics(run_dir)[skip:]
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "samples_per_s": statistics.median(r["samples_per_s"] for r in records),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records),
        "model_state_mb": max(r["model_state_mb"] for r in records),
        "loss": records[-1]["loss"],
    }


def zero_stages(work: Path, steps: int) -> dict[int, dict[str, float]]:
    out = {}
    for stage in (0, 1, 2, 3):
        run_dir = work / f"zero{stage}"
        run(2, [f"run_dir={run_dir}", f"zero_stage={stage}", f"max_steps={steps}", *QUIET], config=SMALL)
        out[stage] = summarize(run_dir, skip=5)
    return out


def gpu_text_16l(work: Path, steps: int = 50, micro_batch: int = 8) -> dict[str, float]:
    """text_16l on the builtin text at a reduced batch, bf16, one GPU; MFU from counted FLOPs per sample."""
    overrides = ["data.format=builtin", "data.builtin=text", f"data.micro_batch_size={micro_batch}",
                 "optim.global_batch_size=0", "optim.grad_accum=1", "precision=bf16", "zero_stage=0",
                 f"max_steps={steps}"]
    run_dir = work / "text_16l"
    run(1, [f"run_dir={run_dir}", *overrides, *QUIET], config=BIG)
    result = summarize(run_dir, skip=10)
    cfg = load_config(BIG, overrides)
    model = build_pretrain_model(cfg.model, cfg.masking).cuda()
    batch = next(iter(build_loader(cfg, "train", 0, 1))).to("cuda")
    flops_per_sample = step_flops(model, batch, "cuda", torch.bfloat16) / micro_batch
    peak = matmul_peak("cuda", torch.bfloat16, size=8192)
    result.update(flops_per_sample=flops_per_sample, peak_flops=peak,
                  mfu=flops_per_sample * result["samples_per_s"] / peak)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="steps per ZeRO stage run (default %(default)s)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="sma-bench-") as tmp:
        stages = zero_stages(Path(tmp), args.steps)
        gpu = gpu_text_16l(Path(tmp)) if torch.cuda.is_available() else None

    cfg = load_config(SMALL)
    table = Table(title=f"Pretraining, 2 CPU ranks (gloo), default.yaml Perceiver "
                        f"({sum(p.numel() for p in build_pretrain_model(cfg.model, cfg.masking).parameters()) / 1e6:.2f}M"
                        f" params, micro-batch {cfg.data.micro_batch_size}/rank, n={cfg.model.max_len}, fp32)")
    for col in ("ZeRO", "tokens/s", "samples/s", "peak RSS / rank (MiB)", "params+optimizer / rank (MiB)",
                "vs ZeRO-0", "loss @ last"):
        table.add_column(col, justify="right")
    base = stages[0]["model_state_mb"]
    for stage, r in stages.items():
        table.add_row(str(stage), f"{r['tokens_per_s']:,.0f}", f"{r['samples_per_s']:,.1f}",
                      f"{r['peak_memory_mb']:,.0f}", f"{r['model_state_mb']:.2f}",
                      f"{r['model_state_mb'] / base:.2f}x", f"{r['loss']:.3f}")
    console.print(table)
    console.print(f"ZeRO-3 / ZeRO-0 per-rank parameter + optimizer memory: {stages[3]['model_state_mb'] / base:.2f}")
    if gpu:
        console.print(f"text_16l bf16 on {torch.cuda.get_device_name()}: {gpu['tokens_per_s']:,.0f} tokens/s, "
                      f"MFU {gpu['mfu']:.1%} (peak {gpu['peak_memory_mb']:,.0f} MiB)")
    else:
        console.print("No GPU here: the text_16l bf16 run (tokens/s, MFU) is skipped.")
    result = {"zero_stages": stages, "text_16l_gpu": gpu}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
