"""Do the masks find hidden structure, and does it help downstream? Guided (SMA) vs random masking vs
guided with ``masking.selection_keys=position``, on data whose structure no domain prior can see
(``bench/hidden_structure.py``: tables of tokens in hidden groups, bytes of hidden words, every sample's
tokens shuffled by one fixed secret permutation).

For each generator and masking, one real 1-process pretraining run (``train/pretrain.py``, the same small
self-attention model, steps and seed for all), then:

- **alignment**: on held-out samples, the masks the trained model chooses (``load_pretrained``, a fixed
  generator, ``PretrainOutput.mask``): among masked tokens, the share of their group-mates (tables) or of
  the other bytes of their word occurrence (bytes) that are masked too. Beside it, the same figure for
  random masks of the same size from the same model (``(k - 1) / (n - 1)`` in expectation for tables);
- **downstream**: ``train/finetune.py`` (task ``table`` on the written CSVs), a linear probe
  (``finetune.mode=linear_probe``) and a full fine-tune with 100 and 1,000 labels, the test ROC-AUC at the
  best validation epoch, mean over the seeds; and the same model from scratch (``init=none``).

    python bench/mask_quality.py [--steps 1000] [--seeds 0 1] [--jobs 2] [--out runs/bench_mask_quality] [--json out.json]
    python bench/mask_quality.py --quick        # a smoke run: 4 subprocesses, under a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.hidden_structure import Tables, Words, write_labelled, write_pretraining  # noqa: E402
from bench.masks import SETTINGS  # noqa: E402  (guided, random, guided + selection_keys=position)
from sma.checkpoint import load_pretrained  # noqa: E402
from sma.data.collate import Collate  # noqa: E402
from sma.data.samples import check_sample  # noqa: E402
from sma.train.metrics import read_metrics  # noqa: E402

# One small self-attention model and the HIGGS masking recipe (configs/tiny_higgs.yaml) for both generators.
MODEL = ["model.encoder=transformer", "model.d_embed=64", "model.num_layers=2", "model.num_heads=4",
         "model.decoder_dim=64", "model.decoder_heads=4"]
MODALITY = {"tables": ["model.modality=continuous", "model.d_raw=1", "model.max_len=32"],
            "words": ["model.modality=bytes", "model.max_len=48"]}
COLUMNS = ("alignment (random)", "probe@100", "probe@1000", "finetune@100", "finetune@1000",
           "eval_loss_random_masks")
LABELS = (100, 1000)
T = TypeVar("T")


def slug(name: str) -> str:
    return name.replace(", ", "_").replace("=", "_").replace(" ", "_")


def call(cmd: list[str], log: Path) -> None:
    """Run one command quietly; on failure show the end of its log."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "SMA_NUM_THREADS": os.environ.get("SMA_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))}
    with open(log, "w") as f:
        code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        sys.exit(f"{' '.join(cmd)}\nfailed with exit code {code}:\n" + "".join(log.read_text().splitlines(True)[-30:]))


