"""Scaffold splits: deepchem's ScaffoldSplitter rule exactly, chemprop's balanced split by its rules."""

from __future__ import annotations

import pytest

pytest.importorskip("rdkit")

from sma.finetune.scaffold import balanced_split, deepchem_split, scaffold_sets, scaffolds_of  # noqa: E402

# index: SMILES (scaffold)
MOLECULES = [
    "Cc1ccccc1",  # 0 benzene
    "C1CCCCC1",  # 1 cyclohexane
    "CCO",  # 2 acyclic: the empty scaffold
    "c1ccccc1",  # 3 benzene
    "c1ccncc1",  # 4 pyridine
    "CC1CCCCC1",  # 5 cyclohexane
    "Oc1ccccc1",  # 6 benzene
    "CCCC",  # 7 acyclic
    "c1ccc2ccccc2c1",  # 8 naphthalene
    "Cc1ccncc1",  # 9 pyridine
    "CCc1ccccc1",  # 10 benzene
]


def test_scaffolds_are_murcko_without_substituents_and_acyclic_molecules_share_the_empty_one():
    s = scaffolds_of(MOLECULES)
    assert s[0] == s[3] == s[6] == s[10] == "c1ccccc1"
    assert s[1] == s[5] == "C1CCCCC1"
    assert s[2] == s[7] == ""
    assert s[4] == s[9] == "c1ccncc1"
    assert scaffold_sets(s) == [[0, 3, 6, 10], [1, 5], [2, 7], [4, 9], [8]]


def test_deepchem_scaffold_split_follows_the_greedy_rule_with_ties_by_higher_first_index():
    # N = 11, fractions 0.8 / 0.1 / 0.1: train_cutoff = 8.8, valid_cutoff = 9.9.
    # Sets sorted by (size, first index) descending: benzene [0,3,6,10] (4); then the three pairs,
    # the higher first index first: pyridine [4,9], acyclic [2,7], cyclohexane [1,5]; naphthalene [8].
    #   benzene:     0 + 4 = 4  <= 8.8              -> train (4)
    #   pyridine:    4 + 2 = 6  <= 8.8              -> train (6)
    #   acyclic:     6 + 2 = 8  <= 8.8              -> train (8)
    #   cyclohexane: 8 + 2 = 10 > 8.8; 8 + 0 + 2 = 10 > 9.9 -> test (overflows past valid)
    #   naphthalene: 8 + 1 = 9  > 8.8; 8 + 0 + 1 = 9 <= 9.9 -> valid
    train, valid, test = deepchem_split(scaffolds_of(MOLECULES), [0.8, 0.1, 0.1])
    assert train == [0, 3, 6, 10, 4, 9, 2, 7]
    assert valid == [8]
    assert test == [1, 5]


def test_deepchem_scaffold_split_needs_no_seed_and_ignores_input_order_within_a_scaffold():
    s = scaffolds_of(MOLECULES)
    assert deepchem_split(s, [0.8, 0.1, 0.1]) == deepchem_split(list(s), [0.8, 0.1, 0.1])


def test_invalid_smiles_are_named_by_index():
    with pytest.raises(ValueError, match=r"SMILES 1 \('C1CC'\)"):
        scaffolds_of(["CCO", "C1CC"])


def _library() -> list[str]:
    """80 molecules: a benzene family of 20, then 30 single-ring scaffolds (3- to 12-rings of carbon,
    with one oxygen, with one nitrogen) of two molecules each: the ring and its methyl derivative."""
    mols = ["c1ccccc1" + "C" * k for k in range(20)]
    for size in range(3, 13):
        for ring in ("C1" + "C" * (size - 1) + "1", "C1" + "C" * (size - 2) + "O1", "C1" + "C" * (size - 2) + "N1"):
            mols += [ring, "C" + ring]
    return mols


def test_balanced_scaffold_split_is_seeded_sized_and_keeps_each_scaffold_in_one_split():
    smiles = _library()
    scaffolds = scaffolds_of(smiles)
    n = len(scaffolds)
    big = [i for i, s in enumerate(scaffolds) if s == "c1ccccc1"]
    assert len(big) == 20 and len(scaffold_sets(scaffolds)) > 20

    first = balanced_split(scaffolds, [0.8, 0.1, 0.1], seed=1)
    assert first == balanced_split(scaffolds, [0.8, 0.1, 0.1], seed=1)  # deterministic per seed
    others = [balanced_split(scaffolds, [0.8, 0.1, 0.1], seed=s) for s in (2, 3, 4)]
    assert any(o != first for o in others)  # the seed changes the split

    for train, valid, test in [first, *others]:
        assert sorted(train + valid + test) == list(range(n))
        assert len(train) <= 0.8 * n and len(valid) <= 0.1 * n  # chemprop fills up to the sizes
        assert len(train) >= 0.8 * n - 2 and len(valid) >= 0.1 * n - 2  # small sets (2 each) fill the gaps
        owners = [{scaffolds[i] for i in part} for part in (train, valid, test)]
        assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
        assert set(big) <= set(train)  # bigger than half the valid size: placed first, so in train
