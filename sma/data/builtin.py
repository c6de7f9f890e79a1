"""Small corpora that need no download, for the demo and tiny configs (smoke runs, not research).

- ``text``: documentation strings of the Python standard library (424 documents, 0.44 MB, PSF
  license), shipped as ``builtin/python_docs.jsonl.gz`` (regenerate: ``python -m data_prep.builtin_text``),
  packed into byte windows like any text corpus.
- ``smiles``: the first 4,999 molecules of the NCI open database (public domain), as shipped in
  RDKit's ``Data/NCI/first_5K.smi``; ``builtin/nci_5k.smiles.gz``, packed with [SEP] like guacamol.
- ``protein``: no protein corpus can be shipped in a few hundred kB, so these are *synthetic*
  sequences: residues drawn i.i.d. from the Swiss-Prot amino-acid composition, lengths 51..600. They
  exercise the protein pipeline and nothing more; real runs use Pfam shards (``data_prep.pfam``).
- ``higgs``: likewise *synthetic*: scikit-learn's ``make_classification`` with HIGGS's shape (28
  features, binary label), so the HIGGS configs run unchanged; real runs use ``data_prep.higgs``.

Each corpus is split deterministically: the last 10% of its samples are the ``eval`` split.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources

import numpy as np

from sma.data.epochs import EpochStream, Plan
from sma.data.samples import Sample, pack_windows

EVAL_FRACTION = 0.1
# Swiss-Prot amino-acid composition (percent), used only for the synthetic protein sample.
_AMINO_ACIDS = "ARNDCQEGHILKMFPSTWYV"
_COMPOSITION = [8.25, 5.53, 4.06, 5.45, 1.37, 3.93, 6.75, 7.07, 2.27, 5.96,
                9.66, 5.84, 2.42, 3.86, 4.70, 6.56, 5.34, 1.08, 2.92, 6.87]
_NUM_PROTEINS = 2000
_NUM_HIGGS_ROWS = 8000
HIGGS_FEATURES = 28


def _shipped_lines(name: str) -> Iterator[str]:
    with resources.files("sma.data").joinpath("builtin", name).open("rb") as raw:
        with gzip.open(raw, "rt", encoding="utf-8") as f:
            yield from (line.rstrip("\n") for line in f)


def _text_docs() -> Iterator[str]:
    return (json.loads(line)["text"] for line in _shipped_lines("python_docs.jsonl.gz"))


def _synthetic_proteins() -> Iterator[str]:
    rng = np.random.default_rng(0)
    p = np.array(_COMPOSITION) / sum(_COMPOSITION)
    letters = np.frombuffer(_AMINO_ACIDS.encode(), dtype=np.uint8)
    for _ in range(_NUM_PROTEINS):
        yield letters[rng.choice(20, size=int(rng.integers(51, 601)), p=p)].tobytes().decode()


def _synthetic_higgs() -> list[Sample]:
    from sklearn.datasets import make_classification  # heavy import, only when asked for

    x, y = make_classification(
        n_samples=_NUM_HIGGS_ROWS, n_features=HIGGS_FEATURES, n_informative=12, n_redundant=4,
        flip_y=0.2, random_state=0,
    )
    return [{"x": row.astype(np.float32)[:, None], "y": np.float32(label)} for row, label in zip(x, y)]


@lru_cache(maxsize=8)
def builtin_samples(name: str, max_len: int) -> tuple[Sample, ...]:
    """All samples of builtin corpus ``name`` for windows of ``max_len`` ids (ignored for higgs)."""
    if name == "text":
        return tuple({"ids": w} for w in pack_windows(_text_docs(), max_len))
    if name == "smiles":
        return tuple({"ids": w} for w in pack_windows(_shipped_lines("nci_5k.smiles.gz"), max_len))
    if name == "protein":
        return tuple({"ids": w} for w in pack_windows(_synthetic_proteins(), max_len, pack=False))
    if name == "higgs":
        return tuple(_synthetic_higgs())
    raise ValueError(f"unknown builtin corpus {name!r}; choose text, smiles, protein or higgs")


def builtin_split(name: str, max_len: int, split: str) -> tuple[Sample, ...]:
    samples = builtin_samples(name, max_len)
    cut = len(samples) - max(1, int(len(samples) * EVAL_FRACTION))
    return samples[:cut] if split == "train" else samples[cut:]


def feature_stats(samples: tuple[Sample, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-feature mean and std ``(n, d_raw)`` of continuous samples (None for discrete ones)."""
    if "x" not in samples[0]:
        return None
    x = np.stack([s["x"] for s in samples]).astype(np.float64)
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)


class MemoryStream(EpochStream):
    """An in-memory corpus; the epoch order is a seeded permutation (or the stored order).

    ``step_share`` (samples per rank and optimizer step, with a single reader role): the epoch order is
    cut into global batches first, and rank r takes the r-th share of each, so every optimizer step sees
    the same samples on any number of ranks (a global-batch recipe then trains alike on 1 or N ranks).
    Without it each rank reads one contiguous range of the order."""

    def __init__(self, samples: tuple[Sample, ...], plan: Plan, rank: int, collate, seed: int, shuffle: bool,
                 step_share: int = 0):
        super().__init__(plan, rank, collate)
        if step_share and (plan.num_roles != 1 or plan.batches_per_rank * plan.batch_size % step_share):
            raise ValueError(f"step_share={step_share} needs one reader role and whole steps per epoch")
        self.samples, self.seed, self.shuffle, self.step_share = samples, seed, shuffle, step_share

    def role_samples(self, epoch: int, role: int, start: int, stop: int, skip: int) -> Iterator[Sample]:
        n = len(self.samples)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.step_share:
            world, share = self.plan.world_size, self.step_share
            used = (stop - start) * world  # this epoch's samples over all ranks, whole global batches
            order = order[:used].reshape(-1, world, share)[:, self.rank].reshape(-1)
            start, stop = 0, stop - start
        for i in order[start + skip : stop]:
            yield self.samples[i]
