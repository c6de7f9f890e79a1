"""Data whose structure no domain prior can see, for ``bench/mask_quality.py``.

Two generators. Both shuffle every sample's tokens by one fixed secret permutation ``perm`` (the same for
all samples; position ``j`` holds original token ``perm[j]``), so adjacency says nothing, and both return,
per sample, which tokens belong together, in the permuted order the model sees.

**Tables** (``tables``): ``n = groups * group_size`` continuous tokens (default 32 = 4 x 8). Token ``t``
belongs to group ``g(t) = t // group_size``. Each sample draws one latent factor per group,
``z_g ~ N(0, 1)``, and

    x_t = s_t * z_g(t) + sigma * e_t,    e_t ~ N(0, 1),

with a per-token scale ``s_t = +-U(0.5, 1.5)`` (random sign) drawn once, and noise ``sigma``. A token is
predictable from its 7 group-mates and from nothing else. Label: ``y = [z_0 * z_1 > 0]`` (the two factors
agree in sign), which no single token and no linear map of the tokens decides.

**Bytes** (``words``): a vocabulary of ``vocab`` hidden "words", each ``3..6`` letters drawn from ``a..h`` (so
single bytes are shared by many words), drawn once. A sample is words drawn uniformly (with replacement) and concatenated without separators
until ``n`` bytes, the last word cut at byte ``n``; then its bytes are permuted by ``perm`` and stored as
ids (``sma.inputs.encode``: ``bytes + [SEP]``, the [SEP] last). A byte is predictable from the other bytes
of its word occurrence. Label: ``y = [word 0 occurs in the sample]``.

``write_pretraining`` writes MDS shards in the sample format of ``sma/data/samples.py`` (``x`` float32
``(n, 1)`` / ``ids`` int16); ``write_labelled`` writes the CSVs of the ``table`` fine-tuning task
(``f0..f{n-1}`` + ``y``, or ``text`` + ``y``); ``write_inputs`` writes held-out inputs for
``python -m sma.visualize``, the hidden groups in the column names:

    python bench/hidden_structure.py tables rows.csv [--samples 512] [--seed 7]
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sma.data.samples import check_sample, mds_columns
from sma.data.streaming_import import import_streaming
from sma.inputs import encode


@dataclass
class Draw:
    """``n_samples`` samples in the permuted token order the model sees.

    tokens: tables (N, n) float32; words: list of N permuted byte strings of length n.
    groups: (N, n) int: tokens with the same value in a row belong together (tables: the group, the same
        for every row; words: the word occurrence).
    labels: (N,) int 0/1.
    """

    tokens: np.ndarray | list[bytes]
    groups: np.ndarray
    labels: np.ndarray


class Tables:
    """The hidden-groups table generator (module docstring)."""

    kind = "tables"

    def __init__(self, groups: int = 4, group_size: int = 8, sigma: float = 0.5, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.num_groups, self.n, self.sigma = groups, groups * group_size, sigma
        self.scale = rng.uniform(0.5, 1.5, self.n) * rng.choice([-1.0, 1.0], self.n)
        self.group = np.arange(self.n) // group_size  # original token -> group
        self.perm = rng.permutation(self.n)  # position j holds original token perm[j]

    def draw(self, n_samples: int, rng: np.random.Generator) -> Draw:
        z = rng.standard_normal((n_samples, self.num_groups))
        x = self.scale * z[:, self.group] + self.sigma * rng.standard_normal((n_samples, self.n))
        labels = (z[:, 0] * z[:, 1] > 0).astype(np.int64)
        groups = np.broadcast_to(self.group[self.perm], (n_samples, self.n))
        return Draw(x[:, self.perm].astype(np.float32), np.ascontiguousarray(groups), labels)

    def sample(self, tokens: np.ndarray) -> dict:
        return {"x": tokens[:, None]}


class Words:
    """The hidden-words byte generator (module docstring)."""

    kind = "words"

    def __init__(self, vocab: int = 16, n: int = 47, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        letters = np.frombuffer(b"abcdefgh", dtype=np.uint8)  # few letters: a byte alone says little
        self.words = [bytes(rng.choice(letters, rng.integers(3, 7))) for _ in range(vocab)]
        self.n = n
        self.perm = rng.permutation(n)

    def draw(self, n_samples: int, rng: np.random.Generator) -> Draw:
        texts, groups, labels = [], np.zeros((n_samples, self.n), dtype=np.int64), np.zeros(n_samples, np.int64)
        for i in range(n_samples):
            text, occ = b"", []  # occ: the word occurrence (0, 1, ...) of each byte
            while len(text) < self.n:
                w = int(rng.integers(len(self.words)))
                labels[i] |= w == 0  # a cut last word counts: its first bytes are there
                occ += [occ[-1] + 1 if occ else 0] * len(self.words[w])
                text += self.words[w]
            original = np.frombuffer(text[: self.n], dtype=np.uint8)
            texts.append(bytes(original[self.perm]))
            groups[i] = np.asarray(occ[: self.n])[self.perm]
        return Draw(texts, groups, labels)

    def sample(self, tokens: bytes) -> dict:
        return {"ids": encode(tokens)}


def write_pretraining(gen: Tables | Words, out: Path, n_samples: int, seed: int) -> None:
    """MDS shards of ``n_samples`` unlabelled samples into ``out`` (``index.json`` + shards)."""
    draw = gen.draw(n_samples, np.random.default_rng(seed))
    samples = [check_sample(gen.sample(t), str(out)) for t in draw.tokens]
    MDSWriter = import_streaming().MDSWriter
    with MDSWriter(out=str(out), columns=mds_columns(samples[0]), progress_bar=False) as w:
        for s in samples:
            w.write(s)


def write_labelled(gen: Tables | Words, path: Path, n_samples: int, seed: int) -> None:
    """A CSV for the ``table`` task: ``f0..f{n-1},y`` (tables) or ``text,y`` (words; the bytes are letters)."""
    draw = gen.draw(n_samples, np.random.default_rng(seed))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if gen.kind == "tables":
            w.writerow([f"f{i}" for i in range(gen.n)] + ["y"])
            w.writerows([*(f"{v:.6g}" for v in row), int(y)] for row, y in zip(draw.tokens, draw.labels))
        else:
            w.writerow(["text", "y"])
            w.writerows([t.decode("ascii"), int(y)] for t, y in zip(draw.tokens, draw.labels))


def write_inputs(gen: Tables | Words, path: Path, n_samples: int, seed: int) -> None:
    """Unlabelled inputs for ``python -m sma.visualize``: tables, a CSV whose header names each position
    ``<position>:g<group>`` (so the heat map's axes show the hidden groups); words, one sample a line."""
    draw = gen.draw(n_samples, np.random.default_rng(seed))
    with open(path, "w", newline="") as f:
        if gen.kind == "tables":
            w = csv.writer(f)
            w.writerow([f"{j}:g{g}" for j, g in enumerate(draw.groups[0])])
            w.writerows([f"{v:.6g}" for v in row] for row in draw.tokens)
        else:
            f.writelines(t.decode("ascii") + "\n" for t in draw.tokens)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write held-out inputs of a generator for sma.visualize.")
    p.add_argument("generator", choices=["tables", "words"])
    p.add_argument("out", type=Path)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=7, help="a seed the benchmark's own data does not use")
    args = p.parse_args(argv)
    write_inputs(Tables() if args.generator == "tables" else Words(), args.out, args.samples, args.seed)


if __name__ == "__main__":
    main()
