"""What ``data_prep``'s ``manifest.json`` says about a split, checked against the model at start-up.

A split URL is ``<dst>/<split>``; the manifest sits at ``<dst>/manifest.json``. Each split's entry
records the settings it was written with (``window``), the tokens in its longest sample (``longest``),
for continuous samples ``d_raw``, and for images the grid ``[H, W, C]``. Manifests written before those were recorded per split hold the
window at top level only; it is read from there. Shards without a manifest (made by hand) are not
checked here: a sample that does not fit is found when its batch is built.
"""

from __future__ import annotations

from typing import Any

from sma.config import ConfigError, TrainConfig
from sma.data.storage import join, read_json


def split_record(url: str, endpoint_url: str = "") -> dict[str, Any] | None:
    """``{"window", "longest", "d_raw", "grid"}`` (each None where not recorded) for the split at ``url``, or None
    when no manifest lists it."""
    parent, _, split = url.rstrip("/").rpartition("/")
    manifest = read_json(join(parent or ".", "manifest.json"), endpoint_url, missing_ok=True)
    info = (manifest or {}).get("splits", {}).get(split) if isinstance(manifest, dict) else None
    if not isinstance(info, dict):
        return None
    settings = info.get("settings") or manifest.get("settings") or {}  # top level: older manifests
    return {"window": settings.get("window"), "longest": info.get("longest"), "d_raw": info.get("d_raw"),
            "grid": info.get("grid")}


def check_fits_model(cfg: TrainConfig, split: str, url: str) -> None:
    """Raise ``ConfigError`` naming the key, the split and the URL when the split's samples (as its manifest
    records them) cannot fit ``model.max_len`` / ``model.d_raw``."""
    record = split_record(url, cfg.data.endpoint_url)
    if record is None:
        return
    model = cfg.model
    where = f"the {split} split (data.{split}_url={url})"
    window, longest = record["window"], record["longest"]
    if record["d_raw"] is not None:  # continuous: every sample has the same number of tokens
        if longest is not None and longest > model.max_len:
            raise ConfigError(f"model.max_len: {model.max_len} is shorter than the samples of {where}, which have "
                              f"{longest} tokens; set model.max_len to at least {longest}")
        if model.modality == "continuous" and record["d_raw"] != model.d_raw:
            raise ConfigError(f"model.d_raw: {model.d_raw}, but the samples of {where} have {record['d_raw']} "
                              f"value(s) per token; set model.d_raw={record['d_raw']}")
        grid = record["grid"]
        if grid and cfg.masking.mode == "patch" and list(cfg.masking.patch_grid) != list(grid[:2]):
            raise ConfigError(f"masking.patch_grid: {list(cfg.masking.patch_grid)}, but the images of {where} are "
                              f"{grid[0]} x {grid[1]} pixels; set masking.patch_grid=[{grid[0]},{grid[1]}]")
        return
    need = longest if longest is not None else window
    if need is not None and need > model.max_len:
        size = f"up to {longest} ids" if longest is not None else f"windows of up to {window} ids"
        raise ConfigError(f"model.max_len: {model.max_len} is shorter than the samples of {where}: {size} "
                          f"(data_prep --window {window}); raise model.max_len to at least {need}, or re-prep "
                          f"that split with --window {model.max_len} or less")
