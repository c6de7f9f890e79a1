"""The ``table`` task: a user's labelled file (or three) -> ``TaskData``. Benchmarks distributed as
tables (MoleculeNet, GLUE) are presets of these settings.

Inputs: ``input_column`` (UTF-8 bytes; ``pair_column`` makes ``A [SEP] B [SEP]``), or
``feature_columns`` (numbers; a sample is ``(len(feature_columns), 1)``, standardized with train
statistics). Labels by ``kind``: classification (one column; strings or integers, class ids in sorted
order, numerically when all are integers), binary (0/1 or true/false; an empty cell is a missing label,
NaN), regression (numbers). Rows without a usable label, with an empty input, or (``smiles: true``)
with a SMILES RDKit cannot parse are left out of every split, counted in ``info`` and logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sma.config import ConfigError, TaskConfig
from sma.finetune.scaffold import balanced_split, deepchem_split, murcko_scaffold
from sma.finetune.splits import check_fractions, column_split, random_split
from sma.finetune.tables import Table, is_missing, read_table
from sma.finetune.taskdata import KINDS, SPLITS, Split, TaskData, check_sizes, continuous_splits
from sma.inputs import InputError, encode

log = logging.getLogger(__name__)

SPLIT_MODES = ("random", "scaffold", "scaffold_balanced", "column", "file")
DEFAULT_METRICS = {"classification": ("accuracy",), "binary": ("roc_auc", "accuracy"), "regression": ("rmse", "mae")}
MAX_EXAMPLES = 20  # invalid SMILES listed in info (all are counted)
_TRUE, _FALSE = ("1", "1.0", "true"), ("0", "0.0", "false")


@dataclass
class Rows:
    """The usable rows of one or more tables, parallel lists."""

    inputs: list = field(default_factory=list)  # int16 ids, or float32 (F, 1) raw features
    labels: list = field(default_factory=list)  # binary / regression: float tuples; classification: class key
    ids: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "<file> line N", for error messages
    mols: list = field(default_factory=list)  # RDKit molecules (smiles: true)
    split_values: list = field(default_factory=list)  # split column values (split: column)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices: Sequence[int]) -> "Rows":
        pick = lambda xs: [xs[i] for i in indices] if xs else []  # noqa: E731
        return Rows(pick(self.inputs), pick(self.labels), pick(self.ids), pick(self.where), pick(self.mols),
                    pick(self.split_values))


@dataclass
class Report:
    """What reading left out, for ``TaskData.info`` and the log."""

    source_files: list[str] = field(default_factory=list)
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_dropped: dict[str, int] = field(default_factory=dict)
    invalid_smiles: int = 0
    invalid_examples: list[dict[str, str]] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        self.rows_dropped[reason] = self.rows_dropped.get(reason, 0) + n

    def info(self) -> dict[str, Any]:
        return {"source_files": self.source_files, "rows_read": self.rows_read, "rows_dropped": self.rows_dropped,
                "invalid_smiles": {"count": self.invalid_smiles, "examples": self.invalid_examples}}

    def log(self, name: str) -> None:
        if self.invalid_smiles:
            shown = "; ".join(f"{e['line']}: {e['value']!r}" for e in self.invalid_examples[:5])
            log.warning("%s: %d invalid SMILES left out of every split (first: %s)", name, self.invalid_smiles, shown)
        other = {k: v for k, v in self.rows_dropped.items() if k != "invalid SMILES"}
        if other:
            log.warning("%s: rows left out: %s", name, ", ".join(f"{v} ({k})" for k, v in other.items()))


# ---- settings --------------------------------------------------------------------------------------

def check_table_config(cfg: TaskConfig) -> str:
    """Validate the ``table`` settings; return the split mode (default random)."""
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"task.{key}: {msg}")

    need(bool(cfg.path), "path", "is required: the labelled file (local path or fsspec URL)")
    need(cfg.kind in KINDS, "kind", f"{cfg.kind!r} is not one of {', '.join(KINDS)}")
    need(bool(cfg.label_columns), "label_columns", "is required: one or more label columns")
    need(cfg.kind != "classification" or len(cfg.label_columns) == 1, "label_columns",
         f"classification takes one label column, got {cfg.label_columns}")
    need(bool(cfg.input_column) != bool(cfg.feature_columns), "input_column",
         "set either input_column (bytes) or feature_columns (continuous), not both or neither")
    need(not cfg.pair_column or bool(cfg.input_column), "pair_column", "needs task.input_column")
    need(not cfg.smiles or bool(cfg.input_column), "smiles", "needs task.input_column (the SMILES column)")
    need(cfg.max_rows >= 0, "max_rows", f"must be >= 0, got {cfg.max_rows}")
    split = cfg.split or "random"
    need(split in SPLIT_MODES, "split", f"{split!r} is not one of {', '.join(SPLIT_MODES)}")
    need(not split.startswith("scaffold") or cfg.smiles, "split", f"{split} needs task.smiles: true")
    need(split != "column" or bool(cfg.split_column), "split_column", "is required for split: column")
    need(split == "file" or not (cfg.valid_path or cfg.test_path), "valid_path",
         "valid_path / test_path are read only with split: file")
    if split == "file":
        need(bool(cfg.valid_path), "valid_path", "is required for split: file")
        need(bool(cfg.test_path), "test_path", "is required for split: file")
    check_fractions(cfg.fractions)
    return split


def preset(cfg: TaskConfig, task: str, **fields: Any) -> TaskConfig:
    """``cfg`` with a benchmark's table settings; a user value that contradicts one is a ``ConfigError``."""
    default = TaskConfig()
    for key, value in fields.items():
        mine = getattr(cfg, key)
        if mine != getattr(default, key) and mine != value:
            raise ConfigError(f"task.{key}: the {task} benchmark sets it to {value!r}; leave it unset (got {mine!r})")
    return dataclasses.replace(cfg, **fields)


