"""The reference formulation of SMA, kept in the tests only: what the authors' release computes.

Full ``(B, H, q, n)`` first-layer logits and probabilities, head aggregation over every query row,
per-sample Python loops for the chosen queries and the top-k, additive ``-inf`` masking of the first
layer with explicit (eager) softmax attention, and decoding of every position. It shares the model's
parameters, so its loss and gradients can be compared with the fast path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sma.attention import Block, MultiHeadAttention
from sma.inputs import Batch
from sma.model import SMAPretrainModel


def reference_random_heads(query_ids: torch.Tensor, batch: int, heads: int,
                           generator: torch.Generator | None) -> torch.Tensor:
    """The release's random_mix: one head per query row, (B, Lq), drawn per row identity."""
    u = torch.rand(batch, int(query_ids.max()) + 1, generator=generator)[:, query_ids]
    return (u * heads).long().clamp(max=heads - 1)


def reference_mask(q, k, valid, *, ratio, num_per_query, head_aggregation, mask_self, chosen,
                   generator=None, query_ids=None):
    """q: (B, H, Lq, d), k: (B, H, n, d), valid: (B, n), chosen: (B, m) padded with -1 -> (B, n) mask."""
    b, h, lq, d = q.shape
    logits = (q @ k.transpose(-1, -2)) / d ** 0.5  # (B, H, Lq, n): every query row
    logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = logits.softmax(-1)
    if head_aggregation == "mean":
        agg = probs.mean(1)  # (B, Lq, n)
    else:
        qids = torch.arange(lq) if query_ids is None else query_ids
        heads = reference_random_heads(qids, b, h, generator)
        agg = torch.stack([probs[i, heads[i], torch.arange(lq)] for i in range(b)])
    mask = torch.zeros_like(valid)
    for i in range(b):
        rows = [int(c) for c in chosen[i] if c >= 0]
        scores = agg[i, rows].sum(0)
        if mask_self:
            for r in rows:
                scores[r] += len(rows) + 1
        n_valid = int(valid[i].sum())
        k_i = min(round(ratio * n_valid), n_valid - 1)
        scores = scores.masked_fill(~valid[i], float("-inf"))
        top = torch.argsort(scores.float(), descending=True, stable=True)[:k_i]
        mask[i, top] = True
    return mask


def eager_attention(attn: MultiHeadAttention, x_q, x_kv, key_ok):
    """Materialized softmax attention with an additive -inf mask. key_ok: (B, Lk) bool or None."""
    q, k, v = attn.project_q(x_q), attn.project_k(x_kv), attn.project_v(x_kv)
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if key_ok is not None:
        logits = logits + torch.zeros_like(key_ok, dtype=logits.dtype).masked_fill(
            ~key_ok, float("-inf"))[:, None, None, :]
    out = logits.softmax(-1) @ v
    bsz, _, lq, _ = out.shape
    return attn.to_out(out.transpose(1, 2).reshape(bsz, lq, -1))


def eager_block(block: Block, x, kv=None, key_ok=None):
    h = block.norm_q(x)
    kv_n = h if kv is None else block.normalize_kv(kv)
    return block.finish(x, eager_attention(block.attn, h, kv_n, key_ok))


def reference_loss(model: SMAPretrainModel, inputs, valid, mask):
    """Loss of the additive-mask formulation given a mask (B, n): every position decoded, the loss
    taken over masked positions only."""
    cfg = model.cfg
    x = model.backbone.embed(inputs)
    visible = valid & ~mask
    enc = model.backbone.encoder
    if cfg.encoder == "perceiver":
        z = enc.latents.expand(x.shape[0], -1, -1)
        z = eager_block(enc.cross, z, x, visible)
        for layer in enc.layers:
            z = eager_block(layer, z)
        states, states_ok = enc.norm(z), None
    else:
        z = x
        for layer in enc.layers:  # masked rows are computed but never seen as keys: equal to dropping them
            z = eager_block(layer, z, None, visible)
        states, states_ok = enc.norm(z), visible
    n = inputs.shape[1]
    table = model.backbone.embed.position if model.decoder_position is None else model.decoder_position
    queries = table[:n].expand(inputs.shape[0], -1, -1)
    if model.mask_vector is not None:
        queries = queries + model.mask_vector
    dec = model.decoder
    pred = dec.out(dec.norm(eager_block(dec.block, queries, states, states_ok)))  # (B, n, out): all positions
    if model.discrete:
        losses = [F.cross_entropy(pred[i][mask[i]], inputs[i][mask[i]], reduction="sum") for i in range(len(pred))]
        return torch.stack(losses).sum() / mask.sum().clamp(min=1)
    target = inputs.float()
    if cfg.standardize_targets:
        target = model._standardize(target, Batch(inputs, valid))
    sq = [((pred[i][mask[i]] - target[i][mask[i]]) ** 2).sum() for i in range(len(pred))]
    return torch.stack(sq).sum() / (mask.sum().clamp(min=1) * pred.shape[-1])


def reference_first_layer_qk(model: SMAPretrainModel, inputs):
    """First-layer q (B, H, Lq, d) and k (B, H, n, d), as the release computes them."""
    x = model.backbone.embed(inputs)
    enc = model.backbone.encoder
    if model.cfg.encoder == "perceiver":
        blk = enc.cross
        h = blk.norm_q(enc.latents.expand(x.shape[0], -1, -1))
        return blk.attn.project_q(h), blk.attn.project_k(blk.normalize_kv(x))
    blk = enc.layers[0]
    h = blk.norm_q(x)
    return blk.attn.project_q(h), blk.attn.project_k(h)
