"""TAPE downstream tasks from TAPE's LMDB or JSON files (``task.path``: the folder holding
``<task>_<split>.lmdb`` or ``.json``, or its parent with a ``<task>/`` folder). Records are dicts with
``primary`` (the sequence) and the label; LMDB values are TAPE's pickles (only unpickle files you trust).
The records are read by data_prep.pfam's TAPE readers.

remote homology: ``fold_label`` (1,195 folds), accuracy; test split ``task.test_split``
(``test_fold_holdout`` by default, ``test_family_holdout``, ``test_superfamily_holdout``).
fluorescence (``log_fluorescence``) and stability (``stability_score``): regression, Spearman; the
label may be a one-element list, as in TAPE's files.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from data_prep.pfam import json_records, lmdb_records
from sma.config import ConfigError, TaskConfig
from sma.data.storage import filesystem, join
from sma.finetune.table_task import Report, Rows, assemble, class_key, number
from sma.finetune.taskdata import TaskData
from sma.inputs import InputError, encode


@dataclass(frozen=True)
class Tape:
    folder: str
    label: str
    kind: str
    metrics: tuple[str, ...]
    tests: tuple[str, ...]
    classes: int = 0


TASKS = {
    "tape_remote_homology": Tape("remote_homology", "fold_label", "classification", ("accuracy",),
                                 ("test_fold_holdout", "test_family_holdout", "test_superfamily_holdout"), 1195),
    "tape_fluorescence": Tape("fluorescence", "log_fluorescence", "regression", ("spearman",), ("test",)),
    "tape_stability": Tape("stability", "stability_score", "regression", ("spearman",), ("test",)),
}
NAMES = tuple(TASKS)


def find_file(path: str, task: str, split: str) -> str:
    """``<path>/<task>_<split>.lmdb`` or ``.json`` (also under ``<path>/<task>/``)."""
    tried = []
    for folder in (path, join(path, task)):
        for suffix in (".lmdb", ".json"):
            url = join(folder, f"{task}_{split}{suffix}")
            fs, local = filesystem(url)
            if fs.exists(local):
                return url
            tried.append(url)
    raise ConfigError(f"task.path: no TAPE file for the {split} split of {task} (tried {', '.join(tried)})")


def records(url: str) -> Iterator[tuple[str, dict]]:
    """``(location, record dict)`` from a TAPE LMDB or JSON file."""
    stream = lmdb_records(url) if url.endswith(".lmdb") else json_records(url, "")
    try:
        for where, (kind, value) in stream:
            if isinstance(value, Exception):
                raise InputError(f"{url} {where}: {value}")
            if kind == "lmdb":
                if value is None:
                    raise InputError(f"{url} {where}: record missing (num_examples says it exists)")
                value = pickle.loads(value)
            if not isinstance(value, dict) or not isinstance(value.get("primary"), str):
                raise InputError(f"{url} {where}: expected a dict with a string 'primary' field")
            yield where, value
    except ValueError as e:  # lmdb_records: not a TAPE LMDB, or not local
        if isinstance(e, InputError):
            raise
        raise InputError(str(e)) from None


def label(value: Any, t: Tape, where: str) -> Any:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if t.kind == "regression":
        return (number(value, where, t.label),)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < t.classes:
        raise InputError(f"{where}: {t.label} must be an integer in [0, {t.classes}), got {value!r}")
    return class_key(value)


def read_split(url: str, t: Tape, max_len: int, max_rows: int, report: Report) -> Rows:
    rows = Rows()
    name = url.rstrip("/").rsplit("/", 1)[-1]
    report.source_files.append(url)
    read = 0
    for where, rec in records(url):
        read += 1
        at = f"{url} {where}, field {t.label!r}"
        if t.label not in rec:
            raise InputError(f"{at}: missing")
        if not rec["primary"]:
            report.drop("empty sequence")
            continue
        rows.labels.append(label(rec[t.label], t, at))
        rows.inputs.append(encode(rec["primary"], max_len=max_len, truncate=True))
        rows.ids.append(str(rec["id"]) if "id" in rec else f"{name}:{where}")
        rows.where.append(f"{url} {where}")
        if max_rows and len(rows) >= max_rows:
            break
    report.rows_read[url] = read
    return rows


def load(cfg: TaskConfig, max_len: int) -> TaskData:
    t = TASKS[cfg.name]
    if not cfg.path:
        raise ConfigError(f"task.path: is required: the folder with TAPE's {t.folder}_*.lmdb or .json files")
    test = cfg.test_split or t.tests[0]
    if test not in t.tests:
        raise ConfigError(f"task.test_split: {test!r} is not one of {', '.join(t.tests)} for {cfg.name}")
    report = Report()
    parts = {s: read_split(find_file(cfg.path, t.folder, f), t, max_len, cfg.max_rows, report)
             for s, f in (("train", "train"), ("valid", "valid"), ("test", test))}
    task_cfg = TaskConfig(name=cfg.name, kind=t.kind, label_columns=[t.label])
    classes = [str(i) for i in range(t.classes)] or None
    return assemble(cfg.name, task_cfg, f"files (test: {test})", parts, report, t.metrics, classes)

