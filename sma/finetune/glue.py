"""GLUE tasks from the TSV files of the GLUE distribution (``task.path``: the task's folder, e.g.
``glue_data/MRPC`` with ``train.tsv`` and ``dev.tsv``; MNLI has ``dev_matched.tsv`` and
``dev_mismatched.tsv``, chosen by ``task.test_split``, default ``dev_matched``).

GLUE's test labels are hidden, so the dev file is the reported "test" split and the validation split
(epoch and learning-rate selection) is a seeded slice of train: ``task.fractions[1]`` of its rows, at
most ``MAX_VALID`` (seed ``task.split_seed``). Files are read with ``csv.QUOTE_NONE`` (GLUE text holds
stray quotes); a row with the wrong number of fields (QQP has a few) is left out and counted. Pairs are
encoded ``A [SEP] B [SEP]``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

from sma.config import ConfigError, TaskConfig
from sma.data.storage import join
from sma.finetune.splits import check_fractions, seeded_subset
from sma.finetune.table_task import Report, assemble, preset, read_rows
from sma.finetune.tables import read_table
from sma.finetune.taskdata import TaskData

MAX_VALID = 10_000
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]  # CoLA's train/dev have no header


@dataclass(frozen=True)
class Glue:
    input: str
    pair: str
    label: str
    kind: str  # classification | regression
    metrics: tuple[str, ...]
    classes: tuple[str, ...] = ()  # class names in id order (classification)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
TASKS = {
    "cola": Glue("sentence", "", "label", "classification", ("mcc",), _BINARY),
    "sst2": Glue("sentence", "", "label", "classification", ("accuracy",), _BINARY),
    "mrpc": Glue("#1 String", "#2 String", "Quality", "classification", ("f1", "accuracy"), _BINARY),
    "qqp": Glue("question1", "question2", "is_duplicate", "classification", ("f1", "accuracy"), _BINARY),
    "stsb": Glue("sentence1", "sentence2", "score", "regression", ("spearman", "pearson")),
    "mnli": Glue("sentence1", "sentence2", "gold_label", "classification", ("accuracy",),
                 ("contradiction", "entailment", "neutral")),
    "qnli": Glue("question", "sentence", "label", "classification", ("accuracy",), _NLI2),
    "rte": Glue("sentence1", "sentence2", "label", "classification", ("accuracy",), _NLI2),
}
NAMES = tuple(TASKS)


def dev_file(cfg: TaskConfig) -> str:
    """The file reported as the test split (``task.test_split``)."""
    choices = ("dev_matched", "dev_mismatched") if cfg.name == "mnli" else ("dev",)
    test = cfg.test_split or choices[0]
    if test not in choices:
        raise ConfigError(f"task.test_split: {test!r} is not one of {', '.join(choices)} for {cfg.name}")
    return f"{test}.tsv"


def load(cfg: TaskConfig, max_len: int) -> TaskData:
    g = TASKS[cfg.name]
    if not cfg.path:
        raise ConfigError(f"task.path: is required: the GLUE folder of {cfg.name} (train.tsv, dev.tsv)")
    fractions = check_fractions(cfg.fractions)
    table_cfg = preset(cfg, cfg.name, input_column=g.input, pair_column=g.pair, label_columns=[g.label], kind=g.kind)
    test_file = dev_file(cfg)
    report = Report()
    names = COLA_COLUMNS if cfg.name == "cola" else None

    def rows(file: str):
        table = read_table(join(cfg.path, file), "tsv", names=names, quoting=csv.QUOTE_NONE,
                           max_rows=cfg.max_rows, bad_rows="drop")
        return read_rows(table, table_cfg, max_len, report)

    train = rows("train.tsv")
    n_valid = min(MAX_VALID, max(1, int(fractions[1] * len(train)))) if len(train) > 1 else 0
    valid_idx, = seeded_subset(len(train), [n_valid], cfg.split_seed)
    train_idx = sorted(set(range(len(train))) - set(valid_idx))
    parts = {"train": train.take(train_idx), "valid": train.take(valid_idx), "test": rows(test_file)}
    split_mode = (f"GLUE {test_file.removesuffix('.tsv')} as test (test labels hidden); "
                  f"valid: {n_valid} train rows, seed {cfg.split_seed}")
    return assemble(cfg.name, table_cfg, split_mode, parts, report, g.metrics, list(g.classes) or None)
