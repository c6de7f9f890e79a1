"""HIGGS fine-tuning data, read by data_prep.higgs's readers (the same ones pretraining uses).

``higgs``: UCI's ``HIGGS.csv[.gz]`` (``task.path``: the file; no header, label first, then 28 features).
The last ``HIGGS_TEST_ROWS`` (500,000) rows are the test split. From the rows before them, a seeded
(``task.split_seed``) subset of ``task.train_labels`` rows is train (1k / 10k / 100k in the SMA paper;
0: all) and a disjoint seeded subset of ``max(HIGGS_MIN_VALID, budget // 10)`` rows is valid, the budget
being ``train_labels`` (or, with 0, all training rows, of which that share is then held out). With one
seed, the 1k label set is part of the 10k set, which is part of the 100k set.

``higgs_small``: the HIGGS-small folder (``N_{train,val,test}.npy``, ``y_{train,val,test}.npy``,
``info.json``) with its own three splits; ``task.train_labels`` > 0 keeps a seeded subset of train.

Samples are ``(28, 1)``, standardized with the train split's per-feature statistics; targets are the
class ids 0 / 1 (classification, two outputs). ``task.max_rows`` > 0 keeps only the first that many rows
of the test split (quick runs). Reading all 11M rows (``train_labels: 0``) takes minutes.
"""

from __future__ import annotations

import numpy as np

from data_prep.higgs import NUM_FEATURES, HiggsCorpus, higgs_parts
from data_prep.writer import Part
from sma.config import ConfigError, TaskConfig
from sma.data.storage import filesystem
from sma.finetune.splits import seeded_subset
from sma.finetune.taskdata import TaskData, continuous_splits
from sma.inputs import InputError

HIGGS_TEST_ROWS = 500_000  # UCI: "The last 500,000 examples are used as a test set."
HIGGS_MIN_VALID = 1_000
NAMES = ("higgs", "higgs_small")
METRICS = ("accuracy", "roc_auc")
Rows = tuple[np.ndarray, np.ndarray, list[str]]  # x (N, 28, 1) float32, labels (N,) int64, ids


