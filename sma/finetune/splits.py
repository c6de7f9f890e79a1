"""Row splits that are not scaffold splits: seeded random fractions, a split column, seeded subsets.

All return sorted row indices, so each split keeps the file's row order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sma.config import ConfigError
from sma.inputs import InputError

Indices = list[int]
SPLIT_VALUES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid",
                "test": "test"}


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``task.fractions``: three shares (train, valid, test), each >= 0, summing to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"task.fractions: expected three shares >= 0 (train, valid, test) summing to 1, "
                          f"got {list(fractions)}")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def random_split(n: int, fractions: Sequence[float], seed: int) -> tuple[Indices, Indices, Indices]:
    """A seeded permutation cut at ``int(f_train * n)`` and ``int((f_train + f_valid) * n)`` (deepchem's
    RandomSplitter rule)."""
    perm = np.random.default_rng(seed).permutation(n)
    a = int(fractions[0] * n)
    b = int((fractions[0] + fractions[1]) * n)
    return sorted(perm[:a].tolist()), sorted(perm[a:b].tolist()), sorted(perm[b:].tolist())


def seeded_subset(n: int, sizes: Sequence[int], seed: int) -> list[Indices]:
    """Disjoint seeded subsets of ``range(n)`` of the given sizes (a seed's smaller subsets are prefixes
    of the same permutation, so 1k labels are a subset of 10k labels)."""
    if sum(sizes) > n:
        raise ValueError(f"subsets of {list(sizes)} rows need {sum(sizes)} rows, only {n} available")
    perm = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for size in sizes:
        out.append(sorted(perm[start:start + size].tolist()))
        start += size
    return out


def column_split(values: Sequence[str], where: Sequence[str]) -> tuple[Indices, Indices, Indices]:
    """Rows by the value of the split column: train, valid (also validation / val / dev) or test, in any
    case. Any other value is an ``InputError`` naming its row."""
    out: dict[str, Indices] = {"train": [], "valid": [], "test": []}
    for i, v in enumerate(values):
        name = SPLIT_VALUES.get(str(v).strip().lower())
        if name is None:
            raise InputError(f"{where[i]}: split value {v!r} is not train, valid (validation, val, dev) or test")
        out[name].append(i)
    return out["train"], out["valid"], out["test"]
