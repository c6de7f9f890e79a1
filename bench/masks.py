"""Guided vs random masking on the builtin synthetic proteins, with the mask diagnostics: does the
guided choice leak what the masked residues are (README, "Mask diagnostics")?

The residues are drawn i.i.d. (entropy 2.89 nats), so no model can reconstruct a masked residue below
2.89 nats unless the choice of mask itself tells it something. Each setting is one real 1-process
pretraining run (``train/pretrain.py`` with configs/tiny_protein.yaml and the overrides below); the
table is the last evaluation of each.

    python bench/masks.py [--steps 1000] [--eval-batches 16] [--out runs/bench_masks] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sma.train.metrics import read_metrics  # noqa: E402

SETTINGS = {
    "guided": ["masking.mode=guided"],
    "random": ["masking.mode=random"],
    "guided, selection_keys=position": ["masking.mode=guided", "masking.selection_keys=position"],
}
COLUMNS = ("eval_loss", "eval_loss_random_masks", "mask_position_entropy", "mask_top15_share",
           "mask_draw_overlap", "mask_byte_tv")


def run(name: str, overrides: list[str], steps: int, eval_batches: int, out: Path) -> dict:
    run_dir = out / name.replace(", ", "_").replace("=", "_")
    cmd = [sys.executable, str(REPO / "train" / "pretrain.py"), "--config", str(REPO / "configs" / "tiny_protein.yaml"),
           f"run_dir={run_dir}", f"max_steps={steps}", f"eval_every={steps // 4}", f"eval_batches={eval_batches}",
           "checkpoint_every=0", "wandb_mode=disabled", *overrides]
    shutil.rmtree(run_dir, ignore_errors=True)  # the bench's own run from last time
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return [r for r in read_metrics(run_dir) if "eval_loss" in r][-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_masks"))
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    results = {name: run(name, o, args.steps, args.eval_batches, Path(args.out)) for name, o in SETTINGS.items()}
    print(f"| masking ({args.steps} steps) | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, r in results.items():
        cells = [f"{r[c]:.3f} / {r[c + '_random']:.3f}" if c + "_random" in r else f"{r[c]:.3f}" for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
