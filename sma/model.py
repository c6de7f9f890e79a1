"""The SMA model: embeddings, the two encoders, the masked-position decoder and the fine-tune head
(the SMA paper). Nothing here knows about parallelism, checkpoints or data files.

Reading order: ``InputEmbedding`` -> ``compact`` -> ``PerceiverEncoder`` / ``TransformerEncoder`` ->
``Readout`` -> ``SMAPretrainModel`` -> ``SMAFinetuneModel``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from sma.attention import Block
from sma.config import MaskingConfig, ModelConfig, validate_model
from sma.inputs import VOCAB_SIZE, Batch, InputError
from sma.masking import curriculum_schedule, num_to_mask, random_mask, self_guided_mask, span_mask, word_mask
from sma.masking import patch_mask


@dataclass
class Selector:
    """Chooses the mask inside encoder layer 1. ``choose(q, k)`` receives the first layer's detached
    q (B, H, Lq, d) and k (B, H, n, d) - or None for both when ``needs_attention`` is False (random and
    span baselines) - and returns the mask (B, n), True = masked. Encoders take ``None`` for no masking
    (fine-tuning, embedding export)."""

    choose: Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]
    needs_attention: bool = True
    # Score from layer 1 applied to the position embeddings alone (``masking.selection_keys: position``):
    # the encoders then pass q and k of ``select_from`` (1, n, d_embed) instead of the inputs' own.
    from_positions: bool = False


def init_weights(module: nn.Module) -> None:
    """Linear and embedding weights N(0, 0.02), zero biases (the SMA paper)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: (B, n, D), idx: (B, L) -> (B, L, D)."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def gather_heads(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: (B, H, n, d), idx: (B, L) -> (B, H, L, d).

    Gathered as whole token rows of the (B, n, H*d) layout the projections produce (a free view back
    from their head split): a 4-D gather strided over heads, and its scatter backward, cost several
    times more on CPU."""
    b, h, n, d = x.shape
    rows = gather_rows(x.transpose(1, 2).reshape(b, n, h * d), idx)
    return rows.view(b, -1, h, d).transpose(1, 2)


def compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices of the kept tokens of each row, in their original order, padded to the longest count.

    keep: (B, n) bool. Returns idx (B, L) long (padding entries point at position 0) and a key-padding
    mask (B, L) bool, or None when every row keeps the same number of tokens (so SDPA runs unmasked).
    """
    counts = keep.sum(1)
    width = int(counts.max())
    idx = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :width]
    if bool((counts == width).all()):
        return idx, None
    present = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    return idx.masked_fill(~present, 0), present


