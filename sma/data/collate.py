"""Collate shard samples into padded ``sma.inputs.Batch`` objects (padding lives in ``sma.inputs``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sma.data.samples import Sample
from sma.inputs import Batch, InputError, pad_continuous, pad_ids


class Collate:
    """Pad a list of samples to ``max_len``.

    Discrete samples give ``inputs (B, max_len)`` int64 ids; continuous ones ``inputs (B, max_len,
    d_raw)`` float32; ``valid (B, max_len)`` bool in both cases. Labels ``y`` (scalars or ``(C,)``
    arrays) become float32 ``targets (B,)`` or ``(B, C)``. ``mean``/``std``, when given, standardize
    continuous values with statistics stored next to the shards: ``(n, d_raw)`` (or ``(n,)``) feature by
    feature, or ``(1, d_raw)`` channel by channel over every token (image pixels). uint8 pixels (``px``)
    become float32 here, so shards keep one byte per value.
    """

    def __init__(self, max_len: int, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        self.max_len = max_len
        self.mean = None if mean is None else _stats_array(mean)
        self.std = None if std is None else _stats_array(std)

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        if "ids" in samples[0]:
            batch = pad_ids([s["ids"] for s in samples], self.max_len)
        else:
            key = "x" if "x" in samples[0] else "px"
            batch = pad_continuous([self._standardize(np.asarray(s[key], dtype=np.float32)) for s in samples], self.max_len)
        if "y" in samples[0]:
            batch.targets = torch.tensor(np.array([s["y"] for s in samples], dtype=np.float32))
        return batch

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        if self.mean is None or self.std is None:
            return x
        if self.mean.shape[0] != 1 and x.shape[0] != self.mean.shape[0]:
            raise InputError(
                f"sample has {x.shape[0]} tokens but the stored statistics cover {self.mean.shape[0]}"
            )
        return standardized(x, self.mean, self.std)


def standardized(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float32 ``(x - mean) / std`` of one sample's ``(n, d_raw)`` values (any numeric dtype: uint8 pixels
    too); ``mean``/``std`` float32 ``(n, d_raw)`` or ``(1, d_raw)``."""
    return (np.asarray(x, dtype=np.float32) - mean) / std


def _stats_array(values) -> np.ndarray:
    """float32 ``(n, d_raw)`` or ``(1, d_raw)``; a 1-D ``(n,)`` list means one value per token."""
    a = np.asarray(values, dtype=np.float32)
    return a.reshape(-1, 1) if a.ndim == 1 else a


def collate_for_shards(max_len: int, split_url: str, endpoint_url: str = "") -> Collate:
    """A ``Collate`` using the standardization statistics stored next to the shards, if any."""
    from sma.data.storage import join, read_json

    stats = read_json(join(split_url, "stats.json"), endpoint_url, missing_ok=True)
    if stats is None:
        return Collate(max_len)
    return Collate(max_len, np.asarray(stats["mean"]), np.asarray(stats["std"]))


class TupleCollate:
    """``Collate`` returning tuples, for loaders that count samples with ``len(batch[0])`` (streaming's)."""

    def __init__(self, collate: Collate):
        self.collate = collate

    def __call__(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, ...]:
        b = self.collate(samples)
        return (b.inputs, b.valid) if b.targets is None else (b.inputs, b.valid, b.targets)


def tuple_to_batch(t: tuple[torch.Tensor, ...]) -> Batch:
    return Batch(t[0], t[1], t[2] if len(t) > 2 else None)
