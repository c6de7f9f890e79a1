"""Shard readers (MDS via streaming, tar via webdataset), builtin corpora and collation.

``build_loader(cfg, split, rank, world_size)`` is the entry point; see ``sma.data.loader``.
"""

from sma.data.loader import build_loader

__all__ = ["build_loader"]
