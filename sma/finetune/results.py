"""A fine-tune's outcome: the learning rate chosen on the validation split, the test metrics of each
seed's best epoch as mean ± std, and the SMA paper's figure beside them.

``results.json`` keeps everything (every trial's every epoch); ``results.md`` is the table. ``python -m
sma.results DIR ...`` puts several runs' tables together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sma.config import TrainConfig
from sma.train.checkpointing import atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
COLUMNS = ("task", "split", "metric", "test (mean ± std)", "seeds", "SMA paper", "init", "mode", "lr")


def _mean_std(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size),
            "values": [float(v) for v in arr]}


def summarize(cfg: TrainConfig, task: Any, init: str, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Choose the lr by the mean over seeds of the best-epoch validation metric; report that lr's test
    metrics (each seed at its own best epoch) as mean ± std over seeds."""
    from sma.finetune.metrics import higher_is_better

    metric = task.metrics[0]
    sign = 1.0 if higher_is_better(metric) else -1.0
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for trial in trials:
        by_lr.setdefault(float(trial["lr"]), []).append(trial)
    selection = [{"lr": lr, "valid": _mean_std([t["best"][f"valid_{metric}"] for t in ts])} for lr, ts in by_lr.items()]
    chosen = max(selection, key=lambda s: sign * s["valid"]["mean"])["lr"]
    test = {m: _mean_std([t["best"][f"test_{m}"] for t in by_lr[chosen]]) for m in task.metrics}
    name = f"table:{Path(cfg.task.path).name}" if task.name == "table" else task.name  # the user's file
    results = {
        "task": name, "kind": task.kind, "split_mode": task.split_mode, "metrics": list(task.metrics),
        "selection_metric": metric, "init": init, "mode": cfg.finetune.mode, "paper": dict(task.paper),
        "sizes": {s: len(task.splits[s]) for s in ("train", "valid", "test")}, "info": task.info,
        "lr_selection": selection, "chosen_lr": chosen, "test": test, "trials": trials,
    }
    results["table"] = markdown_table(rows_of(results))
    return results


def rows_of(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """One table row per metric of a ``results.json``."""
    rows = []
    for m in results["metrics"]:
        t = results["test"][m]
        paper = results["paper"].get(m)
        rows.append((results["task"], results["split_mode"], m, f"{t['mean']:.4f} ± {t['std']:.4f}", str(t["n"]),
                     "" if paper is None else f"{paper:g}", results["init"], results["mode"],
                     f"{results['chosen_lr']:g}"))
    return rows


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    lr_lines = [f"| {s['lr']:g} | {s['valid']['mean']:.4f} ± {s['valid']['std']:.4f} | {s['valid']['n']} |"
                for s in results["lr_selection"]]
    md = "\n".join([
        f"# {results['task']}: fine-tuning results", "",
        f"Split: {results['split_mode']} (train {results['sizes']['train']:,}, valid {results['sizes']['valid']:,}, "
        f"test {results['sizes']['test']:,}). Test metrics at each seed's best validation epoch, for the learning "
        f"rate with the best mean validation {results['selection_metric']}.", "",
        results["table"], "",
        f"Learning rates (validation {results['selection_metric']}, mean ± std over seeds):", "",
        "| lr | valid | seeds |", "|---|---|---|", *lr_lines, ""])
    atomic_write_text(run_dir / RESULTS_JSON, json.dumps(results, indent=1))
    atomic_write_text(run_dir / RESULTS_MD, md)
