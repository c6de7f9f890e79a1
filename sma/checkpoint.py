"""Exported (consolidated) pretrained weights: one file, no DeepSpeed needed to load it.

File format ``sma-consolidated-v1`` (written by ``python -m sma.export``)::

    {"format": "sma-consolidated-v1", "config": <resolved TrainConfig as a dict>,
     "model": <pretrain model state_dict, fp32>, "step": <optimizer steps trained>}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sma.config import TrainConfig, config_from_dict

FORMAT = "sma-consolidated-v1"


class CheckpointFormatError(ValueError):
    """The file is not an exported SMA checkpoint (or is damaged); the message names the file."""


def read_consolidated(path: str | Path) -> dict[str, Any]:
    """The raw exported dict, checked for its format tag and keys."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointFormatError(f"{path}: cannot read exported weights ({e})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointFormatError(
            f"{path}: not an exported SMA checkpoint (format {found!r}, expected {FORMAT!r}); export a "
            "training checkpoint first with `python -m sma.export <checkpoint_dir> <out.pt>`"
        )
    missing = {"config", "model"} - blob.keys()
    if missing:
        raise CheckpointFormatError(f"{path}: missing {sorted(missing)}")
    return blob


def load_pretrained(path: str | Path) -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild the pretraining model from an exported file (or a training checkpoint) and load its weights
    (strictly).

    Returns ``(model, cfg)``; for fine-tuning pass ``model.state_dict()`` to
    ``head.load_encoder_state_dict``. The model is on the CPU, in eval mode.
    """
    from sma.model import build_pretrain_model

    weights, cfg = load_pretrained_weights(path)
    model = build_pretrain_model(cfg.model, cfg.masking)
    model.load_state_dict(weights, strict=True)
    return model.eval(), cfg


def load_pretrained_weights(init: str | Path) -> tuple[dict[str, torch.Tensor], TrainConfig]:
    """fp32 weights and config of a pretraining run, from an exported file, a run's checkpoints folder
    (its latest) or one ``stepNNNNNNNN`` folder. The one loader behind ``init=`` and ``load_pretrained``."""
    from sma.config import ConfigError

    path = Path(init)
    if path.is_file():
        blob = read_consolidated(path)
        return blob["model"], config_from_dict(blob["config"])
    from sma.export import consolidated_state_dict
    from sma.train.checkpointing import resolve_checkpoint, saved_config

    try:
        tag_dir = resolve_checkpoint(path)
    except FileNotFoundError as e:
        raise ConfigError(f"init: {e}; give a run's checkpoints folder, one stepNNNNNNNN folder, an exported .pt, "
                          "or none") from None
    cfg = config_from_dict(saved_config(tag_dir))
    return consolidated_state_dict(tag_dir, cfg), cfg
