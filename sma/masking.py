"""Mask selection (the SMA paper): self-guided masking from the first layer's attention,
the random -> guided curriculum, and the random / span / word / patch baselines.

Conventions: ``valid`` is ``(B, n)`` bool (True = real token); returned masks are ``(B, n)`` bool with
True = masked. Nothing here is differentiable: selection runs under ``torch.no_grad``.

Randomness is drawn per *position identity* (``ids``, default ``0..n-1``) rather than per index, so a
model whose inputs and per-position parameters are permuted together (the SMA paper) draws
exactly the same random numbers for the same tokens.
"""

from __future__ import annotations

import math

import torch

from sma.inputs import NUM_SPECIAL

# Bytes that separate words for the word-masking baseline: space, tab, newline, carriage return.
_WHITESPACE_IDS = tuple(b + NUM_SPECIAL for b in b" \t\n\r")


def num_to_mask(n_valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """``k_b = round(r * n_valid[b])``, kept below ``n_valid[b]`` so every sample keeps one visible
    token (otherwise the encoder would attend over an empty set). n_valid: (B,) -> (B,) long."""
    k = torch.round(n_valid.to(torch.float64) * ratio).long()
    return torch.minimum(k, (n_valid - 1).clamp(min=0))


def num_chosen_queries(n_candidates: torch.Tensor, ratio: float, num_per_query: float) -> torch.Tensor:
    """``m_b = max(1, round(N * r / num_per_query))`` (the release lacks the ``max(1, .)`` guard and
    silently masks nothing when the rounding gives 0). n_candidates: (B,) -> (B,) long."""
    return torch.round(n_candidates.to(torch.float64) * ratio / num_per_query).long().clamp(min=1)


def curriculum_schedule(progress: float, fraction: float) -> float:
    """``s`` going from 1 to 0 by a cosine over the first ``fraction`` of training (0 afterwards).
    ``fraction = 0`` means no curriculum (``s = 0``)."""
    if fraction <= 0:
        return 0.0
    t = min(max(progress / fraction, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _uniform(ids: torch.Tensor, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform noise (B, len(ids)) keyed by position identity: drawn for identities 0..max(ids) and
    gathered, so the same identity gets the same number wherever it sits."""
    table = torch.rand(batch, int(ids.max()) + 1, device=ids.device, generator=generator)
    return table[:, ids]


def rank_desc(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row, 0 = largest; ties broken by lower index. (B, n) -> (B, n)."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def top_k_mask(scores: torch.Tensor, k: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Batched per-sample top-k: the ``k[b]`` highest-scoring eligible entries of each row.
    scores: (B, n) float, k: (B,) long, eligible: (B, n) bool -> (B, n) bool."""
    s = scores.masked_fill(~eligible, float("-inf"))
    return (rank_desc(s) < k[:, None]) & eligible


def draw_queries(candidates: torch.Tensor, m: torch.Tensor, ids: torch.Tensor,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Draw ``m[b]`` distinct queries uniformly among the candidate rows of each sample.

    candidates: (B, Lq) bool, m: (B,) long, ids: (Lq,) position identities of the rows.
    Returns (B, max m) long row indices, padded with -1.
    """
    noise = _uniform(ids, candidates.shape[0], generator).masked_fill(~candidates, -1.0)
    m = torch.minimum(m, candidates.sum(1))
    width = int(m.max())
    chosen = torch.argsort(noise, dim=1, descending=True, stable=True)[:, :width]
    keep = torch.arange(width, device=m.device)[None, :] < m[:, None]
    return chosen.masked_fill(~keep, -1)


def _chunk_logits(q_r: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Logits of the chosen queries against keys s:e, padding keys at -inf, in one fused
    ``baddbmm``. q_r: (B*H, m, d), k: (B*H, n, d), bias: (B*H, 1, n) -> (B*H, m, e - s)."""
    return torch.baddbmm(bias[..., s:e], q_r, k[:, s:e].transpose(-1, -2))


@torch.no_grad()
def selection_scores(
    q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, chosen: torch.Tensor, head_weights: torch.Tensor,
    *, chunk_elems: int = 1 << 24,
) -> torch.Tensor:
    """Summed attention each token receives from the chosen queries, without materializing the full
    ``(B, H, Lq, n)`` attention: only the chosen rows are computed, in chunks over ``n``.

    q: (B, H, Lq, d), k: (B, H, n, d), valid: (B, n), chosen: (B, m) (-1 = none),
    head_weights: (B, H, m) weight of each head for each chosen query (already zero for -1 rows).
    Returns scores (B, n) float32 with ``s[b, j] = sum_i sum_h w[b, h, i] * softmax_j(q_i . k_j)``.
    """
    b, h, _, d = q.shape
    n = k.shape[2]
    m = chosen.shape[1]
    idx = chosen.clamp(min=0)[:, None, :, None].expand(b, h, m, d)
    q_r = (q.gather(2, idx).float() * (d ** -0.5)).reshape(b * h, m, d)
    k = k.float().contiguous().view(b * h, n, d)
    bias = torch.zeros(b, h, 1, n, device=q.device)
    bias = bias.masked_fill_(~valid[:, None, None, :], float("-inf")).view(b * h, 1, n)
    chunk = max(1, min(n, chunk_elems // max(1, b * h * m)))
    if chunk >= n:
        probs = torch.softmax(_chunk_logits(q_r, k, bias, 0, n), dim=-1)  # (B*H, m, n)
        return torch.einsum("bhm,bhmn->bn", head_weights, probs.view(b, h, m, n))
    # Two passes so memory stays O(B*H*m*chunk): the log-normalizer first, then the weighted sums.
    lse = torch.full((b * h, m, 1), float("-inf"), device=q.device)
    for s in range(0, n, chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(_chunk_logits(q_r, k, bias, s, s + chunk), -1, keepdim=True))
    scores = torch.empty(b, n, device=q.device)
    for s in range(0, n, chunk):
        probs = _chunk_logits(q_r, k, bias, s, s + chunk).sub_(lse).exp_()
        scores[:, s:s + chunk] = torch.einsum("bhm,bhmn->bn", head_weights, probs.view(b, h, m, -1))
    return scores


def head_weights_for(chosen: torch.Tensor, heads: int, aggregation: str, query_ids: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Per-head weights (B, H, m) of each chosen query: ``1/H`` each for ``mean``; for ``random_mix``
    a one-hot on one head drawn at random for every query row (drawn for all rows, by identity, so the
    draw does not depend on which rows were chosen). Rows padded with -1 get zero weight."""
    b, m = chosen.shape
    present = (chosen >= 0).float()[:, None, :]
    if aggregation == "mean":
        return present.expand(b, heads, m) / heads
    if aggregation != "random_mix":
        raise ValueError(f"head_aggregation must be 'mean' or 'random_mix', got {aggregation!r}")
    per_row = (_uniform(query_ids, b, generator) * heads).long().clamp(max=heads - 1)  # (B, Lq)
    drawn = per_row.gather(1, chosen.clamp(min=0))  # (B, m)
    one_hot = torch.nn.functional.one_hot(drawn, heads).permute(0, 2, 1).float()  # (B, H, m)
    return one_hot * present


@torch.no_grad()
def self_guided_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    *,
    ratio: float,
    num_per_query: float,
    head_aggregation: str = "mean",
    mask_self: bool = False,
    chosen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    query_valid: torch.Tensor | None = None,
    guided_share: float = 1.0,
    ids: torch.Tensor | None = None,
    return_chosen: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Choose the mask from first-layer attention (the SMA paper).

    q: (B, H, Lq, d) first-layer queries (latents, or the tokens' own queries), k: (B, H, n, d)
    first-layer keys, valid: (B, n) bool. Returns mask (B, n) bool, True = masked.

    - ``query_valid`` (B, Lq): given for the self-attention encoder, where queries are tokens: chosen
      queries are drawn among valid tokens and ``N = n_valid[b]``. Absent (cross-attention): all ``Lq``
      latents are candidates and ``N`` is the padded length ``n``.
    - ``chosen`` (B, m) long, padded with -1: use these query rows instead of drawing them.
    - ``mask_self`` forces each chosen query's own token into the mask (self-attention only).
    - ``guided_share = 1 - r0 * s`` of the curriculum: ``round(r * guided_share * n_valid)`` tokens come
      from the guided top-k, the rest up to ``k_b`` uniformly from the remaining valid tokens.
    - ``ids`` (n,): position identities used to key the random draws (default ``arange(n)``).
    """
    bsz, heads, lq, _ = q.shape
    n = k.shape[2]
    if valid.shape != (bsz, n):
        raise ValueError(f"valid has shape {tuple(valid.shape)}, expected {(bsz, n)}")
    if mask_self and query_valid is None:
        raise ValueError("mask_self needs query_valid: it only applies when the queries are the tokens")
    ids = torch.arange(n, device=q.device) if ids is None else ids
    query_ids = ids if query_valid is not None else torch.arange(lq, device=q.device)
    n_valid = valid.sum(1)
    k_b = num_to_mask(n_valid, ratio)
    g_b = torch.minimum(num_to_mask(n_valid, ratio * guided_share), k_b)

    guided = torch.zeros_like(valid)
    if guided_share > 0:
        if chosen is None:
            if query_valid is None:
                candidates = torch.ones(bsz, lq, dtype=torch.bool, device=q.device)
                n_cand = torch.full((bsz,), n, device=q.device)
            else:
                candidates, n_cand = query_valid, query_valid.sum(1)
            chosen = draw_queries(candidates, num_chosen_queries(n_cand, ratio, num_per_query), query_ids,
                                  generator)
        weights = head_weights_for(chosen, heads, head_aggregation, query_ids, generator)
        scores = selection_scores(q, k, valid, chosen, weights)
        if mask_self:
            # Above any attainable sum: each chosen query contributes at most 1 in total.
            forced = (chosen.shape[1] + 1.0) * (chosen >= 0).float()
            scores = scores.scatter_add(1, chosen.clamp(min=0), forced)
        guided = top_k_mask(scores, g_b, valid)
    elif chosen is None:
        chosen = torch.full((bsz, 0), -1, dtype=torch.long, device=q.device)

    mask = guided
    if bool((g_b < k_b).any()):
        mask = guided | random_mask(valid & ~guided, k_b - g_b, ids=ids, generator=generator)
    return (mask, chosen) if return_chosen else mask


def random_mask(eligible: torch.Tensor, k: torch.Tensor, *, ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``k[b]`` tokens drawn uniformly among the eligible ones. eligible: (B, n), k: (B,) -> (B, n)."""
    n = eligible.shape[1]
    ids = torch.arange(n, device=eligible.device) if ids is None else ids
    return top_k_mask(_uniform(ids, eligible.shape[0], generator), k, eligible)


def span_mask(valid: torch.Tensor, ratio: float, span_length: float, *,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Baseline: contiguous spans of ``round(span_length)`` tokens (adjacency allowed here only).

    Span starts are drawn with probability ``r / L`` per valid token and widened to ``L`` tokens; the
    count is then made exactly ``k_b`` by ranking covered tokens first (in random order), so spans are
    cut or topped up with single tokens only at the margin. valid: (B, n) -> (B, n).
    """
    length = max(1, round(span_length))
    noise = torch.rand(valid.shape, device=valid.device, generator=generator)
    starts = ((noise < ratio / length) & valid).float()
    covered = torch.nn.functional.max_pool1d(
        torch.nn.functional.pad(starts[:, None], (length - 1, 0)), length, stride=1
    )[:, 0] > 0
    tie = torch.rand(valid.shape, device=valid.device, generator=generator)
    return top_k_mask(covered.float() + tie * 0.5, num_to_mask(valid.sum(1), ratio), valid)


def word_mask(ids: torch.Tensor, valid: torch.Tensor, ratio: float, *,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Baseline for text: whole whitespace-delimited words in random order until ``k_b`` tokens are
    masked (the last word may be cut). ids: (B, n) byte ids, valid: (B, n) -> (B, n)."""
    is_space = torch.zeros_like(valid)
    for w in _WHITESPACE_IDS:
        is_space |= ids == w
    word_index = torch.cumsum(is_space.long(), dim=1)  # tokens of one word share an index
    word_noise = torch.rand(valid.shape, device=valid.device, generator=generator).gather(1, word_index)
    # Rank by word (random), then by position inside the word so a cut keeps a word's prefix.
    pos = torch.arange(valid.shape[1], device=valid.device, dtype=torch.float32) / (valid.shape[1] + 1)
    score = word_noise - pos * 1e-6 - is_space.float()
    return top_k_mask(score, num_to_mask(valid.sum(1), ratio), valid)


def patch_mask(valid: torch.Tensor, ratio: float, grid: tuple[int, int] | list[int], patch_size: int, *,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Baseline for images (MAE's patches, over pixel tokens): square ``patch_size`` patches tiling the
    ``grid = (H, W)`` from the top-left (the patches on the bottom and right edges are smaller when H or W
    is not a multiple of ``patch_size``). Tokens are pixels in row-major order. Each sample takes its
    patches in a random order, whole, until ``k_b = round(r * n_valid)`` tokens are masked; the last
    patch taken is cut when ``k_b`` is not a sum of whole patches, and keeps its first pixels in row-major
    order. The only function that knows the grid. valid: (B, H*W) -> (B, H*W)."""
    b, n = valid.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"patch masking: {n} tokens, but the grid {h} x {w} has {h * w} pixels")
    rows = torch.arange(h, device=valid.device) // patch_size
    cols = torch.arange(w, device=valid.device) // patch_size
    patch = (rows[:, None] * (-(-w // patch_size)) + cols[None, :]).reshape(-1)  # (n,) patch of each pixel
    order = rank_desc(torch.rand(b, int(patch.max()) + 1, device=valid.device, generator=generator))
    # A distinct rank per patch; ties between a patch's pixels go to the lower index (row-major order).
    score = -order[:, patch].float()
    return top_k_mask(score, num_to_mask(valid.sum(1), ratio), valid)
