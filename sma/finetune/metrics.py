"""Downstream metrics, computed by scikit-learn and scipy from raw model outputs.

``outputs``: ``(N, C)`` logits (classification, binary) or values in the label's units (regression).
``targets``: class ids ``(N,)`` (classification), 0/1 with NaN for a missing label ``(N, C)``
(binary), values ``(N, C)`` (regression). Over several binary labels or regression targets a metric is
the mean over columns (missing labels masked; ROC-AUC skips a column with one class only).

- accuracy: argmax (classification) or logit > 0 (binary)
- roc_auc: binary logits; two-class classification on the softmax of class 1
- mcc: Matthews correlation (CoLA) on argmax / logit > 0
- f1: of class 1 (MRPC, QQP) on argmax / logit > 0
- spearman, pearson, rmse, mae: regression

A metric that is undefined on a split (one class only for ROC-AUC, constant predictions or targets for a
correlation, no positive label or prediction for F1) raises ``MetricError`` naming the split.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import special, stats
from sklearn import metrics as skm

HIGHER_IS_BETTER = {"accuracy": True, "roc_auc": True, "mcc": True, "f1": True, "spearman": True,
                    "pearson": True, "rmse": False, "mae": False}
METRIC_NAMES = tuple(HIGHER_IS_BETTER)
_KINDS = {"classification": ("accuracy", "roc_auc", "mcc", "f1"), "binary": ("accuracy", "roc_auc", "mcc", "f1"),
          "regression": ("spearman", "pearson", "rmse", "mae")}


class MetricError(ValueError):
    """A metric that cannot be computed on a split; the message names the split and why."""


def higher_is_better(name: str) -> bool:
    if name not in HIGHER_IS_BETTER:
        raise KeyError(f"unknown metric {name!r} (known: {', '.join(METRIC_NAMES)})")
    return HIGHER_IS_BETTER[name]


def compute(metric_names: Sequence[str], kind: str, outputs: np.ndarray, targets: np.ndarray,
            where: str) -> dict[str, float]:
    """``{name: value}`` for each metric; ``where`` (e.g. "bbbp test split") names the data in errors."""
    outputs, targets = _check(kind, np.asarray(outputs), np.asarray(targets), where)
    out = {}
    for name in metric_names:
        if name not in HIGHER_IS_BETTER:
            raise MetricError(f"{where}: unknown metric {name!r} (known: {', '.join(METRIC_NAMES)})")
        if name not in _KINDS.get(kind, ()):
            raise MetricError(f"{where}: {name} is not a metric for {kind} tasks "
                              f"(use {', '.join(_KINDS.get(kind, ()))})")
        value = _classification(name, outputs, targets, where) if kind == "classification" else \
            _per_column(name, kind, outputs, targets, where)
        if not np.isfinite(value):
            raise MetricError(f"{where}: {name} is undefined ({value})")
        out[name] = float(value)
    return out


def _check(kind: str, outputs: np.ndarray, targets: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if kind not in _KINDS:
        raise MetricError(f"{where}: unknown task kind {kind!r} (classification, binary, regression)")
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if kind != "classification" and targets.ndim == 1:
        targets = targets[:, None]
    want = (len(outputs),) if kind == "classification" else outputs.shape
    if outputs.ndim != 2 or targets.shape != want:
        raise MetricError(f"{where}: outputs {outputs.shape} and targets {targets.shape} do not match a "
                          f"{kind} task ((N, C) outputs, {'(N,)' if kind == 'classification' else '(N, C)'} targets)")
    if len(outputs) == 0:
        raise MetricError(f"{where}: no rows")
    if not np.isfinite(outputs).all():
        raise MetricError(f"{where}: the model outputs contain NaN or inf")
    return outputs.astype(np.float64), targets


def _classification(name: str, logits: np.ndarray, y: np.ndarray, where: str) -> float:
    c = logits.shape[1]
    pred = logits.argmax(axis=1)
    if name == "accuracy":
        return skm.accuracy_score(y, pred)
    if name == "mcc":
        return skm.matthews_corrcoef(y, pred)
    if c != 2:
        raise MetricError(f"{where}: {name} needs two classes, the task has {c}")
    if name == "f1":
        return _f1(y, pred, where)
    return _roc_auc(y, special.softmax(logits, axis=1)[:, 1], where)


def _per_column(name: str, kind: str, outputs: np.ndarray, targets: np.ndarray, where: str) -> float:
    """The mean over label / target columns, each with its missing (NaN) labels masked."""
    values = []
    for j in range(outputs.shape[1]):
        have = ~np.isnan(targets[:, j])
        y, o = targets[have, j], outputs[have, j]
        col = f"{where}, column {j}" if outputs.shape[1] > 1 else where
        if len(y) == 0:
            continue
        if kind == "binary":
            if name == "roc_auc" and len(np.unique(y)) < 2:
                continue  # ROC-AUC: only columns with both classes
            values.append(_binary(name, y.astype(np.int64), o, col))
        else:
            values.append(_regression(name, y, o, col))
    if not values:
        why = "no label column has both classes" if name == "roc_auc" else "every label is missing"
        raise MetricError(f"{where}: {name} is undefined: {why}")
    return float(np.mean(values))


def _binary(name: str, y: np.ndarray, logit: np.ndarray, where: str) -> float:
    pred = (logit > 0).astype(np.int64)
    if name == "accuracy":
        return skm.accuracy_score(y, pred)
    if name == "mcc":
        return skm.matthews_corrcoef(y, pred)
    if name == "f1":
        return _f1(y, pred, where)
    return _roc_auc(y, logit, where)


def _roc_auc(y: np.ndarray, score: np.ndarray, where: str) -> float:
    if len(np.unique(y)) < 2:
        raise MetricError(f"{where}: roc_auc is undefined: the labels hold one class only ({int(y[0])})")
    return skm.roc_auc_score(y, score)


def _f1(y: np.ndarray, pred: np.ndarray, where: str) -> float:
    if not (y == 1).any() and not (pred == 1).any():
        raise MetricError(f"{where}: f1 is undefined: no positive label and no positive prediction")
    return skm.f1_score(y, pred, pos_label=1, zero_division=0.0)


def _correlation(fn: Callable, name: str) -> Callable[[np.ndarray, np.ndarray, str], float]:
    def metric(y: np.ndarray, o: np.ndarray, where: str) -> float:
        if len(y) < 2:
            raise MetricError(f"{where}: {name} is undefined for fewer than two rows")
        for what, v in (("predictions", o), ("targets", y)):
            if np.all(v == v[0]):
                raise MetricError(f"{where}: {name} is undefined: the {what} are constant ({v[0]:g})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(o, y)[0]
    return metric


_REGRESSION = {
    "spearman": _correlation(stats.spearmanr, "spearman"),
    "pearson": _correlation(stats.pearsonr, "pearson"),
    "rmse": lambda y, o, where: skm.root_mean_squared_error(y, o),
    "mae": lambda y, o, where: skm.mean_absolute_error(y, o),
}


def _regression(name: str, y: np.ndarray, o: np.ndarray, where: str) -> float:
    return _REGRESSION[name](y, o, where)
