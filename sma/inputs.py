"""Domain-agnostic inputs (the SMA paper): UTF-8 bytes for discrete data, float arrays for
continuous data. This is the only modality-aware code in the library, and it only flattens and pads.

Discrete ids: ``PAD=0, BOS=1, EOS=2, MASK=3, CLS=4, SEP=5``, byte ``b`` -> ``b + 6``; vocabulary 262.
A single sequence is ``bytes + [SEP]``; a pair is ``A [SEP] B [SEP]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

PAD, BOS, EOS, MASK, CLS, SEP = 0, 1, 2, 3, 4, 5
NUM_SPECIAL = 6
VOCAB_SIZE = 256 + NUM_SPECIAL


class InputError(ValueError):
    """Raised for malformed inputs; the message says what was wrong and where."""


def _to_bytes(text: str | bytes, where: str) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    raise InputError(f"{where}: expected str or bytes, got {type(text).__name__}")


def encode(
    text: str | bytes,
    pair: str | bytes | None = None,
    *,
    max_len: int | None = None,
    truncate: bool = False,
) -> np.ndarray:
    """Encode one sequence (``A [SEP]``) or a pair (``A [SEP] B [SEP]``) to unpadded ids.

    Returns an int16 array of length ``len(A) + 1`` (+ ``len(B) + 1`` for a pair). With ``truncate``,
    over-long input is cut so the result fits ``max_len`` (a pair is cut from its longer member first);
    without it, over-long input raises ``InputError``.
    """
    parts = [_to_bytes(text, "first sequence")]
    if pair is not None:
        parts.append(_to_bytes(pair, "second sequence"))
    for i, p in enumerate(parts):
        if len(p) == 0:
            raise InputError(f"sequence {i + 1} is empty; empty inputs cannot be encoded")
    total = sum(len(p) + 1 for p in parts)
    if max_len is not None and total > max_len:
        if not truncate:
            raise InputError(
                f"encoded length {total} exceeds max_len={max_len}; pass truncate=True to cut it"
            )
        budget = max_len - len(parts)
        if budget < len(parts):
            raise InputError(f"max_len={max_len} is too small to hold {len(parts)} sequence(s)")
        lens = [len(p) for p in parts]
        while sum(lens) > budget:
            lens[int(np.argmax(lens))] -= 1
        parts = [p[:n] for p, n in zip(parts, lens)]
    out: list[np.ndarray] = []
    for p in parts:
        out.append(np.frombuffer(p, dtype=np.uint8).astype(np.int16) + NUM_SPECIAL)
        out.append(np.array([SEP], dtype=np.int16))
    return np.concatenate(out)


def decode(ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
    """Decode ids back to text: special ids are dropped, except SEP which becomes a tab between
    pair members; the final SEP is dropped. Invalid UTF-8 is replaced, never raised."""
    arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise InputError(f"ids must lie in [0, {VOCAB_SIZE}), got range [{arr.min()}, {arr.max()}]")
    segments: list[bytes] = []
    current: list[int] = []
    for t in arr.tolist():
        if t == SEP:
            segments.append(bytes(current))
            current = []
        elif t >= NUM_SPECIAL:
            current.append(t - NUM_SPECIAL)
    if current:
        segments.append(bytes(current))
    return "\t".join(s.decode("utf-8", errors="replace") for s in segments)


@dataclass
class Batch:
    """A padded batch. ``inputs`` is ``(B, n)`` int64 ids or ``(B, n, d_raw)`` float32 values;
    ``valid`` is ``(B, n)`` bool, True for real (non-padding) tokens; ``targets`` holds optional
    downstream labels ``(B,)`` or ``(B, T)``."""

    inputs: torch.Tensor
    valid: torch.Tensor
    targets: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.inputs.to(device, non_blocking=True),
            self.valid.to(device, non_blocking=True),
            None if self.targets is None else self.targets.to(device, non_blocking=True),
        )

    @property
    def is_discrete(self) -> bool:
        return not torch.is_floating_point(self.inputs)


def pad_ids(seqs: Sequence[np.ndarray | Sequence[int]], length: int | None = None) -> Batch:
    """Right-pad unpadded id sequences to ``length`` (default: the longest). Returns ids ``(B, n)``."""
    if len(seqs) == 0:
        raise InputError("cannot build a batch from zero sequences")
    arrays = [np.asarray(s, dtype=np.int64) for s in seqs]
    for i, a in enumerate(arrays):
        if a.ndim != 1:
            raise InputError(f"sample {i}: id sequence must be 1-D, got shape {a.shape}")
        if a.size == 0:
            raise InputError(f"sample {i}: empty id sequence")
        if a.min() < 0 or a.max() >= VOCAB_SIZE:
            raise InputError(f"sample {i}: ids must lie in [0, {VOCAB_SIZE})")
    n = length if length is not None else max(a.size for a in arrays)
    longest = max(a.size for a in arrays)
    if longest > n:
        raise InputError(f"a sequence of length {longest} does not fit the padded length {n}")
    ids = np.full((len(arrays), n), PAD, dtype=np.int64)
    valid = np.zeros((len(arrays), n), dtype=bool)
    for i, a in enumerate(arrays):
        ids[i, : a.size] = a
        valid[i, : a.size] = True
    return Batch(torch.from_numpy(ids), torch.from_numpy(valid))


def encode_batch(
    texts: Sequence[str | bytes | tuple[str | bytes, str | bytes]],
    *,
    max_len: int,
    truncate: bool = False,
    pad_to_max: bool = True,
) -> Batch:
    """Encode and right-pad a batch of texts (or ``(A, B)`` pairs) to ``(B, max_len)``."""
    seqs = [
        encode(*t, max_len=max_len, truncate=truncate)
        if isinstance(t, tuple)
        else encode(t, max_len=max_len, truncate=truncate)
        for t in texts
    ]
    return pad_ids(seqs, max_len if pad_to_max else None)


def pad_continuous(
    arrays: Sequence[np.ndarray | torch.Tensor], length: int | None = None
) -> Batch:
    """Right-pad continuous samples, each ``(n_i, d_raw)`` (or ``(n_i,)`` meaning ``d_raw = 1``),
    to ``(B, n, d_raw)`` float32. NaN or inf values and inconsistent ``d_raw`` raise ``InputError``."""
    if len(arrays) == 0:
        raise InputError("cannot build a batch from zero samples")
    xs = []
    for i, a in enumerate(arrays):
        t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
        t = t.to(torch.float32)
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2:
            raise InputError(
                f"sample {i}: continuous input must have shape (n, d_raw) or (n,), got {tuple(t.shape)}"
            )
        if t.shape[0] == 0:
            raise InputError(f"sample {i}: empty continuous sample")
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).nonzero()[0].tolist()
            raise InputError(f"sample {i}: non-finite value (NaN or inf) at position {bad}")
        xs.append(t)
    d_raw = xs[0].shape[1]
    for i, t in enumerate(xs):
        if t.shape[1] != d_raw:
            raise InputError(f"sample {i}: d_raw={t.shape[1]} differs from sample 0's d_raw={d_raw}")
    n = length if length is not None else max(t.shape[0] for t in xs)
    x = torch.zeros(len(xs), n, d_raw)
    valid = torch.zeros(len(xs), n, dtype=torch.bool)
    for i, t in enumerate(xs):
        if t.shape[0] > n:
            raise InputError(f"sample {i}: length {t.shape[0]} does not fit the padded length {n}")
        x[i, : t.shape[0]] = t
        valid[i, : t.shape[0]] = True
    return Batch(x, valid)


def check_batch(batch: Batch, *, vocab_size: int = VOCAB_SIZE, d_raw: int | None = None) -> None:
    """Validate a batch before it reaches the model: ranks, dtypes, id range, finiteness."""
    x, valid = batch.inputs, batch.valid
    if valid.dtype != torch.bool or valid.ndim != 2:
        raise InputError(f"valid must be a (B, n) bool tensor, got {valid.dtype} {tuple(valid.shape)}")
    if batch.is_discrete:
        if x.ndim != 2:
            raise InputError(f"discrete inputs must be (B, n) ids, got shape {tuple(x.shape)}")
        if x.numel() and (x.min() < 0 or x.max() >= vocab_size):
            raise InputError(f"ids must lie in [0, {vocab_size}), got [{int(x.min())}, {int(x.max())}]")
    else:
        if x.ndim != 3:
            raise InputError(f"continuous inputs must be (B, n, d_raw), got shape {tuple(x.shape)}")
        if d_raw is not None and x.shape[-1] != d_raw:
            raise InputError(f"continuous inputs have d_raw={x.shape[-1]}, the model expects {d_raw}")
        if not torch.isfinite(x).all():
            raise InputError("continuous inputs contain NaN or inf")
    if x.shape[:2] != valid.shape:
        raise InputError(f"inputs {tuple(x.shape)} and valid {tuple(valid.shape)} disagree on (B, n)")
    if not valid.any(dim=1).all():
        raise InputError("every sample needs at least one valid token")
