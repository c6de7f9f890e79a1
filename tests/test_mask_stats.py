"""Mask diagnostics on hand-made masks: exact values."""

from __future__ import annotations

import math

import pytest
import torch

from sma.inputs import NUM_SPECIAL, SEP, encode_batch
from sma.mask_stats import (BYTE_CLASSES, MaskTally, byte_classes, byte_tv, class_shares, jaccard, position_entropy,
                            random_overlap, top_share)


def _counts(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_uniform_masks_have_entropy_one_and_collapsed_masks_zero():
    valid = torch.full((4,), 10.0)
    assert position_entropy(torch.full((4,), 3.0), valid) == pytest.approx(1.0)
    assert position_entropy(torch.tensor([5.0, 0, 0, 0]), valid) == pytest.approx(0.0)
    # two of four positions equally: log 2 / log 4
    assert position_entropy(torch.tensor([2.0, 2, 0, 0]), valid) == pytest.approx(0.5)


def test_position_frequency_is_per_valid_occurrence_and_ignores_never_valid_positions():
    # Position 1 was valid half as often and masked half as often: the same rate as position 0.
    # Position 2 never held a token (padding): it does not count as a rarely masked position.
    masked, valid = torch.tensor([4.0, 2, 0]), torch.tensor([8.0, 4, 0])
    assert position_entropy(masked, valid) == pytest.approx(1.0)
    assert top_share(masked, valid, fraction=0.5) == pytest.approx(0.5)


def test_top_share_of_the_most_masked_positions():
    # 20 positions, 15% = 3 positions hold 3 x 5 of 3 x 5 + 17 x 1 masks.
    masked = torch.tensor([5.0] * 3 + [1.0] * 17)
    valid = torch.full((20,), 10.0)
    assert top_share(masked, valid) == pytest.approx(15 / 32)
    assert top_share(torch.ones(20), valid) == pytest.approx(3 / 20)
    assert top_share(torch.tensor([1.0] + [0.0] * 19), valid) == pytest.approx(1.0)


def test_jaccard_overlap_of_two_draws():
    a = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    overlap, defined = jaccard(a, b)
    assert overlap[:2].tolist() == [pytest.approx(1 / 3), 1.0]
    assert defined.tolist() == [True, True, False]
    assert random_overlap(0.15) == pytest.approx(0.15 / 1.85)


def test_byte_classes_cover_letters_digits_whitespace_punctuation_and_the_rest():
    ids = encode_batch(["aZ9 \t.,\u00e9"], max_len=16).inputs
    names = [BYTE_CLASSES[c] for c in byte_classes(ids)[0].tolist()]
    # é is two UTF-8 bytes (non-ASCII: other); SEP and padding are special ids: other
    assert names[:10] == ["letters", "letters", "digits", "whitespace", "whitespace", "punctuation",
                          "punctuation", "other", "other", "other"]
    assert ids[0, 9] == SEP and byte_classes(torch.tensor([[ord("!") + NUM_SPECIAL]])).item() == 3


def test_class_shares_are_one_without_preference_and_skip_absent_classes():
    valid = _counts(60, 20, 20, 0, 0)
    assert class_shares(_counts(6, 2, 2, 0, 0), valid) == pytest.approx(
        {"letters": 1.0, "digits": 1.0, "whitespace": 1.0})
    # every mask on letters: 1 / 0.6
    assert class_shares(_counts(10, 0, 0, 0, 0), valid) == pytest.approx(
        {"letters": 1 / 0.6, "digits": 0.0, "whitespace": 0.0})


def test_tally_sums_batches_in_a_fixed_position_frame():
    tally = MaskTally(max_len=6)
    ids = encode_batch(["ab1", "a"], max_len=4).inputs  # (2, 4): "ab1" SEP / "a" SEP PAD PAD
    valid = ids != 0
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    tally.add(mask, valid, ids)
    tally.add(mask[:, :3], valid[:, :3], ids[:, :3])  # a shorter batch lands on the same positions
    assert tally.pos_masked.tolist() == [2, 2, 2, 0, 0, 0]
    assert tally.pos_valid.tolist() == [4, 4, 2, 1, 0, 0]
    masked, valid_classes = tally.class_counts()
    assert masked.tolist() == [2, 2, 0, 0, 2]  # a, 1, SEP
    assert valid_classes.tolist() == [6, 2, 0, 0, 3]
    a, one = ord("a") + NUM_SPECIAL, ord("1") + NUM_SPECIAL
    assert tally.byte_masked[[a, one, SEP]].tolist() == [2, 2, 2] and tally.byte_masked.sum() == 6
    tally.add_overlap(mask, mask)
    summary = tally.summary("_x")
    assert summary["mask_draw_overlap_x"] == 1.0
    # rates 0.5, 0.5, 1.0, 0 over the four positions ever valid
    p = torch.tensor([0.25, 0.25, 0.5])
    assert summary["mask_position_entropy_x"] == pytest.approx(float(-(p * p.log()).sum() / math.log(4)))
    assert summary["mask_top15_share_x"] == pytest.approx(0.5)  # round(0.15 * 4) = 1 position: 1.0 of 2.0
    assert set(summary) >= {"mask_share_letters_x", "mask_share_digits_x", "mask_share_other_x"}
    assert summary["mask_share_letters_x"] == pytest.approx((2 / 6) / (6 / 11))
    # masked a, 1, SEP: 1/3 each; valid a 4/11, b 2/11, 1 2/11, SEP 3/11
    assert summary["mask_byte_tv_x"] == pytest.approx(0.5 * (1 / 33 + 2 / 11 + 5 / 33 + 2 / 33))
    assert "mask_share_punctuation_x" not in summary and "mask_share_whitespace_x" not in summary


def test_byte_tv_is_zero_without_preference_and_one_for_disjoint_bytes():
    valid = torch.tensor([0, 0, 10.0, 30.0, 0])
    assert byte_tv(torch.tensor([0, 0, 1.0, 3.0, 0]), valid) == pytest.approx(0.0)
    assert byte_tv(torch.tensor([0, 0, 4.0, 0, 0]), valid) == pytest.approx(0.75)
    assert byte_tv(torch.tensor([0, 0, 0, 0, 2.0]), valid) == pytest.approx(1.0)


def test_tally_round_trips_through_its_vector():
    tally = MaskTally(max_len=3)
    tally.add(torch.tensor([[True, False, False]]), torch.ones(1, 3, dtype=torch.bool))
    copy = MaskTally(max_len=3).load(tally.vector * 2)
    assert copy.pos_masked.tolist() == [2, 0, 0] and copy.pos_valid.tolist() == [2, 2, 2]