class InputEmbedding(nn.Module):
    """Token embedding plus a learned position table, then LayerNorm.
    Discrete: ids (B, n) -> (B, n, D); continuous: values (B, n, d_raw) -> (B, n, D)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.discrete = cfg.modality == "bytes"
        self.token = nn.Embedding(VOCAB_SIZE, cfg.d_embed) if self.discrete else nn.Linear(cfg.d_raw, cfg.d_embed)
        self.position = nn.Parameter(torch.randn(cfg.max_len, cfg.d_embed) * 0.02)
        self.norm = nn.LayerNorm(cfg.d_embed)

    def forward(self, x: torch.Tensor, content: bool = True) -> torch.Tensor:
        """With ``content=False``: the position embeddings alone, normalized the same way, (1, n, D)."""
        n = x.shape[1]
        # Shape checks only (no device sync): wrong data for this model fails here with a clear message.
        if n > self.position.shape[0]:
            raise InputError(f"inputs have {n} tokens, the model's max_len is {self.position.shape[0]}")
        if not content:
            return self.norm(self.position[None, :n])
        if self.discrete:
            if x.ndim != 2 or torch.is_floating_point(x):
                raise InputError(f"this model takes (B, n) byte ids, got {x.dtype} {tuple(x.shape)}")
            return self.norm(self.token(x) + self.position[:n])
        if x.ndim != 3 or x.shape[-1] != self.token.in_features:
            raise InputError(f"this model takes (B, n, d_raw={self.token.in_features}) values, got {tuple(x.shape)}")
        x = x.to(self.token.weight.dtype)  # float32 data into a bf16 / fp16 model
        return self.norm(self.token(x) + self.position[:n])


class EncoderOutput(NamedTuple):
    """A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 finds a module's output tensors (to re-gather
    its parameters for backward) only inside tuples, lists and dicts.

    states: (B, L, D) final states; states_valid: (B, L) bool or None (all valid);
    mask: (B, n) bool masked tokens (all False without a selector); positions: (B, L) input position of
    each state for the token encoder, None for latents."""

    states: torch.Tensor
    states_valid: torch.Tensor | None
    mask: torch.Tensor
    positions: torch.Tensor | None = None


class PerceiverEncoder(nn.Module):
    """Learned latents cross-attend to the inputs (layer 1), then ``num_layers`` latent self-attention
    layers. Masked inputs are dropped from layer 1's keys and values before attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, ckpt = cfg.d_latent, cfg.activation_checkpointing
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, d) * 0.02)
        self.cross = Block(d, heads=cfg.cross_heads, d_kv=cfg.d_embed, qk_dim=cfg.cross_qk_dim,
                           mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, checkpointing=ckpt)
        self.layers = nn.ModuleList(
            Block(d, heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, checkpointing=ckpt)
            for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d)
        self.width = d

    def forward(self, x: torch.Tensor, valid: torch.Tensor, select: Selector | None = None,
                select_from: torch.Tensor | None = None) -> EncoderOutput:
        """x: (B, n, d_embed) embedded inputs, valid: (B, n); select_from: (1, n, d_embed) embedded
        positions whose keys the selection scores instead of the inputs' (``Selector.from_positions``)."""
        b = x.shape[0]
        latents = self.latents.expand(b, -1, -1)  # (B, l, D)
        attn = self.cross.attn
        h = self.cross.norm_q(latents)
        kv = self.cross.normalize_kv(x)
        q, k = attn.project_q(h), attn.project_k(kv)  # (B, H, l, dk), (B, H, n, dk)
        mask = torch.zeros_like(valid)
        if select is not None and select.needs_attention:
            k_sel = k if select_from is None else attn.project_k(self.cross.normalize_kv(select_from)).expand_as(k)
            mask = select.choose(q.detach(), k_sel.detach())
        elif select is not None:
            mask = select.choose(None, None)
        idx, key_valid = compact(valid & ~mask)
        out = attn.combine(q, gather_heads(k, idx), attn.project_v(gather_rows(kv, idx)), key_valid)
        z = self.cross.finish(latents, out)
        for layer in self.layers:
            z = layer(z)
        return EncoderOutput(self.norm(z), None, mask)


