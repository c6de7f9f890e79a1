"""Mask diagnostics: where the masks fall, how much two draws agree, and which bytes they prefer.

Two failure modes of self-guided masking show in these numbers (README, "Mask diagnostics"):

- *collapse onto positions*: the masks pile up on a few positions (low ``position_entropy``, high
  ``top_share``), so the other positions are rarely reconstructed;
- *content leak*: which tokens are chosen depends on their content, so the choice itself tells the
  decoder something (``byte_tv`` well above random's, class shares far from 1, a guided loss below
  what the data allow).

Everything here is a pure function of masks ``(B, n)`` bool (True = masked) and ``valid`` ``(B, n)``
bool. ``MaskTally`` keeps the running sums of an evaluation in one float64 vector, so ranks all-reduce
them in one call and the figures are computed from the global sums.
"""

from __future__ import annotations

import math
import string

import torch

from sma.inputs import NUM_SPECIAL, VOCAB_SIZE

BYTE_CLASSES = ("letters", "digits", "whitespace", "punctuation", "other")
TOP_FRACTION = 0.15  # "the 15% most-masked positions"


def _byte_class_table() -> torch.Tensor:
    """Class index (into ``BYTE_CLASSES``) of every id; special ids and non-ASCII bytes are ``other``."""
    table = torch.full((VOCAB_SIZE,), BYTE_CLASSES.index("other"), dtype=torch.long)
    groups = {"letters": string.ascii_letters, "digits": string.digits, "whitespace": " \t\n\r\x0b\x0c",
              "punctuation": string.punctuation}
    for name, chars in groups.items():
        ids = torch.tensor([ord(c) + NUM_SPECIAL for c in chars])
        table[ids] = BYTE_CLASSES.index(name)
    return table


_CLASS_OF_ID = _byte_class_table()


def byte_classes(ids: torch.Tensor) -> torch.Tensor:
    """Class index of each byte id. ids: (B, n) long -> (B, n) long in ``0..len(BYTE_CLASSES)-1``."""
    return _CLASS_OF_ID.to(ids.device)[ids]


def position_rates(masked: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """How often each position was masked per time it held a valid token, over positions that held
    one at least once (so padding does not count as "rarely masked").
    masked, valid: (P,) counts per position -> (P',) rates."""
    seen = valid > 0
    return masked[seen].double() / valid[seen].double()


def position_entropy(masked: torch.Tensor, valid: torch.Tensor) -> float:
    """Entropy of the per-position mask frequency (rates normalized to sum to 1) divided by its uniform
    maximum ``log(P')``: 1.0 = every position masked equally often. masked, valid: (P,) counts."""
    rates = position_rates(masked, valid)
    if rates.numel() < 2 or rates.sum() <= 0:
        return float("nan")
    p = rates / rates.sum()
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h / math.log(rates.numel()))


def top_share(masked: torch.Tensor, valid: torch.Tensor, fraction: float = TOP_FRACTION) -> float:
    """Share of all masks held by the ``fraction`` most-masked positions (by rate; at least one
    position): about ``fraction`` for uniform masks, 1.0 when they all fall there. masked, valid: (P,)."""
    rates = position_rates(masked, valid)
    if rates.numel() == 0 or rates.sum() <= 0:
        return float("nan")
    k = max(1, round(fraction * rates.numel()))
    return float(rates.topk(k).values.sum() / rates.sum())


