"""Scaffold splits of molecules, as the MoleculeNet literature computes them.

Both group molecules by their Bemis-Murcko scaffold (RDKit ``MurckoScaffoldSmiles`` without
chirality; acyclic molecules share the empty scaffold ``""``), so no scaffold is in two splits.

``deepchem_split``: deepchem's ``ScaffoldSplitter``. Scaffold sets (indices ascending) are sorted by
``(size, first index)`` descending, i.e. the largest first and, between sets of equal size, the one
whose first index is higher first. With ``train_cutoff = f_train * N`` and
``valid_cutoff = (f_train + f_valid) * N``, each set in turn goes to train unless
``len(train) + len(set) > train_cutoff``; then to valid unless
``len(train) + len(valid) + len(set) > valid_cutoff``; else to test. Deterministic (no seed).

``balanced_split``: chemprop's ``scaffold_split(balanced=True)``. Sets larger than half the valid
size or half the test size ("big") come first, then the others, each group shuffled by
``random.Random(seed)`` (sets in first-appearance order before shuffling). Each set in turn goes to
train if ``len(train) + len(set) <= f_train * N``, else to valid if ``len(valid) + len(set) <=
f_valid * N``, else to test.

Both take molecules that RDKit parsed; invalid SMILES are left out before splitting (as the deepchem
and chemprop loaders drop them when featurizing), so ``N`` counts valid molecules only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

Indices = list[int]


def murcko_scaffold(mol: Any) -> str:
    """The Bemis-Murcko scaffold SMILES of an RDKit molecule, without chirality."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def scaffolds_of(smiles: Sequence[str]) -> list[str]:
    """Scaffolds of SMILES strings; an invalid SMILES raises ``ValueError`` naming it and its index."""
    from rdkit import Chem

    out = []
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"SMILES {i} ({s!r}) is not valid")
        out.append(murcko_scaffold(mol))
    return out


def scaffold_sets(scaffolds: Sequence[str]) -> list[Indices]:
    """Index lists (ascending) per scaffold, in the order the scaffolds first appear."""
    groups: dict[str, Indices] = {}
    for i, s in enumerate(scaffolds):
        groups.setdefault(s, []).append(i)
    return list(groups.values())


def deepchem_split(scaffolds: Sequence[str], fractions: Sequence[float]) -> tuple[Indices, Indices, Indices]:
    """deepchem's ScaffoldSplitter: ``(train, valid, test)`` indices, each in assignment order."""
    n = len(scaffolds)
    train_cutoff = fractions[0] * n
    valid_cutoff = (fractions[0] + fractions[1]) * n
    train: Indices = []
    valid: Indices = []
    test: Indices = []
    for group in sorted(scaffold_sets(scaffolds), key=lambda g: (len(g), g[0]), reverse=True):
        if len(train) + len(group) > train_cutoff:
            if len(train) + len(valid) + len(group) > valid_cutoff:
                test += group
            else:
                valid += group
        else:
            train += group
    return train, valid, test


def balanced_split(scaffolds: Sequence[str], fractions: Sequence[float],
                   seed: int) -> tuple[Indices, Indices, Indices]:
    """chemprop's balanced scaffold split: ``(train, valid, test)`` indices, each in assignment order."""
    n = len(scaffolds)
    train_size, valid_size, test_size = (f * n for f in fractions)
    big: list[Indices] = []
    small: list[Indices] = []
    for group in scaffold_sets(scaffolds):
        (big if len(group) > valid_size / 2 or len(group) > test_size / 2 else small).append(group)
    rng = random.Random(seed)
    rng.shuffle(big)
    rng.shuffle(small)
    train: Indices = []
    valid: Indices = []
    test: Indices = []
    for group in big + small:
        if len(train) + len(group) <= train_size:
            train += group
        elif len(valid) + len(group) <= valid_size:
            valid += group
        else:
            test += group
    return train, valid, test
