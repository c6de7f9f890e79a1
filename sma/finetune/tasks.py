"""Fine-tuning tasks by name: ``load_task(cfg.task, max_len)`` -> ``TaskData`` (three splits).

``table`` is the user's own labelled file (sma.finetune.table_task); the benchmarks read the files
their publishers distribute: HIGGS (sma.finetune.higgs), TAPE (sma.finetune.tape), MoleculeNet
(sma.finetune.moleculenet), GLUE (sma.finetune.glue), ImageFolder image classification
(sma.finetune.images). ``PAPER`` holds the SMA paper's figures
(ALGORITHM.md §8) in the units ``sma.finetune.metrics`` reports (accuracy as a fraction, not percent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sma.config import ConfigError, TaskConfig
from sma.finetune import glue, higgs, images, moleculenet, tape
from sma.finetune.table_task import load_table
from sma.finetune.taskdata import KINDS, SPLITS, Split, TaskData

__all__ = ["KINDS", "PAPER", "PAPER_GLUE_AVERAGE", "SPLITS", "Split", "TASK_NAMES", "TaskData", "load_task",
           "paper_figures"]

log = logging.getLogger(__name__)

LOADERS: dict[str, Callable[[TaskConfig, int], TaskData]] = {
    "table": lambda cfg, max_len: load_table(cfg, max_len),
    **{n: higgs.load for n in higgs.NAMES},
    **{n: tape.load for n in tape.NAMES},
    **{n: moleculenet.load for n in moleculenet.NAMES},
    **{n: glue.load for n in glue.NAMES},
    **{n: images.load for n in images.NAMES},
}
TASK_NAMES = tuple(LOADERS)

# The SMA paper's results (SMA rows), by task and metric. HIGGS by the number of training labels;
# TAPE remote homology on the fold holdout; MoleculeNet on deepchem scaffold splits.
PAPER: dict[str, dict[str, float]] = {
    "higgs_1k": {"accuracy": 0.6947},
    "higgs_10k": {"accuracy": 0.7404},
    "higgs_100k": {"accuracy": 0.7788},
    "higgs_small": {"accuracy": 0.748},
    "tape_remote_homology": {"accuracy": 0.23},
    "tape_fluorescence": {"spearman": 0.68},
    "tape_stability": {"spearman": 0.80},
    "bbbp": {"roc_auc": 0.750},
    "bace": {"roc_auc": 0.843},
    "hiv": {"roc_auc": 0.789},
    "esol": {"rmse": 0.623},
    "freesolv": {"rmse": 1.09},
    "lipo": {"rmse": 0.609},
    **{n: {} for n in glue.NAMES},  # the paper reports only the GLUE average
    "images": {},  # ImageNet-100 top-1 is not among the figures kept in ALGORITHM.md
}
PAPER_GLUE_AVERAGE = 76.7  # SMA's mean GLUE score (random masking: 73.4); no per-task figures published
_HIGGS_LABELS = {1_000: "higgs_1k", 10_000: "higgs_10k", 100_000: "higgs_100k"}


def paper_figures(cfg: TaskConfig) -> dict[str, float]:
    """The paper's figures comparable with this task's settings (empty when the setting differs)."""
    if cfg.name == "higgs":
        key = _HIGGS_LABELS.get(cfg.train_labels, "")
    elif cfg.name == "higgs_small":
        key = "higgs_small" if cfg.train_labels == 0 else ""
    elif cfg.name == "tape_remote_homology":
        key = cfg.name if cfg.test_split in ("", "test_fold_holdout") else ""
    elif cfg.name in moleculenet.NAMES:
        key = cfg.name if cfg.split in ("", moleculenet.DEFAULT_SPLIT) else ""
    else:
        key = cfg.name
    return dict(PAPER.get(key, {}))


def _module(name: str) -> str:
    return next(m.__name__.rsplit(".", 1)[1] for m in (higgs, tape, glue, images) if name in m.NAMES)


def load_task(cfg: TaskConfig, max_len: int) -> TaskData:
    """Read, encode and split the task's data. Bad or missing settings raise ``sma.config.ConfigError``
    (the message starts with the key); bad data raise ``sma.inputs.InputError`` (file, row, column)."""
    if cfg.name not in LOADERS:
        raise ConfigError(f"task.name: {cfg.name!r} is not one of {', '.join(TASK_NAMES)}")
    if max_len < 2:
        raise ConfigError(f"model.max_len: must be >= 2 to hold a byte and [SEP], got {max_len}")
    if cfg.split and cfg.name not in ("table", *moleculenet.NAMES):
        raise ConfigError(f"task.split: {cfg.name} has fixed splits (see sma.finetune.{_module(cfg.name)}); "
                          f"leave it unset (got {cfg.split!r})")
    data = LOADERS[cfg.name](cfg, max_len)
    data.paper = paper_figures(cfg)
    log.info("%s", data.summary())
    return data