def split_mode_text(cfg: TaskConfig, split: str) -> str:
    return {"random": f"random seed {cfg.split_seed}", "scaffold": "scaffold (deepchem)",
            "scaffold_balanced": f"scaffold_balanced seed {cfg.split_seed}",
            "column": f"column {cfg.split_column!r}", "file": "files"}[split]


# ---- values ------------------------------------------------------------------------------------------

def class_key(value: Any) -> str:
    """A classification label as text: integers (also a float such as 3.0) by their digits, strings stripped."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def number(value: Any, where: str, what: str) -> float:
    """A finite number from a cell; anything else (text, NaN, inf) is an ``InputError`` naming the cell."""
    if isinstance(value, bool):
        raise InputError(f"{where}: {what} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{where}: {what} must be a finite number, got {value!r}")
    return x


def binary(value: Any, where: str) -> float:
    """0/1 or true/false (any case); an empty cell is a missing label (NaN)."""
    if is_missing(value):
        return math.nan
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise InputError(f"{where}: a binary label must be 0/1 or true/false, got {value!r}")


def class_ids(keys: Sequence[str]) -> list[str]:
    """Class names in id order: numerically when every name is an integer, else as strings."""
    names = set(keys)
    if all(k.lstrip("-").isdigit() for k in names):
        return sorted(names, key=int)
    return sorted(names)


# ---- reading ---------------------------------------------------------------------------------------

def read_rows(table: Table, cfg: TaskConfig, max_len: int, report: Report, split_column: str = "") -> Rows:
    """The usable rows of ``table`` under the task settings (inputs encoded, labels parsed)."""
    label_idx = [table.index(c, "task.label_columns") for c in cfg.label_columns]
    input_idx = table.index(cfg.input_column, "task.input_column") if cfg.input_column else None
    pair_idx = table.index(cfg.pair_column, "task.pair_column") if cfg.pair_column else None
    feature_idx = [table.index(c, "task.feature_columns") for c in cfg.feature_columns]
    split_idx = table.index(split_column, "task.split_column") if split_column else None
    report.source_files.append(table.url)
    report.rows_read[table.url] = len(table) + sum(table.dropped.values())
    for reason, n in table.dropped.items():
        report.drop(reason, n)
    if cfg.smiles:
        from rdkit import Chem, RDLogger

        RDLogger.DisableLog("rdApp.*")  # invalid SMILES are counted and reported here instead
    rows = Rows()
    try:
        for r, values in enumerate(table.rows):
            labels = _labels(table, r, values, label_idx, cfg, report)
            if labels is None:
                continue
            if input_idx is not None:
                text = values[input_idx]
                pair = values[pair_idx] if pair_idx is not None else None
                if is_missing(text) or (pair_idx is not None and is_missing(pair)):
                    report.drop("empty input")
                    continue
                if cfg.smiles:
                    mol = Chem.MolFromSmiles(str(text).strip())
                    if mol is None:
                        report.invalid_smiles += 1
                        report.drop("invalid SMILES")
                        if len(report.invalid_examples) < MAX_EXAMPLES:
                            report.invalid_examples.append({"line": table.location(r), "value": str(text)})
                        continue
                    rows.mols.append(mol)
                    text = str(text).strip()
                x = encode(str(text), None if pair is None else str(pair), max_len=max_len, truncate=True)
            else:
                x = np.array([[number(values[i], table.location(r, c), "a feature")]
                              for i, c in zip(feature_idx, cfg.feature_columns)], dtype=np.float32)
            rows.inputs.append(x)
            rows.labels.append(labels)
            rows.ids.append(table.row_id(r))
            rows.where.append(table.location(r))
            if split_idx is not None:
                rows.split_values.append(values[split_idx])
    finally:
        if cfg.smiles:
            RDLogger.EnableLog("rdApp.*")
    return rows


def _labels(table: Table, r: int, values: list, label_idx: list[int], cfg: TaskConfig, report: Report) -> Any:
    """The row's labels (class key, or a tuple of floats), or None when the row has no usable label."""
    cells = [values[i] for i in label_idx]
    if cfg.kind == "binary":
        out = tuple(binary(v, table.location(r, c)) for v, c in zip(cells, cfg.label_columns))
        if all(math.isnan(x) for x in out):
            report.drop("no label")
            return None
        return out
    missing = [c for v, c in zip(cells, cfg.label_columns) if is_missing(v)]
    if missing:
        report.drop(f"missing label in column {missing[0]!r}")
        return None
    if cfg.kind == "classification":
        return class_key(cells[0])
    return tuple(number(v, table.location(r, c), "a regression label") for v, c in zip(cells, cfg.label_columns))


