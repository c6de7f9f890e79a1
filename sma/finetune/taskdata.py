"""What a fine-tuning task hands the trainer: three splits of encoded inputs and their targets.

``Split.inputs`` holds one array per row: ``np.int16`` ids from ``sma.inputs.encode`` (bytes modality)
or ``np.float32`` ``(n, d_raw)`` values standardized with the train split's statistics (continuous; a
``StandardizedRows`` that keeps the raw values, e.g. uint8 pixels, and standardizes a row when it is read).
``Split.targets`` is ``int64 (N,)`` class ids (classification), ``float32 (N, C)`` 0/1 with NaN for a
missing label (binary), or ``float32 (N, C)`` in the label's own units (regression).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from sma.data.collate import standardized
from sma.inputs import InputError

KINDS = ("classification", "binary", "regression")
SPLITS = ("train", "valid", "test")


class StandardizedRows(Sequence):
    """Rows of a raw ``(N, n, d_raw)`` array (any numeric dtype) read as float32 ``(n, d_raw)``,
    ``(raw - mean) / std``. The raw array is kept as it is: images stay uint8 (a quarter of float32), and
    no standardized copy of a whole split ever exists."""

    def __init__(self, raw: np.ndarray, mean: np.ndarray, std: np.ndarray, index: np.ndarray | None = None) -> None:
        self.raw, self.index = raw, index
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)  # (n or 1, d_raw)

    def __len__(self) -> int:
        return len(self.raw) if self.index is None else len(self.index)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> "StandardizedRows": ...

    def __getitem__(self, i: int | slice) -> "np.ndarray | StandardizedRows":
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return standardized(self.raw[i if self.index is None else self.index[i]], self.mean, self.std)

    def subset(self, indices: Sequence[int]) -> "StandardizedRows":
        idx = np.asarray(indices, dtype=np.int64)
        return StandardizedRows(self.raw, self.mean, self.std, idx if self.index is None else self.index[idx])


@dataclass
class Split:
    inputs: Sequence  # per row: int16 ids (bytes) or float32 (n, d_raw) (continuous)
    targets: np.ndarray  # classification int64 (N,); binary / regression float32 (N, C)
    ids: list[str]  # a stable id per row (file:line or the dataset's own id)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices: Sequence[int]) -> "Split":
        idx = np.asarray(indices, dtype=np.int64)
        inputs = self.inputs.subset(idx) if isinstance(self.inputs, StandardizedRows) else [self.inputs[i] for i in idx]
        return Split(inputs, self.targets[idx], [self.ids[i] for i in idx])


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


def train_stats(train: np.ndarray, per_channel: bool = False, chunk_values: int = 1 << 22,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the train split's ``(N, n, d_raw)`` values per feature, ``(n, d_raw)``, or with
    ``per_channel`` one per channel over every token, ``(1, d_raw)``. Two passes in float64 over chunks of
    about ``chunk_values`` values (32 MB), so that no float64 copy of the split is made (ImageNet-100's
    pixels would need 112 GB). A feature constant on train keeps std 1."""
    axis = (0, 1) if per_channel else 0
    rows = max(1, chunk_values // max(1, train[0].size))
    count = len(train) * (train.shape[1] if per_channel else 1)
    total = np.zeros((1 if per_channel else train.shape[1], train.shape[2]))
    for i in range(0, len(train), rows):
        total += train[i:i + rows].sum(axis=axis, dtype=np.float64, keepdims=True)[0]
    mean = total / count
    squares = np.zeros_like(total)
    for i in range(0, len(train), rows):
        c = train[i:i + rows].astype(np.float64)
        np.subtract(c, mean, out=c)
        np.square(c, out=c)
        squares += c.sum(axis=axis, keepdims=True)[0]
    std = np.sqrt(squares / count)
    std[std < 1e-12] = 1.0
    return mean, std


def continuous_splits(name: str, split_mode: str, features: dict[str, np.ndarray],
                      targets: dict[str, np.ndarray], ids: dict[str, list[str]], per_channel: bool = False,
                      ) -> tuple[dict[str, Split], dict[str, Any]]:
    """Splits of continuous rows (raw ``(N, n, d_raw)`` per split, any numeric dtype), read standardized
    with the train split's statistics (per feature, or ``per_channel`` over all tokens), and those
    statistics (``mean``, ``std`` as lists) for the task's ``info``."""
    check_sizes(name, {s: len(x) for s, x in features.items()}, split_mode)
    mean, std = train_stats(features["train"], per_channel)
    splits = {s: Split(StandardizedRows(features[s], mean, std), targets[s], ids[s]) for s in features}
    return splits, {"mean": mean.tolist(), "std": std.tolist()}