class TransformerEncoder(nn.Module):
    """Self-attention over tokens. After layer 1's queries and keys choose the mask, the encoder runs on
    the visible tokens only (an MAE encoder): masked tokens are gone as queries and as keys."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_embed
        self.layers = nn.ModuleList(
            Block(d, heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
                  checkpointing=cfg.activation_checkpointing)
            for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d)
        self.width = d

    def forward(self, x: torch.Tensor, valid: torch.Tensor, select: Selector | None = None,
                select_from: torch.Tensor | None = None) -> EncoderOutput:
        """x: (B, n, d_embed) embedded inputs, valid: (B, n); select_from: (1, n, d_embed) embedded
        positions whose queries and keys the selection scores instead (``Selector.from_positions``)."""
        first, rest = self.layers[0], self.layers[1:]
        if select is not None and select.needs_attention:
            # Layer 1's q and k over all tokens choose the mask; the visible tokens' rows of the same q
            # and k then attend, so layer 1 is computed once. Gathering rows equals masking the other
            # keys with -inf and dropping the masked rows afterwards (norms and projections act per token).
            attn = first.attn
            h = first.norm_q(x)
            q, k = attn.project_q(h), attn.project_k(h)  # (B, H, n, dk)
            q_sel, k_sel = q, k
            if select_from is not None:
                h_sel = first.norm_q(select_from)
                q_sel, k_sel = attn.project_q(h_sel).expand_as(q), attn.project_k(h_sel).expand_as(k)
            mask = select.choose(q_sel.detach(), k_sel.detach())
            idx, key_valid = compact(valid & ~mask)
            out = attn.combine(gather_heads(q, idx), gather_heads(k, idx), attn.project_v(gather_rows(h, idx)),
                               key_valid)
            z = first.finish(gather_rows(x, idx), out)  # (B, n_vis, D)
        else:
            mask = torch.zeros_like(valid) if select is None else select.choose(None, None)
            idx, key_valid = compact(valid & ~mask)
            z, rest = gather_rows(x, idx), self.layers
        for layer in rest:
            z = layer(z, key_valid=key_valid)
        return EncoderOutput(self.norm(z), key_valid, mask, idx)


class Readout(nn.Module):
    """Queries cross-attend once to the encoder states (pre-LN block), then LayerNorm and a linear map.
    Serves as the reconstruction decoder and the fine-tune head (the SMA paper)."""

    def __init__(self, d_query: int, d_states: int, heads: int, mlp_ratio: float, out_dim: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.block = Block(d_query, heads=heads, d_kv=d_states, mlp_ratio=mlp_ratio, dropout=dropout)
        self.norm = nn.LayerNorm(d_query)
        self.out = nn.Linear(d_query, out_dim)

    def features(self, queries: torch.Tensor, states: torch.Tensor,
                 states_valid: torch.Tensor | None) -> torch.Tensor:
        """queries: (B, M, d_query), states: (B, L, d_states) -> (B, M, d_query) normalized features."""
        return self.norm(self.block(queries, states, states_valid))

    def forward(self, queries: torch.Tensor, states: torch.Tensor,
                states_valid: torch.Tensor | None) -> torch.Tensor:
        return self.out(self.features(queries, states, states_valid))


def build_encoder(cfg: ModelConfig) -> PerceiverEncoder | TransformerEncoder:
    return PerceiverEncoder(cfg) if cfg.encoder == "perceiver" else TransformerEncoder(cfg)


class SMAEncoder(nn.Module):
    """Embedding + encoder, shared by pretraining and fine-tuning (its state dict keys are shared)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = InputEmbedding(cfg)
        self.encoder = build_encoder(cfg)
        # Identity of each position for random draws; permuted with the position tables (see masking.py).
        self.register_buffer("position_ids", torch.arange(cfg.max_len), persistent=True)

    def forward(self, x: torch.Tensor, valid: torch.Tensor,
                select: Selector | None = None) -> EncoderOutput:
        """x: (B, n) ids or (B, n, d_raw) values, valid: (B, n)."""
        if select is not None and select.from_positions:
            return self.encoder(self.embed(x), valid, select, select_from=self.embed(x, content=False))
        return self.encoder(self.embed(x), valid, select)


class PretrainOutput(NamedTuple):
    """A NamedTuple for the same ZeRO-3 reason as ``EncoderOutput``."""

    loss: torch.Tensor  # scalar
    mask: torch.Tensor  # (B, n) bool, True = masked
    masked_ratio: torch.Tensor  # scalar: masked / valid tokens in the batch
    selection_seconds: float
    chosen: torch.Tensor | None = None  # (B, m) chosen queries of the guided selection, -1 padded