def write_data(gen: Tables | Words, out: Path, sizes: dict[str, int]) -> None:
    """Pretraining shards (train, eval) and the labelled CSVs (train_100, train_1000, valid, test), each
    from its own seed."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_pretraining(gen, out / "train", sizes["pretrain"], seed=1)
    write_pretraining(gen, out / "eval", sizes["eval"], seed=2)
    for labels in LABELS:
        write_labelled(gen, out / f"train_{labels}.csv", labels, seed=10 + labels)
    write_labelled(gen, out / "valid.csv", sizes["valid"], seed=3)
    write_labelled(gen, out / "test.csv", sizes["test"], seed=4)


def pretrain(kind: str, name: str, data: Path, out: Path, steps: int, eval_batches: int) -> tuple[Path, dict]:
    run_dir = out / kind / slug(name)
    cmd = [sys.executable, str(REPO / "train" / "pretrain.py"), "--config", str(REPO / "configs" / "tiny_higgs.yaml"),
           *MODEL, *MODALITY[kind], "data.format=mds", f"data.train_url={data / 'train'}",
           f"data.eval_url={data / 'eval'}", f"run_dir={run_dir}", f"max_steps={steps}", f"eval_every={steps}",
           f"eval_batches={eval_batches}", f"checkpoint_every={steps}", "log_every=50", "wandb_mode=disabled",
           "seed=0", *SETTINGS[name]]
    shutil.rmtree(run_dir, ignore_errors=True)  # the bench's own run from last time
    run_dir.mkdir(parents=True)
    call(cmd, run_dir.parent / f"{slug(name)}.log")
    return run_dir, [r for r in read_metrics(run_dir) if "eval_loss" in r][-1]


@torch.no_grad()
def alignment(checkpoints: Path, gen: Tables | Words, samples: int, seed: int = 123) -> dict[str, float]:
    """Among masked tokens, the mean share of their partners (same group / word occurrence) that are masked
    too, for the model's own masks and for random masks of the same size, on ``samples`` held-out samples."""
    model, cfg = load_pretrained(checkpoints)
    draw = gen.draw(samples, np.random.default_rng(seed))
    batch = Collate(cfg.model.max_len)([check_sample(gen.sample(t), "held-out") for t in draw.tokens])
    groups = torch.as_tensor(draw.groups)  # (N, n) the data tokens; a byte sample's [SEP] is left out
    out = {}
    for mode in ("own", "random"):
        g = torch.Generator().manual_seed(seed)
        mask = model(batch, progress=1.0, generator=g, mode=None if mode == "own" else "random").mask
        mask = mask[:, : gen.n]  # (N, n)
        same = groups[:, :, None] == groups[:, None, :]  # (N, n, n) partners, and the token itself
        same &= ~torch.eye(gen.n, dtype=torch.bool)
        both = (same & mask[:, None, :]).sum(-1).double()  # (N, n) masked partners of each token
        partners = same.sum(-1).double()
        have = mask & (partners > 0)
        out[mode] = float((both[have] / partners[have]).mean())
    return {"alignment": out["own"], "alignment_random": out["random"]}


def finetune(kind: str, gen: Tables | Words, init: str, data: Path, run_dir: Path, mode: str, labels: int,
             epochs: int, seeds: list[int]) -> float:
    """Test ROC-AUC (mean over seeds, each at its best validation epoch) of one fine-tune."""
    inputs = ([f"task.feature_columns=[{','.join(f'f{i}' for i in range(gen.n))}]"] if kind == "tables"
              else ["task.input_column=text"])
    model = [*MODEL, *MODALITY[kind]] if init == "none" else []
    cmd = [sys.executable, str(REPO / "train" / "finetune.py"), "--config",
           str(REPO / "configs" / "finetune" / "csv.yaml"), f"init={init}", *model, *inputs,
           f"task.path={data / f'train_{labels}.csv'}", "task.split=file", f"task.valid_path={data / 'valid.csv'}",
           f"task.test_path={data / 'test.csv'}", "task.label_columns=[y]", "task.kind=binary",
           f"finetune.mode={mode}", f"finetune.epochs={epochs}", "finetune.patience=0",
           f"finetune.seeds=[{','.join(map(str, seeds))}]", "optim.lr=1e-3", "optim.warmup_steps=10",
           "data.micro_batch_size=16", "finetune.eval_batch_size=500", f"run_dir={run_dir}", "wandb_mode=disabled"]
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    call(cmd, run_dir / "finetune.log")
    return json.loads((run_dir / "results.json").read_text())["test"]["roc_auc"]["mean"]


