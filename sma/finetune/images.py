"""Image classification from an ImageFolder, read and cropped exactly as ``data_prep.images`` prepares
pretraining shards.

``images``: ``task.path`` is the folder holding ``train/<class>/*`` and ``val/<class>/*`` (ImageNet's
layout, as ImageNet-100 is distributed). ``val/`` is the test split; the validation split is a seeded
share ``task.fractions[1]`` of ``train/`` (``task.split_seed``). Classes are the sorted class folders of
``train/``. Every image becomes the model's ``n = H*W`` pixel tokens: decoded, converted to RGB, short side
resized and centre-cropped to a square of side ``sqrt(model.max_len)`` (``data_prep.images.decode_image``),
and standardized with the train split's per-channel mean and std over all pixels, as float32 ``(H*W, 3)``
when a row is read.
``task.max_rows`` > 0 keeps only the first that many images of the test split (quick runs).

Pixels are held in memory as uint8 (110 KB per image at 192 x 192: ~14 GB for ImageNet-100's 126,689
training images, on every rank); fine-tune at a lower resolution or on a subset where memory is short.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from data_prep.images import CHANNELS, decode_image, list_folder, read_bytes
from sma.config import ConfigError, TaskConfig
from sma.data.storage import filesystem, join
from sma.finetune.splits import seeded_subset
from sma.finetune.taskdata import TaskData, continuous_splits
from sma.inputs import InputError

NAMES = ("images",)
METRICS = ("accuracy",)


def _side(max_len: int) -> int:
    side = math.isqrt(max_len)
    if side * side != max_len:
        raise ConfigError(f"model.max_len: the images task crops square images of sqrt(max_len) x sqrt(max_len) "
                          f"pixels; {max_len} is not a square (192 x 192 = 36864)")
    return side


def _listing(cfg: TaskConfig, split: str) -> list[tuple[str, str]]:
    folder = join(cfg.path, split)
    fs, path = filesystem(folder)
    if not fs.isdir(path):
        raise ConfigError(f"task.path: {cfg.path} has no {split}/ folder (expected train/<class>/* and val/<class>/*)")
    listing = list_folder(folder)
    if not listing or any(cls is None for _, cls in listing):
        raise ConfigError(f"task.path: {folder} holds no class folders of images (expected {split}/<class>/*)")
    return listing  # type: ignore[return-value]


def _decode(folder: str, listing: list[tuple[str, str]], side: int, split: str) -> np.ndarray:
    """uint8 ``(N, side * side, 3)`` pixels of the listed images, on this rank's CPU threads (a progress
    bar on rank 0). The first unreadable image in listing order stops it, naming the file."""
    out = np.empty((len(listing), side * side, CHANNELS), dtype=np.uint8)

    def one(i: int) -> None:
        url = join(folder, listing[i][0])
        try:
            out[i] = decode_image(read_bytes(url), side)
        except (ValueError, OSError) as e:
            raise InputError(f"{url}: {e}") from None

    # Reading (file or network I/O) and Pillow's decoding and resizing release the GIL, so threads put the
    # rank's share of the cores to work on a split of 100k images.
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        try:
            for _ in tqdm(pool.map(one, range(len(listing))), total=len(listing), desc=f"decoding {split}",
                          unit="image", disable=os.environ.get("RANK", "0") != "0", dynamic_ncols=True,
                          mininterval=2.0):
                pass
        except BaseException:
            pool.shutdown(cancel_futures=True)  # what has not started never runs
            raise
    return out


def load(cfg: TaskConfig, max_len: int) -> TaskData:
    if not cfg.path:
        raise ConfigError("task.path: is required: the folder holding train/<class>/* and val/<class>/*")
    side = _side(max_len)
    if not 0 < cfg.fractions[1] < 1:
        raise ConfigError(f"task.fractions: the images task carves validation from train/ with fractions[1], "
                          f"which must lie in (0, 1); got {list(cfg.fractions)}")
    train_list, test_list = _listing(cfg, "train"), _listing(cfg, "val")
    classes = sorted({cls for _, cls in train_list})
    unknown = sorted({cls for _, cls in test_list} - set(classes))
    if unknown:
        raise InputError(f"{join(cfg.path, 'val')}: class folder(s) {unknown} have no counterpart in train/")
    if cfg.max_rows:
        test_list = test_list[: cfg.max_rows]
    n_valid = max(1, int(round(cfg.fractions[1] * len(train_list))))
    valid_idx, = seeded_subset(len(train_list), [n_valid], cfg.split_seed)
    in_valid = np.zeros(len(train_list), dtype=bool)
    in_valid[valid_idx] = True
    label = {c: i for i, c in enumerate(classes)}
    rows = {"train": [r for r, v in zip(train_list, in_valid) if not v],
            "valid": [r for r, v in zip(train_list, in_valid) if v], "test": test_list}
    folders = {"train": join(cfg.path, "train"), "valid": join(cfg.path, "train"), "test": join(cfg.path, "val")}
    features = {s: _decode(folders[s], r, side, s) for s, r in rows.items()}
    targets = {s: np.array([label[c] for _, c in r], dtype=np.int64) for s, r in rows.items()}
    ids = {s: [f"{'val' if s == 'test' else 'train'}/{rel}" for rel, _ in r] for s, r in rows.items()}
    split_mode = f"val/ is test; valid {n_valid} seeded images of train/ (seed {cfg.split_seed})"
    splits, stats = continuous_splits(cfg.name, split_mode, features, targets, ids, per_channel=True)
    info = {"source_files": [folders["train"], folders["test"]], "rows_read": {s: len(r) for s, r in rows.items()},
            "rows_dropped": {}, "split_sizes": {s: len(r) for s, r in rows.items()}, "grid": [side, side, CHANNELS],
            "feature_stats": stats}
    return TaskData(name=cfg.name, kind="classification", num_outputs=len(classes), modality="continuous",
                    metrics=METRICS, split_mode=split_mode, splits=splits, label_names=classes, info=info)