class SMAPretrainModel(nn.Module):
    """Self-guided masked autoencoder: selects the mask in encoder layer 1, encodes visible tokens,
    decodes the masked positions only, and returns the reconstruction loss."""

    # Synchronize the GPU around mask selection so ``selection_seconds`` is exact (two syncs a step).
    time_selection: bool = True

    def __init__(self, cfg: ModelConfig, masking: MaskingConfig) -> None:
        super().__init__()
        validate_model(cfg, masking)
        self.cfg, self.masking = cfg, masking
        self.backbone = SMAEncoder(cfg)
        self.discrete = cfg.modality == "bytes"
        out_dim = VOCAB_SIZE if self.discrete else cfg.d_raw
        self.decoder = Readout(cfg.decoder_dim, self.backbone.encoder.width, cfg.decoder_heads, cfg.mlp_ratio,
                               out_dim)
        self.decoder_position = (None if cfg.tie_decoder_positions
                                 else nn.Parameter(torch.randn(cfg.max_len, cfg.decoder_dim) * 0.02))
        self.mask_vector = nn.Parameter(torch.zeros(cfg.decoder_dim)) if cfg.decoder_mask_vector else None
        init_weights(self)
        if cfg.tie_output_embedding:
            self.decoder.out.weight = self.backbone.embed.token.weight

    # -- mask selection -------------------------------------------------------------------------
    def _selector(self, batch: Batch, progress: float, generator: torch.Generator | None,
                  chosen: torch.Tensor | None, record: dict, mode: str) -> Selector | None:
        m = self.masking
        valid = batch.valid
        ids = self.backbone.position_ids[: valid.shape[1]]
        if mode == "span":
            return Selector(lambda q, k: span_mask(valid, m.ratio, m.span_length, generator=generator), False)
        if mode == "word":
            return Selector(lambda q, k: word_mask(batch.inputs, valid, m.ratio, generator=generator), False)
        if mode == "patch":
            return Selector(lambda q, k: patch_mask(valid, m.ratio, m.patch_grid, m.patch_size, generator=generator),
                            False)
        if mode == "random":
            k_b = num_to_mask(valid.sum(1), m.ratio)
            return Selector(lambda q, k: random_mask(valid, k_b, ids=ids, generator=generator), False)
        guided_share = 1.0 - m.select_initial_ratio * curriculum_schedule(progress, m.curriculum_fraction)
        self_attention = self.cfg.encoder == "transformer"

        def choose(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            mask, record["chosen"] = self_guided_mask(
                q, k, valid, ratio=m.ratio, num_per_query=m.num_per_query, head_aggregation=m.head_aggregation,
                mask_self=m.mask_self, chosen=chosen, generator=generator,
                query_valid=valid if self_attention else None, guided_share=guided_share, ids=ids,
                return_chosen=True)
            return mask
        return Selector(choose, from_positions=m.selection_keys == "position")

    def _timed(self, select: Selector | None, record: dict) -> Selector | None:
        if select is None:
            return None

        def timed(q: torch.Tensor | None, k: torch.Tensor | None) -> torch.Tensor:
            sync = self.time_selection and torch.cuda.is_available() and self.backbone.position_ids.is_cuda
            if sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            mask = select.choose(q, k)
            if sync:
                torch.cuda.synchronize()
            record["seconds"] = time.perf_counter() - start
            return mask
        return replace(select, choose=timed)

    # -- forward ----------------------------------------------------------------------------------
    def decoder_queries(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: (B, M) long -> decoder queries (B, M, decoder_dim)."""
        table = self.backbone.embed.position if self.decoder_position is None else self.decoder_position
        q = table[positions]
        return q + self.mask_vector if self.mask_vector is not None else q

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor,
                            batch: Batch) -> torch.Tensor:
        """pred: (B, M, out), target: (B, M) ids or (B, M, d_raw), present: (B, M) bool.
        Mean over all present masked tokens of the batch (x channels for continuous data); zero with a
        gradient path when the batch has no masked token at all."""
        count = present.sum()
        if self.discrete:
            per_token = F.cross_entropy(pred.flatten(0, 1).float(), target.flatten(), reduction="none")
            total = (per_token * present.flatten()).sum()
            return total / count.clamp(min=1)
        target = target.float()
        if self.cfg.standardize_targets:
            target = self._standardize(target, batch)
        sq = ((pred.float() - target) ** 2).sum(-1)
        return (sq * present).sum() / (count.clamp(min=1) * pred.shape[-1])

    @staticmethod
    def _standardize(target: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Standardize targets (B, M, d_raw) by each sample's per-channel mean and std over its valid
        tokens, so the loss does not depend on the scale of a sample's values."""
        x, w = batch.inputs.float(), batch.valid[..., None].float()  # statistics in fp32 even for bf16 data
        cnt = w.sum(1, keepdim=True).clamp(min=1)
        mean = (x * w).sum(1, keepdim=True) / cnt
        var = (((x - mean) ** 2) * w).sum(1, keepdim=True) / cnt
        return (target - mean) / (var + 1e-6).sqrt()

    def forward(self, batch: Batch, progress: float = 1.0, generator: torch.Generator | None = None,
                chosen: torch.Tensor | None = None, mode: str | None = None) -> PretrainOutput:
        """batch.inputs: (B, n) ids or (B, n, d_raw); progress: step / max_steps (curriculum);
        generator: fixed-seed generator for reproducible masks (evaluation); chosen: (B, m) query rows to
        use instead of the random draw (tests, analysis); mode: a masking mode other than the configured
        one (evaluation under random masks, which do not depend on the weights)."""
        record: dict = {"seconds": 0.0, "chosen": None}
        mode = mode or self.masking.mode
        select = self._timed(self._selector(batch, progress, generator, chosen, record, mode), record)
        enc = self.backbone(batch.inputs, batch.valid, select)
        mask = enc.mask
        positions, present = compact(mask)
        if present is None:
            present = torch.ones_like(positions, dtype=torch.bool)
        present = present & mask.gather(1, positions)  # rows with no masked token at all
        pred = self.decoder(self.decoder_queries(positions), enc.states, enc.states_valid)
        target = batch.inputs.gather(1, positions) if self.discrete else gather_rows(batch.inputs, positions)
        loss = self.reconstruction_loss(pred, target, present, batch)
        ratio = mask.sum() / batch.valid.sum().clamp(min=1)
        return PretrainOutput(loss, mask, ratio.detach(), record["seconds"], record["chosen"])


TASKS = ("classification", "binary", "regression")


class SMAFinetuneModel(nn.Module):
    """Encoder without masking, one learned query cross-attending to its final states, MLP, LN, linear
    (the SMA paper)."""

    def __init__(self, cfg: ModelConfig, num_outputs: int, task: str = "classification") -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        validate_model(cfg)
        self.cfg, self.task = cfg, task
        self.backbone = SMAEncoder(cfg)
        width = self.backbone.encoder.width
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        heads = cfg.num_heads
        self.head = Readout(width, width, heads, cfg.mlp_ratio, num_outputs, dropout=cfg.dropout)
        init_weights(self)

    def features(self, batch: Batch) -> torch.Tensor:
        """The readout's normalized features (B, width): the learned query after its cross-attention to the
        final encoder states, before the output map (what ``sma.embed --pool query`` exports)."""
        enc = self.backbone(batch.inputs, batch.valid, None)
        q = self.query.expand(enc.states.shape[0], -1, -1)
        return self.head.features(q, enc.states, enc.states_valid)[:, 0]

    def forward(self, batch: Batch) -> torch.Tensor:
        """Returns outputs (B, num_outputs)."""
        return self.head.out(self.features(batch))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """outputs: (B, C); targets: (B,) class ids, (B, C) 0/1 labels (NaN: missing), or (B, C) / (B,)
        values."""
        if self.task == "classification":
            return F.cross_entropy(outputs.float(), targets.long())
        targets = targets.float().view_as(outputs)
        if self.task == "binary":  # NaN marks a missing label (multi-label sets): it adds nothing
            known = ~torch.isnan(targets)
            per_label = F.binary_cross_entropy_with_logits(outputs.float(), targets.nan_to_num(), reduction="none")
            return (per_label * known).sum() / known.sum().clamp(min=1)
        return F.mse_loss(outputs.float(), targets)

    def layer_depths(self) -> dict[str, int]:
        """Depth of every parameter for layer-wise lr decay: 0 the embedding, 1.. the encoder's blocks in
        order (the Perceiver's latents and cross-attention are 1), ``num_blocks + 1`` the head and the
        final encoder norm."""
        enc = self.backbone.encoder
        blocks = ([enc.cross] if isinstance(enc, PerceiverEncoder) else []) + list(enc.layers)
        depth = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
        if isinstance(enc, PerceiverEncoder):
            depth[id(enc.latents)] = 1
        depth.update({id(p): 0 for p in self.backbone.embed.parameters()})
        top = len(blocks) + 1
        return {name: depth.get(id(p), top) for name, p in self.named_parameters()}

    def load_encoder_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load the backbone from a pretraining state dict (decoder entries are dropped)."""
        prefix = "backbone."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not own:
            raise KeyError("the state dict has no 'backbone.' entries: is it an SMA pretraining checkpoint?")
        self.backbone.load_state_dict(own, strict=True)


def build_pretrain_model(cfg: ModelConfig, masking: MaskingConfig) -> SMAPretrainModel:
    return SMAPretrainModel(cfg, masking)


def build_finetune_model(cfg: ModelConfig, num_outputs: int, task: str = "classification") -> SMAFinetuneModel:
    return SMAFinetuneModel(cfg, num_outputs, task)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
