"""Mask selection follows the SMA paper, batched, and equals the reference formulation."""

from __future__ import annotations

import pytest
import torch

from reference import reference_mask
from sma.masking import (curriculum_schedule, draw_queries, num_chosen_queries, num_to_mask, random_mask,
                         selection_scores, head_weights_for, self_guided_mask, span_mask, word_mask)
from sma.inputs import encode_batch


def _qkv(b=5, h=4, lq=16, n=40, d=8, seed=0, uneven=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g)
    k = torch.randn(b, h, n, d, generator=g)
    valid = torch.ones(b, n, dtype=torch.bool)
    if uneven:
        lengths = torch.randint(n // 3, n + 1, (b,), generator=g)
        valid = torch.arange(n)[None, :] < lengths[:, None]
    return q, k, valid


def _chosen_among(candidates: torch.Tensor, m: torch.Tensor, seed: int) -> torch.Tensor:
    ids = torch.arange(candidates.shape[1])
    return draw_queries(candidates, m, ids, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("aggregation", ["mean", "random_mix"])
def test_cross_attention_mask_equals_reference(aggregation):
    q, k, valid = _qkv()
    ratio, npq = 0.3, 2.0
    m = num_chosen_queries(torch.full((q.shape[0],), k.shape[2]), ratio, npq).clamp(max=q.shape[2])
    chosen = _chosen_among(torch.ones(q.shape[0], q.shape[2], dtype=torch.bool), m, seed=1)
    fast = self_guided_mask(q, k, valid, ratio=ratio, num_per_query=npq, head_aggregation=aggregation,
                            chosen=chosen, generator=torch.Generator().manual_seed(7))
    ref = reference_mask(q, k, valid, ratio=ratio, num_per_query=npq, head_aggregation=aggregation,
                         mask_self=False, chosen=chosen, generator=torch.Generator().manual_seed(7))
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("aggregation", ["mean", "random_mix"])
@pytest.mark.parametrize("mask_self", [False, True])
def test_self_attention_mask_equals_reference(aggregation, mask_self):
    q, k, valid = _qkv(lq=40, n=40, seed=3)
    ratio, npq = 0.2, 3.0
    chosen = _chosen_among(valid, num_chosen_queries(valid.sum(1), ratio, npq), seed=2)
    assert (chosen >= 0).sum(1).tolist() == num_chosen_queries(valid.sum(1), ratio, npq).tolist()
    kw = dict(ratio=ratio, num_per_query=npq, head_aggregation=aggregation, mask_self=mask_self, chosen=chosen)
    fast = self_guided_mask(q, k, valid, query_valid=valid, generator=torch.Generator().manual_seed(5), **kw)
    ref = reference_mask(q, k, valid, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(fast, ref)


def test_chunked_scores_equal_single_pass():
    q, k, valid = _qkv(b=3, h=2, lq=10, n=257, seed=4)
    chosen = _chosen_among(torch.ones(3, 10, dtype=torch.bool), torch.tensor([4, 2, 3]), seed=0)
    w = head_weights_for(chosen, 2, "mean", torch.arange(10), None)
    whole = selection_scores(q, k, valid, chosen, w)
    chunked = selection_scores(q, k, valid, chosen, w, chunk_elems=3 * 2 * 4 * 16)  # 16 keys per chunk
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    # Each chosen query contributes a probability row summing to one.
    torch.testing.assert_close(whole.sum(1), (chosen >= 0).sum(1).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("query_valid", [False, True])
def test_masked_count_is_round_r_n_valid_and_never_padding(query_valid):
    q, k, valid = _qkv(b=8, lq=40, n=40, seed=6)
    for ratio in (0.15, 0.3, 0.5):
        mask = self_guided_mask(q, k, valid, ratio=ratio, num_per_query=3.0,
                                query_valid=valid if query_valid else None)
        expected = [round(ratio * int(v)) for v in valid.sum(1)]
        assert mask.sum(1).tolist() == expected
        assert not (mask & ~valid).any()


def test_masked_count_keeps_one_visible_token():
    valid = torch.tensor([[True, False, False, False], [True, True, False, False]])
    k = num_to_mask(valid.sum(1), 0.75)
    assert k.tolist() == [0, 1]  # round(0.75) = 1 would mask the only token of the first sample


def test_chosen_count_has_the_max_one_guard():
    assert num_chosen_queries(torch.tensor([4, 28, 1024]), 0.15, 4.0).tolist() == [1, 1, 38]


def test_mask_self_forces_the_chosen_queries_tokens():
    q, k, valid = _qkv(b=6, lq=30, n=30, seed=8)
    mask, chosen = self_guided_mask(q, k, valid, ratio=0.3, num_per_query=1.5, mask_self=True, query_valid=valid,
                                    return_chosen=True, generator=torch.Generator().manual_seed(0))
    for b in range(6):
        rows = chosen[b][chosen[b] >= 0]
        assert mask[b, rows].all()
        assert valid[b, rows].all()


def test_curriculum_at_start_is_random_masking():
    q, k, valid = _qkv(b=6, lq=12, n=40, seed=9)
    s = curriculum_schedule(0.0, 0.25)
    assert s == 1.0
    curriculum = self_guided_mask(q, k, valid, ratio=0.2, num_per_query=3.0, guided_share=1.0 - 1.0 * s,
                                  generator=torch.Generator().manual_seed(11))
    plain = random_mask(valid, num_to_mask(valid.sum(1), 0.2), generator=torch.Generator().manual_seed(11))
    assert torch.equal(curriculum, plain)


def test_curriculum_schedule_is_a_cosine_from_one_to_zero():
    assert curriculum_schedule(0.0, 0.25) == 1.0
    assert curriculum_schedule(0.125, 0.25) == pytest.approx(0.5)
    assert curriculum_schedule(0.25, 0.25) == pytest.approx(0.0)
    assert curriculum_schedule(0.9, 0.25) == 0.0
    assert curriculum_schedule(0.5, 0.0) == 0.0


def test_mid_curriculum_mixes_guided_top_k_and_random_fill():
    q, k, valid = _qkv(b=4, lq=12, n=40, seed=10, uneven=False)
    chosen = _chosen_among(torch.ones(4, 12, dtype=torch.bool), torch.full((4,), 3), seed=0)
    full = self_guided_mask(q, k, valid, ratio=0.4, num_per_query=3.0, chosen=chosen)
    half = self_guided_mask(q, k, valid, ratio=0.4, num_per_query=3.0, chosen=chosen, guided_share=0.5)
    assert half.sum(1).tolist() == full.sum(1).tolist() == [16] * 4
    guided_half = self_guided_mask(q, k, valid, ratio=0.2, num_per_query=3.0, chosen=chosen)
    # The guided part is the top round(0.4 * 0.5 * 40) = 8 tokens, which are also in the full top-16.
    assert (guided_half <= half).all() and (guided_half <= full).all()


def test_selection_carries_no_gradient():
    q, k, valid = _qkv(b=2, lq=8, n=16)
    q.requires_grad_(True)
    mask = self_guided_mask(q, k, valid, ratio=0.3, num_per_query=2.0)
    assert not mask.requires_grad and mask.dtype == torch.bool


def test_span_and_word_baselines_mask_exact_counts_inside_valid():
    batch = encode_batch(["the cat sat on the mat", "a much longer sentence with many words in it"], max_len=64)
    g = torch.Generator().manual_seed(0)
    expected = [round(0.3 * int(v)) for v in batch.valid.sum(1)]
    span = span_mask(batch.valid, 0.3, 3.0, generator=g)
    word = word_mask(batch.inputs, batch.valid, 0.3, generator=g)
    for m in (span, word):
        assert m.sum(1).tolist() == expected
        assert not (m & ~batch.valid).any()
    # Word masking takes whole words: at most one word of each sample is cut.
    text = batch.inputs[1]
    spaces = (text == ord(" ") + 6) | ~batch.valid[1]
    words = torch.cumsum(spaces.long(), 0)
    partial = {int(w) for w in words[word[1]].unique() if not word[1][(words == w) & ~spaces].all()}
    assert len(partial) <= 1


def test_bad_arguments_raise():
    q, k, valid = _qkv(b=2, lq=8, n=16)
    with pytest.raises(ValueError, match="valid has shape"):
        self_guided_mask(q, k, valid[:, :5], ratio=0.3, num_per_query=2.0)
    with pytest.raises(ValueError, match="mask_self"):
        self_guided_mask(q, k, valid, ratio=0.3, num_per_query=2.0, mask_self=True)
    with pytest.raises(ValueError, match="head_aggregation"):
        self_guided_mask(q, k, valid, ratio=0.3, num_per_query=2.0, head_aggregation="max")
