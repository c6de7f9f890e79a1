"""The sample format stored in shards, shared by ``data_prep`` (writing) and the readers.

A sample is a dict with one of
  - ``ids``: int16 array ``(L,)`` of unpadded byte ids (``sma.inputs`` codec, L <= n),
  - ``x``: float32 array ``(n, d_raw)`` of continuous values,
  - ``px``: uint8 array ``(H*W, C)`` of image pixels in row-major order (one token per pixel; 1 byte per
    value on disk, turned into standardized float32 when batches are built),
and, with ``x`` or ``px``, optionally ``y``: a scalar label (float32; class labels are stored as whole
numbers). Padding to the model length happens only at collate time, so one set of shards serves any
``max_len`` >= the window length it was written with.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from sma.inputs import InputError, encode

Sample = dict[str, Any]

# Column types for streaming.MDSWriter, one per field.
MDS_COLUMNS = {"ids": "ndarray:int16", "x": "ndarray:float32", "px": "ndarray:uint8", "y": "float32"}
# The fields of each kind of sample.
DISCRETE_FIELDS = ("ids",)
CONTINUOUS_FIELDS = ("x", "px")


def tokens_of(sample: Sample) -> np.ndarray:
    """The token array of a checked sample: ``ids`` (L,), ``x`` (n, d_raw) or ``px`` (H*W, C)."""
    return next(sample[k] for k in (*DISCRETE_FIELDS, *CONTINUOUS_FIELDS) if k in sample)


def check_sample(sample: Sample, where: str) -> Sample:
    """Return ``sample`` with canonical dtypes, or raise ``InputError`` naming ``where``."""
    if "ids" in sample:
        ids = np.asarray(sample["ids"])
        if ids.ndim != 1 or ids.size == 0:
            raise InputError(f"{where}: 'ids' must be a non-empty 1-D array, got shape {ids.shape}")
        return {"ids": ids.astype(np.int16, copy=False)}
    if "x" in sample:
        x = np.asarray(sample["x"], dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] == 0:
            raise InputError(f"{where}: 'x' must be (n, d_raw), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise InputError(f"{where}: 'x' has NaN or inf values")
        return _with_label({"x": x}, sample)
    if "px" in sample:
        px = np.asarray(sample["px"])
        if px.dtype != np.uint8:
            raise InputError(f"{where}: 'px' must be uint8 pixels, got {px.dtype}")
        if px.ndim != 2 or px.shape[0] == 0:
            raise InputError(f"{where}: 'px' must be (H*W, channels), got shape {px.shape}")
        return _with_label({"px": px}, sample)
    raise InputError(f"{where}: a sample needs an 'ids', 'x' or 'px' field, got {sorted(sample)}")


def _with_label(out: Sample, sample: Sample) -> Sample:
    if sample.get("y") is not None:
        out["y"] = np.float32(sample["y"])
    return out


def mds_columns(sample: Sample) -> dict[str, str]:
    """The MDS column spec for samples shaped like ``sample``."""
    return {k: MDS_COLUMNS[k] for k in sample}


def to_wds(sample: Sample, key: str) -> dict[str, Any]:
    """Encode a sample as webdataset tar members: ``<key>.<field>.npy`` (numpy's own format)."""
    out: dict[str, Any] = {"__key__": key}
    for name, value in sample.items():
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        out[f"{name}.npy"] = buf.getvalue()
    return out


def from_wds(members: dict[str, Any], where: str) -> Sample:
    """Decode the tar members of one sample; a damaged member raises ``InputError`` naming ``where``."""
    out: Sample = {}
    for name, value in members.items():
        if not name.endswith(".npy"):
            continue
        try:
            out[name[: -len(".npy")]] = np.load(io.BytesIO(value), allow_pickle=False)
        except Exception as e:
            raise InputError(f"{where}: sample {members.get('__key__')!r} member {name!r} is damaged: {e}")
    return check_sample(out, f"{where} sample {members.get('__key__')!r}")


def pack_windows(docs: Iterable[str | bytes], window: int, pack: bool = True) -> Iterator[np.ndarray]:
    """Cut documents into unpadded int16 id windows of at most ``window`` ids.

    Each document is encoded as ``bytes + [SEP]``. A document longer than ``window`` fills whole
    windows and its remainder is treated like a short document. With ``pack``, short documents are
    concatenated (each keeps its trailing [SEP]) while they fit; a document that does not fit in the
    current window starts the next one instead of being split, so no short document straddles two
    windows. Without ``pack`` every document (or remainder) is its own window.
    """
    if window < 2:
        raise InputError(f"window must be >= 2, got {window}")
    buf: list[np.ndarray] = []
    used = 0
    for doc in docs:
        if not doc:
            continue
        ids = encode(doc)
        while ids.size > window:
            yield ids[:window]
            ids = ids[window:]
        if not pack:
            yield ids
            continue
        if used + ids.size > window:
            yield np.concatenate(buf)
            buf, used = [], 0
        buf.append(ids)
        used += ids.size
    if buf:
        yield np.concatenate(buf)
