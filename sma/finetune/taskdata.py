"""What a fine-tuning task hands the trainer: three splits of encoded inputs and their targets.

``Split.inputs`` holds one array per row: ``np.int16`` ids from ``sma.inputs.encode`` (bytes modality)
or ``np.float32`` ``(n, d_raw)`` values standardized with the train split's statistics (continuous).
``Split.targets`` is ``int64 (N,)`` class ids (classification), ``float32 (N, C)`` 0/1 with NaN for a
missing label (binary), or ``float32 (N, C)`` in the label's own units (regression).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sma.inputs import InputError

KINDS = ("classification", "binary", "regression")
SPLITS = ("train", "valid", "test")


@dataclass
class Split:
    inputs: list  # per row: int16 ids (bytes) or float32 (n, d_raw) (continuous)
    targets: np.ndarray  # classification int64 (N,); binary / regression float32 (N, C)
    ids: list[str]  # a stable id per row (file:line or the dataset's own id)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices: Sequence[int]) -> "Split":
        idx = np.asarray(indices, dtype=np.int64)
        return Split([self.inputs[i] for i in idx], self.targets[idx], [self.ids[i] for i in idx])


@dataclass
class TaskData:
    name: str  # e.g. "bbbp", "higgs", "mnli", "table"
    kind: str  # classification | binary | regression
    num_outputs: int  # C: classes, independent 0/1 labels, or regression targets
    modality: str  # bytes | continuous
    metrics: tuple[str, ...]  # sma.finetune.metrics names; metrics[0] selects the epoch and the lr
    split_mode: str  # written next to every number: "scaffold (deepchem)", "random seed 0", ...
    splits: dict[str, Split]  # exactly train, valid, test
    label_names: list[str]  # class names (classification) or label column names
    info: dict[str, Any] = field(default_factory=dict)  # rows read, invalid SMILES, rows dropped, files
    paper: dict[str, float] = field(default_factory=dict)  # the SMA paper's figures, by metric name

    def summary(self) -> str:
        sizes = " / ".join(f"{s} {len(self.splits[s]):,}" for s in SPLITS)
        return (f"{self.name}: {self.kind}, {self.num_outputs} output(s), {self.modality}; "
                f"split {self.split_mode}: {sizes}")


def check_sizes(name: str, sizes: dict[str, int], split_mode: str) -> None:
    """Exactly train / valid / test, none empty (an empty split names the split and the task)."""
    if sorted(sizes) != sorted(SPLITS):
        raise ValueError(f"task {name}: splits must be {SPLITS}, got {tuple(sizes)}")
    for s in SPLITS:
        if sizes[s] == 0:
            raise InputError(f"task {name}: the {s} split is empty (split: {split_mode}); "
                             "use more rows or other task.fractions / split settings")


def standardize(features: dict[str, np.ndarray], per_channel: bool = False) -> dict[str, Any]:
    """Standardize continuous inputs in place with the train split's per-feature mean and std.

    ``features[split]``: ``(N, n, d_raw)`` float32. A feature constant on train keeps std 1. Returns the
    statistics (``mean``, ``std`` as ``(n, d_raw)`` lists) for the task's ``info``. ``per_channel``: one
    mean and std per channel over every token (image pixels), ``(1, d_raw)``.
    """
    train = features["train"].astype(np.float64)
    axis = (0, 1) if per_channel else 0
    mean = train.mean(axis=axis, keepdims=True)[0]  # (n, d_raw), or (1, d_raw) per channel
    std = train.std(axis=axis, keepdims=True)[0]
    std[std < 1e-12] = 1.0
    for x in features.values():
        x -= mean.astype(np.float32)
        x /= std.astype(np.float32)
    return {"mean": mean.tolist(), "std": std.tolist()}


def continuous_splits(name: str, split_mode: str, features: dict[str, np.ndarray],
                      targets: dict[str, np.ndarray], ids: dict[str, list[str]], per_channel: bool = False,
                      ) -> tuple[dict[str, Split], dict[str, Any]]:
    """Splits of continuous rows (``(N, n, d_raw)`` per split), standardized with train statistics
    (per feature, or ``per_channel`` over all tokens), and those statistics. Each row of ``inputs`` is a
    view into its split's one array."""
    check_sizes(name, {s: len(x) for s, x in features.items()}, split_mode)
    stats = standardize(features, per_channel)
    return {s: Split(list(features[s]), targets[s], ids[s]) for s in features}, stats