def jaccard(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Jaccard overlap ``|a & b| / |a | b|`` of two masks (B, n) of the same inputs.
    Returns (overlap (B,) float64, defined (B,) bool): samples where neither draw masked anything
    have no overlap to speak of."""
    union = (a | b).sum(1)
    inter = (a & b).sum(1)
    return inter.double() / union.clamp(min=1).double(), union > 0


def random_overlap(ratio: float) -> float:
    """Expected Jaccard overlap of two independent uniform masks of ratio ``r`` (large n): ``r / (2 - r)``."""
    return ratio / (2.0 - ratio)


def class_shares(masked: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """For each byte class present among the valid tokens: its share of the masked tokens divided by
    its share of the valid tokens (1.0 = no preference). masked, valid: (len(BYTE_CLASSES),) counts."""
    masked, valid = masked.double(), valid.double()
    if masked.sum() <= 0:
        return {}
    share = (masked / masked.sum()) / (valid / valid.sum()).clamp(min=1e-300)
    return {name: float(share[i]) for i, name in enumerate(BYTE_CLASSES) if valid[i] > 0}


def byte_tv(masked: torch.Tensor, valid: torch.Tensor) -> float:
    """Total variation distance between the byte distribution of the masked tokens and that of the valid
    tokens: 0 = the masks ignore what the bytes are, 1 = they only ever take bytes that are otherwise
    absent. Random masks give sampling noise only. masked, valid: (VOCAB_SIZE,) counts per id."""
    if masked.sum() <= 0:
        return float("nan")
    return float(0.5 * (masked / masked.sum() - valid / valid.sum()).abs().sum())


class MaskTally:
    """Running sums for the diagnostics of one kind of mask, over an evaluation's batches:
    per-position masked / valid counts (positions 0..max_len-1), per-byte-id counts (byte inputs), and
    the Jaccard overlap of two draws. ``vector`` is one float64 tensor (all-reduce it across ranks,
    then ``load`` it back); ``summary`` turns the sums into figures."""

    def __init__(self, max_len: int, device: torch.device | str = "cpu") -> None:
        self.vector = torch.zeros(2 * max_len + 2 * VOCAB_SIZE + 2, dtype=torch.float64, device=device)
        self.pos_masked, self.pos_valid, self.byte_masked, self.byte_valid, self.overlap = self.vector.split(
            [max_len, max_len, VOCAB_SIZE, VOCAB_SIZE, 2])

    def load(self, vector: torch.Tensor) -> "MaskTally":
        self.vector.copy_(vector)
        return self

    def add(self, mask: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """mask, valid: (B, n) bool, n <= max_len; ids: (B, n) byte ids for the per-byte counts (None for
        continuous inputs)."""
        n = mask.shape[1]
        mask = mask & valid
        self.pos_masked[:n] += mask.sum(0)
        self.pos_valid[:n] += valid.sum(0)
        if ids is not None:
            self.byte_masked += torch.bincount(ids[mask], minlength=VOCAB_SIZE)
            self.byte_valid += torch.bincount(ids[valid], minlength=VOCAB_SIZE)

    def add_overlap(self, first: torch.Tensor, second: torch.Tensor) -> None:
        """Two draws (B, n) bool for the same inputs (different generator seeds)."""
        overlap, defined = jaccard(first, second)
        self.overlap[0] += overlap[defined].sum()
        self.overlap[1] += defined.sum()

    def class_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked and valid counts per byte class, (len(BYTE_CLASSES),) each."""
        table = _CLASS_OF_ID.to(self.vector.device)
        zeros = torch.zeros(len(BYTE_CLASSES), dtype=torch.float64, device=self.vector.device)
        return zeros.index_add(0, table, self.byte_masked), zeros.index_add(0, table, self.byte_valid)

    def summary(self, suffix: str = "") -> dict[str, float]:
        """``mask_position_entropy``, ``mask_top15_share``, ``mask_draw_overlap`` (when two draws were
        added), and for byte inputs ``mask_byte_tv`` and ``mask_share_<class>`` (classes present), each
        key + ``suffix``."""
        out = {"mask_position_entropy": position_entropy(self.pos_masked, self.pos_valid),
               "mask_top15_share": top_share(self.pos_masked, self.pos_valid)}
        if self.overlap[1] > 0:
            out["mask_draw_overlap"] = float(self.overlap[0] / self.overlap[1])
        if self.byte_valid.sum() > 0:
            out["mask_byte_tv"] = byte_tv(self.byte_masked, self.byte_valid)
            out.update({f"mask_share_{name}": v for name, v in class_shares(*self.class_counts()).items()})
        return {k + suffix: v for k, v in out.items()}


def mask_report(record: dict[str, float]) -> str:
    """One log line of the diagnostics in ``record``: each figure of the run's masks beside the same
    figure of random masks, e.g. ``position_entropy 0.81 / 0.97, top15_share 0.41 / 0.22, ...``."""
    names = [k[len("mask_"):] for k in record if k.startswith("mask_") and not k.endswith("_random")]
    return ", ".join(f"{name} {record['mask_' + name]:.3f} / {record.get(f'mask_{name}_random', float('nan')):.3f}"
                     for name in names)
