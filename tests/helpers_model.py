"""Tiny model configurations and batches shared by the core-library tests and the step benchmark."""

from __future__ import annotations

import torch

from sma.config import MaskingConfig, ModelConfig
from sma.inputs import Batch, encode_batch


def tiny_perceiver(max_len: int = 48, **kw) -> ModelConfig:
    base = dict(modality="bytes", encoder="perceiver", max_len=max_len, d_embed=32, num_latents=12, d_latent=32,
                num_layers=2, num_heads=4, cross_heads=4, cross_qk_dim=16, decoder_dim=32, decoder_heads=4)
    return ModelConfig(**{**base, **kw})


def tiny_transformer(max_len: int = 28, **kw) -> ModelConfig:
    base = dict(modality="continuous", d_raw=1, encoder="transformer", max_len=max_len, d_embed=32,
                num_layers=2, num_heads=4, decoder_dim=32, decoder_heads=4)
    return ModelConfig(**{**base, **kw})


TEXT_MASKING = MaskingConfig(ratio=0.25, num_per_query=2.0, head_aggregation="mean")
HIGGS_MASKING = MaskingConfig(ratio=0.2, num_per_query=3.0, head_aggregation="random_mix", mask_self=True)

SENTENCES = [
    "Self-guided masking picks tokens from attention.",
    "Proteins are strings of amino acids.",
    "short",
    "The quick brown fox jumps over the lazy dog again and again.",
]


def text_batch(max_len: int = 48) -> Batch:
    """Four byte sequences of uneven lengths, right-padded to max_len."""
    return encode_batch(SENTENCES, max_len=max_len, truncate=True)


def table_batch(n: int = 28, batch: int = 6, seed: int = 0, uneven: bool = True) -> Batch:
    """Continuous (B, n, 1) rows; with ``uneven`` the later rows are padded to different lengths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, 1, generator=g)
    valid = torch.ones(batch, n, dtype=torch.bool)
    if uneven:
        for i in range(1, batch):
            valid[i, n - 3 * i:] = False
    return Batch(x * valid[..., None], valid)
