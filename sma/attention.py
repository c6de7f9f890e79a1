"""The one attention implementation (fused SDPA) and the pre-LayerNorm block built on it.

Every attention in the library - Perceiver cross-attention, latent and token self-attention, the
decoder and the fine-tune readout - goes through :func:`attend`, so on a GPU all of them get
flash / memory-efficient kernels from ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention.

    q: (B, H, Lq, d), k: (B, H, Lk, d), v: (B, H, Lk, dv), key_valid: (B, Lk) bool or None
    (True = attend; every row needs at least one valid key). Returns (B, H, Lq, dv).
    """
    mask = None if key_valid is None else key_valid[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k and v widths (Perceiver IO uses a narrow q/k).

    The projections are exposed one by one because the first encoder layer computes q and k, chooses
    the mask from them, and only then attends over the visible keys.
    """

    def __init__(self, d_q: int, d_kv: int, *, heads: int, qk_dim: int, v_dim: int, d_out: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if qk_dim % heads or v_dim % heads:
            raise ValueError(f"qk_dim={qk_dim} and v_dim={v_dim} must be divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(d_q, qk_dim)
        self.to_k = nn.Linear(d_kv, qk_dim)
        self.to_v = nn.Linear(d_kv, v_dim)
        self.to_out = nn.Linear(v_dim, d_out)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H*d) -> (B, H, L, d)"""
        b, n, _ = x.shape
        return x.view(b, n, self.heads, x.shape[-1] // self.heads).transpose(1, 2)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Lq, d_q) -> (B, H, Lq, qk_dim / H)"""
        return self._split(self.to_q(x))

    def project_k(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Lk, d_kv) -> (B, H, Lk, qk_dim / H)"""
        return self._split(self.to_k(x))

    def project_v(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Lk, d_kv) -> (B, H, Lk, v_dim / H)"""
        return self._split(self.to_v(x))

    def combine(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_valid: torch.Tensor | None) -> torch.Tensor:
        """Attend with projected heads and merge them: returns (B, Lq, d_out)."""
        out = attend(q, k, v, key_valid, self.dropout if self.training else 0.0)
        b, _, lq, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, lq, self.to_out.in_features))

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """x_q: (B, Lq, d_q), x_kv: (B, Lk, d_kv), key_valid: (B, Lk) -> (B, Lq, d_out)"""
        return self.combine(self.project_q(x_q), self.project_k(x_kv), self.project_v(x_kv), key_valid)


class MLP(nn.Sequential):
    def __init__(self, d: int, ratio: float, dropout: float = 0.0) -> None:
        hidden = int(d * ratio)
        super().__init__(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d), nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-LN block: ``h = h + Attn(LN(h), LN(kv)); h = h + MLP(LN(h))``.

    Self-attention when ``d_kv`` is None (keys come from the same normalized ``h``), cross-attention
    otherwise (keys and values from a separately normalized ``kv``).
    """

    def __init__(self, d: int, *, heads: int, d_kv: int | None = None, qk_dim: int | None = None,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, checkpointing: bool = False) -> None:
        super().__init__()
        self.is_cross = d_kv is not None
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d_kv) if d_kv is not None else None
        self.attn = MultiHeadAttention(d, d_kv or d, heads=heads, qk_dim=qk_dim or d, v_dim=d,
                                       d_out=d, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = MLP(d, mlp_ratio, dropout)
        self.checkpointing = checkpointing

    def normalize_kv(self, kv: torch.Tensor) -> torch.Tensor:
        return self.norm_kv(kv) if self.norm_kv is not None else self.norm_q(kv)

    def finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual add of an attention output, then the MLP sub-block. x, attn_out: (B, L, d)."""
        x = x + attn_out
        return x + self.mlp(self.norm_mlp(x))

    def _forward(self, x: torch.Tensor, kv: torch.Tensor | None,
                 key_valid: torch.Tensor | None) -> torch.Tensor:
        h = self.norm_q(x)
        kv_n = h if kv is None else self.normalize_kv(kv)
        return self.finish(x, self.attn(h, kv_n, key_valid))

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, Lq, d), kv: (B, Lk, d_kv) or None for self-attention, key_valid: (B, Lk)."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, kv, key_valid, use_reentrant=False)
        return self._forward(x, kv, key_valid)