def valid_size(train_labels: int, pool: int) -> int:
    """Validation rows carved from HIGGS's training part: a tenth of the label budget, at least 1,000."""
    return max(HIGGS_MIN_VALID, (train_labels or pool) // 10)


def _collect(part: Part, keep: set[int] | None = None, limit: int = 0,
             ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """``x (N, 28, 1)``, labels ``(N,)``, ids and record numbers (from the part's first record) of a
    part's records: only those numbered in ``keep`` when given, at most ``limit`` (0: all)."""
    corpus = HiggsCorpus()
    name = part.source.rstrip("/").rsplit("/", 1)[-1]
    xs, ys, ids, numbers = [], [], [], []
    for i, (where, raw) in enumerate(corpus.records(part, "")):
        if keep is not None and i not in keep:
            continue
        try:
            sample = corpus.parse(raw)
        except ValueError as e:
            raise InputError(f"{part.source} {where}: {e}") from None
        xs.append(sample["x"])
        ys.append(int(sample["y"]))
        ids.append(f"{name}:{where}")
        numbers.append(i)
        if limit and len(ys) >= limit:
            break
    x = np.stack(xs) if xs else np.zeros((0, NUM_FEATURES, 1), np.float32)
    return x, np.array(ys, dtype=np.int64), ids, np.array(numbers, dtype=np.int64)


def _take(rows: tuple, keep: np.ndarray) -> Rows:
    """The rows of ``_collect``'s result picked by a boolean mask or index array (x, labels, ids)."""
    x, y, ids = rows[:3]
    return x[keep], y[keep], [ids[i] for i in np.arange(len(ids))[keep]]


def _parts(cfg: TaskConfig) -> tuple[list[Part], dict]:
    if not cfg.path:
        what = "HIGGS.csv.gz" if cfg.name == "higgs" else "the HIGGS-small folder"
        raise ConfigError(f"task.path: is required: {what}")
    if cfg.train_labels < 0:
        raise ConfigError(f"task.train_labels: must be >= 0 (0: all), got {cfg.train_labels}")
    fs, local = filesystem(cfg.path)
    if not fs.exists(local):
        raise ConfigError(f"task.path: {cfg.path} does not exist")
    if fs.isdir(local) != (cfg.name == "higgs_small"):
        want = "a folder (N_*.npy, y_*.npy, info.json)" if cfg.name == "higgs_small" else "the HIGGS.csv[.gz] file"
        raise ConfigError(f"task.path: {cfg.name} reads {want}; got {cfg.path}")
    try:
        return higgs_parts([cfg.path], HIGGS_TEST_ROWS, None, "")
    except FileNotFoundError as e:
        raise ConfigError(f"task.path: {e}") from None
    except ValueError as e:
        raise InputError(f"{cfg.path}: {e}") from None


def _csv_splits(cfg: TaskConfig, parts: list[Part], rule: str) -> tuple[dict[str, Rows], str, dict[str, int]]:
    train_part, test_part = parts
    pool = train_part.rows[1] - train_part.rows[0]
    n_valid = valid_size(cfg.train_labels, pool)
    n_train = cfg.train_labels or pool - n_valid
    if n_train + n_valid > pool:
        raise ConfigError(f"task.train_labels: {n_train} labels + {n_valid} validation rows exceed the "
                          f"{pool} training rows of {cfg.path}")
    train_idx, valid_idx = seeded_subset(pool, [n_train, n_valid], cfg.split_seed)
    rows = _collect(train_part, set(train_idx) | set(valid_idx))  # one pass for both
    in_train = np.isin(rows[3], train_idx)
    data = {"train": _take(rows, in_train), "valid": _take(rows, ~in_train),
            "test": _collect(test_part, None, cfg.max_rows)[:3]}
    split_mode = f"{rule}; train {n_train} + valid {n_valid} seeded rows of the rest (seed {cfg.split_seed})"
    return data, split_mode, {cfg.path: test_part.rows[1]}


def _small_splits(cfg: TaskConfig, parts: list[Part]) -> tuple[dict[str, Rows], str, dict[str, int]]:
    data = {}
    for part in parts:
        split = "valid" if part.split == "val" else part.split
        data[split] = _collect(part, None, cfg.max_rows if split == "test" else 0)[:3]
    rows_read = {p.source: len(data["valid" if p.split == "val" else p.split][1]) for p in parts}
    split_mode = "files"
    if cfg.train_labels:
        n = len(data["train"][1])
        if cfg.train_labels > n:
            raise ConfigError(f"task.train_labels: {cfg.train_labels} exceeds the {n} train rows of {cfg.path}")
        keep, = seeded_subset(n, [cfg.train_labels], cfg.split_seed)
        data["train"] = _take(data["train"], np.array(keep, dtype=np.int64))
        split_mode = f"files; train {cfg.train_labels} seeded rows (seed {cfg.split_seed})"
    return data, split_mode, rows_read


def load(cfg: TaskConfig, max_len: int) -> TaskData:
    parts, extra = _parts(cfg)
    if cfg.name == "higgs":
        data, split_mode, rows_read = _csv_splits(cfg, parts, extra["split_rule"])
    else:
        data, split_mode, rows_read = _small_splits(cfg, parts)
    splits, stats = continuous_splits(cfg.name, split_mode, {s: d[0] for s, d in data.items()},
                                      {s: d[1] for s, d in data.items()}, {s: d[2] for s, d in data.items()})
    info = {"source_files": sorted({p.source for p in parts}), "rows_read": rows_read, "rows_dropped": {},
            "split_sizes": {s: len(d[1]) for s, d in data.items()}, "feature_stats": stats, **extra}
    return TaskData(name=cfg.name, kind="classification", num_outputs=2, modality="continuous", metrics=METRICS,
                    split_mode=split_mode, splits=splits, label_names=["0", "1"], info=info)
