"""``build_loader``: the one entry point the trainer uses to get batches (see the README's data section)."""

from __future__ import annotations

from typing import Any, Protocol

from sma.config import TrainConfig
from sma.data.builtin import MemoryStream, builtin_split, feature_stats
from sma.data.collate import Collate
from sma.data.epochs import EpochLoader, Plan
from sma.data.manifest import check_fits_model

SPLITS = ("train", "eval")


class Loader(Protocol):
    """What ``build_loader`` returns, whatever the format."""

    def __iter__(self): ...  # yields sma.inputs.Batch

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_loader(cfg: TrainConfig, split: str, rank: int, world_size: int) -> Loader:
    """Batches of ``cfg.data.micro_batch_size`` samples padded to ``cfg.model.max_len`` for one rank.

    ``split="train"`` iterates forever, reshuffled every epoch (seeded by ``cfg.seed``), with the same
    number of batches on every rank; ``split="eval"`` is one fixed, finite pass. Shards whose manifest
    records samples longer than ``model.max_len`` (or another ``d_raw``) raise ``ConfigError`` here.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    data = cfg.data
    train = split == "train"
    if data.format == "builtin":
        samples = builtin_split(data.builtin, cfg.model.max_len, split)
        stats = feature_stats(builtin_split(data.builtin, cfg.model.max_len, "train"))
        collate = Collate(cfg.model.max_len, *(stats or (None, None)))
        plan = Plan(len(samples), world_size, 1, data.micro_batch_size)
        # In-memory samples: worker processes would only add start-up time, so none are used.
        stream = MemoryStream(samples, plan, rank, collate, cfg.seed, shuffle=train and data.shuffle)
        return EpochLoader(stream, 0, train, f"builtin:{data.builtin}:{split}")
    url = data.train_url if train else (data.eval_url or "")
    if not url:
        raise ValueError(f"data.eval_url is required to evaluate with data.format={data.format}")
    check_fits_model(cfg, split, url)  # at start-up, not when the first too-long batch is built
    if data.format == "wds":
        from sma.data.wds import build_wds_loader

        return build_wds_loader(cfg, url, train, rank, world_size)
    from sma.data.mds import build_mds_loader

    return build_mds_loader(cfg, url, train, rank, world_size)