# ---- assembling --------------------------------------------------------------------------------------

def assemble(name: str, cfg: TaskConfig, split_mode: str, parts: dict[str, Rows], report: Report,
             metrics: tuple[str, ...] | None = None, label_names: list[str] | None = None) -> TaskData:
    """``TaskData`` from the rows of each split: class ids, targets, standardized features."""
    check_sizes(name, {s: len(parts[s]) for s in SPLITS}, split_mode)
    if cfg.kind == "classification":
        label_names = label_names or class_ids([k for s in SPLITS for k in parts[s].labels])
        ids = {k: i for i, k in enumerate(label_names)}
        for s in SPLITS:
            for k, where in zip(parts[s].labels, parts[s].where):
                if k not in ids:
                    raise InputError(f"{where}, column {cfg.label_columns[0]!r}: label {k!r} is not one of "
                                     f"{', '.join(label_names)}")
        targets = {s: np.array([ids[k] for k in parts[s].labels], dtype=np.int64) for s in SPLITS}
    else:
        label_names = list(cfg.label_columns)
        targets = {s: np.array(parts[s].labels, dtype=np.float32).reshape(len(parts[s]), -1) for s in SPLITS}
    info = report.info()
    info["split_sizes"] = {s: len(parts[s]) for s in SPLITS}
    if cfg.feature_columns:
        splits, info["feature_stats"] = continuous_splits(
            name, split_mode, {s: np.stack(parts[s].inputs) for s in SPLITS}, targets,
            {s: parts[s].ids for s in SPLITS})
    else:
        splits = {s: Split(parts[s].inputs, targets[s], parts[s].ids) for s in SPLITS}
    report.log(name)
    return TaskData(name=name, kind=cfg.kind,
                    num_outputs=len(label_names),
                    modality="continuous" if cfg.feature_columns else "bytes",
                    metrics=metrics or DEFAULT_METRICS[cfg.kind], split_mode=split_mode, splits=splits,
                    label_names=label_names, info=info)


def split_rows(rows: Rows, cfg: TaskConfig, split: str) -> dict[str, Rows]:
    """One table's rows by ``split`` (random / scaffold / scaffold_balanced / column)."""
    if split == "column":
        parts = column_split(rows.split_values, rows.where)
    elif split == "random":
        parts = random_split(len(rows), cfg.fractions, cfg.split_seed)
    else:
        scaffolds = [murcko_scaffold(m) for m in rows.mols]
        if split == "scaffold":
            parts = deepchem_split(scaffolds, cfg.fractions)
        else:
            parts = balanced_split(scaffolds, cfg.fractions, cfg.split_seed)
    return {s: rows.take(sorted(idx)) for s, idx in zip(SPLITS, parts)}


def load_table(cfg: TaskConfig, max_len: int, name: str = "table",
               metrics: tuple[str, ...] | None = None) -> TaskData:
    """The ``table`` task (and the presets built on it)."""
    split = check_table_config(cfg)
    report = Report()
    split_column = cfg.split_column if split == "column" else ""
    if split == "file":
        urls = {"train": ("task.path", cfg.path), "valid": ("task.valid_path", cfg.valid_path),
                "test": ("task.test_path", cfg.test_path)}
        parts = {s: read_rows(read_table(url, cfg.file_format, key=key, max_rows=cfg.max_rows), cfg, max_len, report)
                 for s, (key, url) in urls.items()}
    else:
        table = read_table(cfg.path, cfg.file_format, max_rows=cfg.max_rows)
        parts = split_rows(read_rows(table, cfg, max_len, report, split_column), cfg, split)
    return assemble(name, cfg, split_mode_text(cfg, split), parts, report, metrics)