def in_parallel(jobs: int, calls: list[Callable[[], T]], what: str) -> list[T]:
    """Run ``calls`` (each one subprocess on one CPU thread) ``jobs`` at a time, with a progress bar;
    results in the order of ``calls``. The first failure cancels what has not started and is raised."""
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(c) for c in calls]
        try:
            for f in tqdm(as_completed(futures), total=len(futures), desc=what, unit="run", file=sys.stderr):
                f.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
        return [f.result() for f in futures]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000, help="pretraining steps (batch 32)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fine-tuning seeds")
    p.add_argument("--epochs", type=int, nargs=2, default=[10, 4], metavar=("E100", "E1000"),
                   help="fine-tuning epochs with 100 and 1,000 labels")
    p.add_argument("--generators", nargs="+", default=["tables", "words"], choices=["tables", "words"])
    p.add_argument("--jobs", type=int, default=min(2, len(os.sched_getaffinity(0))),
                   help="runs at a time, one CPU thread each (default: 2, or 1 on a 1-core machine); "
                        "every run is seeded and single-threaded, so the figures do not depend on it")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: tables only, 20 steps, one full fine-tune of the guided model on 100 labels")
    p.add_argument("--out", default=str(REPO / "runs" / "bench_mask_quality"))
    p.add_argument("--json", help="also write the raw numbers here")
    args = p.parse_args()
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: expected at least 1")
    sizes = {"pretrain": 20000, "eval": 1024, "valid": 300, "test": 1000, "held_out": 512}
    eval_batches = 16
    if args.quick:
        args.steps, args.seeds, args.epochs, args.generators, eval_batches = 20, [0], [1, 1], ["tables"], 2
        sizes = {"pretrain": 640, "eval": 64, "valid": 64, "test": 64, "held_out": 64}
    out = Path(args.out)
    gens = {kind: {"tables": Tables, "words": Words}[kind]() for kind in args.generators}
    t0 = time.perf_counter()
    for kind, gen in gens.items():
        write_data(gen, out / kind / "data", sizes)

    runs = [(kind, name) for kind in gens for name in SETTINGS]
    pretrained = in_parallel(args.jobs, [partial(pretrain, kind, name, out / kind / "data", out, args.steps,
                                                 eval_batches) for kind, name in runs], "pretrain")
    results: dict[str, dict[str, dict]] = {kind: {} for kind in gens}
    inits: dict[tuple[str, str], str] = {}
    for (kind, name), (run_dir, record) in zip(runs, pretrained):
        results[kind][name] = {"eval_loss": record["eval_loss"],
                               "eval_loss_random_masks": record["eval_loss_random_masks"],
                               **alignment(run_dir / "checkpoints", gens[kind], sizes["held_out"])}
        inits[kind, name] = str(run_dir / "checkpoints")
    for kind in gens:
        results[kind]["scratch"] = {}
        inits[kind, "scratch"] = "none"
    print(f"pretraining and alignment done after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    cells, calls = [], []
    for (kind, name), init in inits.items():
        for mode, short in (("linear_probe", "probe"), ("full", "finetune")):
            if init == "none" and mode == "linear_probe":
                continue  # a frozen random encoder: not a baseline anyone uses
            if args.quick and (name != "guided" or mode == "linear_probe"):
                continue  # the smoke run fine-tunes one model once
            for labels, epochs in zip(LABELS[:1] if args.quick else LABELS, args.epochs):
                run_dir = out / kind / "ft" / f"{slug(name)}_{short}_{labels}"
                cells.append((kind, name, f"{short}@{labels}"))
                calls.append(partial(finetune, kind, gens[kind], init, out / kind / "data", run_dir, mode, labels,
                                     epochs, args.seeds))
    for (kind, name, column), auc in zip(cells, in_parallel(args.jobs, calls, "fine-tune")):
        results[kind][name][column] = auc

    print(f"| data | masking ({args.steps} steps) | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for kind, rows in results.items():
        for name, r in rows.items():
            row = [f"{r['alignment']:.3f} ({r['alignment_random']:.3f})" if "alignment" in r else "-"]
            row += [f"{r[c]:.3f}" if c in r else "-" for c in COLUMNS[1:]]
            print(f"| {kind} | {name} | " + " | ".join(row) + " |")
    print(f"total {time.perf_counter() - t0:.0f} s with {args.jobs} job(s) at a time", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))

if __name__ == "__main__":
    main()
