"""Downstream metrics against values computed by hand on tiny inputs, and the undefined-metric error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sma.finetune.metrics import MetricError, compute, higher_is_better

NAN = float("nan")


def test_accuracy_takes_the_argmax_of_class_logits():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])  # argmax 0, 1, 0, 1
    assert compute(["accuracy"], "classification", logits, np.array([0, 1, 1, 1]), "t") == {"accuracy": 0.75}


def test_mcc_and_f1_of_a_two_by_two_confusion():
    # logit > 0 -> predictions 1, 1, 1, 0 against labels 1, 1, 0, 0: TP 2, FP 1, TN 1, FN 0.
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(3*2*2*1) = 2 / sqrt(12)
    # F1 = 2 TP / (2 TP + FP + FN) = 4 / 5
    logits = np.array([[2.0], [1.0], [0.5], [-1.0]])
    labels = np.array([[1.0], [1.0], [0.0], [0.0]])
    got = compute(["mcc", "f1", "accuracy"], "binary", logits, labels, "t")
    assert got["mcc"] == pytest.approx(2 / math.sqrt(12))
    assert got["f1"] == pytest.approx(0.8)
    assert got["accuracy"] == pytest.approx(0.75)
    # the same confusion from two-class logits (argmax)
    two_class = np.concatenate([np.zeros_like(logits), logits], axis=1)
    got = compute(["mcc", "f1"], "classification", two_class, np.array([1, 1, 0, 0]), "t")
    assert got == pytest.approx({"mcc": 2 / math.sqrt(12), "f1": 0.8})


def test_roc_auc_masks_missing_labels_skips_one_class_columns_and_averages():
    # column 0: negatives score 0.1, 0.4; positives 0.35, 0.8 -> 3 of 4 pairs ordered: 0.75
    # column 1: row 1 missing; positives 3, 0 vs negative 1 -> 1 of 2 pairs ordered: 0.5
    # column 2: one class only -> skipped
    scores = np.array([[0.1, 3.0, 1.0], [0.4, 9.0, 2.0], [0.35, 1.0, 3.0], [0.8, 0.0, 4.0]])
    labels = np.array([[0, 1, 1], [0, NAN, 1], [1, 0, 1], [1, 1, NAN]], dtype=np.float32)
    assert compute(["roc_auc"], "binary", scores, labels, "t")["roc_auc"] == pytest.approx((0.75 + 0.5) / 2)


def test_two_class_roc_auc_uses_the_softmax_of_class_one():
    margin = np.array([0.1, 0.4, 0.35, 0.8])  # softmax of class 1 is increasing in l1 - l0
    logits = np.stack([np.full(4, 5.0), 5.0 + margin], axis=1)
    assert compute(["roc_auc"], "classification", logits, np.array([0, 0, 1, 1]), "t")["roc_auc"] == pytest.approx(0.75)


def test_regression_metrics():
    # spearman: ranks 1 2 3 4 vs 1 3 2 4, sum d^2 = 2 -> 1 - 6*2 / (4*15) = 0.8
    got = compute(["spearman"], "regression", np.array([[1.0], [2.0], [3.0], [4.0]]),
                  np.array([[1.0], [3.0], [2.0], [4.0]]), "t")
    assert got["spearman"] == pytest.approx(0.8)
    # pearson of (1, 2, 3) and (1, 2, 4): covariance sum 3, squared deviations 2 and 42/9
    # errors 0, 0, 1: rmse = sqrt(1 / 3), mae = 1 / 3
    o, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])
    got = compute(["pearson", "rmse", "mae"], "regression", o[:, None], y[:, None], "t")
    assert got["pearson"] == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert got["rmse"] == pytest.approx(math.sqrt(1 / 3)) and got["mae"] == pytest.approx(1 / 3)
    # two targets: the mean over columns (mae 1/3 and 1)
    two = compute(["mae"], "regression", np.stack([o, o], 1), np.stack([y, o + 1], 1), "t")
    assert two["mae"] == pytest.approx((1 / 3 + 1) / 2)


def test_undefined_metrics_raise_naming_the_split():
    one_class = np.array([[1.0], [1.0], [1.0]])
    with pytest.raises(MetricError, match="bbbp test split: roc_auc is undefined: no label column has both"):
        compute(["roc_auc"], "binary", np.array([[0.2], [0.4], [0.1]]), one_class, "bbbp test split")
    with pytest.raises(MetricError, match="higgs valid split: roc_auc is undefined: the labels hold one class"):
        compute(["roc_auc"], "classification", np.zeros((3, 2)), np.array([1, 1, 1]), "higgs valid split")
    with pytest.raises(MetricError, match="stsb test split: spearman is undefined: the predictions are constant"):
        compute(["spearman"], "regression", np.ones((3, 1)), np.array([[1.0], [2.0], [3.0]]), "stsb test split")
    with pytest.raises(MetricError, match="mrpc test split: f1 is undefined"):
        compute(["f1"], "binary", -np.ones((3, 1)), np.zeros((3, 1)), "mrpc test split")
    with pytest.raises(MetricError, match="esol test split: the model outputs contain NaN"):
        compute(["rmse"], "regression", np.array([[NAN]]), np.array([[1.0]]), "esol test split")
    with pytest.raises(MetricError, match="cola valid split: spearman is not a metric for classification"):
        compute(["spearman"], "classification", np.zeros((2, 2)), np.array([0, 1]), "cola valid split")
    with pytest.raises(MetricError, match="x: outputs .* and targets .* do not match"):
        compute(["accuracy"], "classification", np.zeros((3, 2)), np.array([0, 1]), "x")
    with pytest.raises(MetricError, match="unknown metric 'auc'"):
        compute(["auc"], "binary", np.zeros((2, 1)), np.array([[0.0], [1.0]]), "x")


def test_higher_is_better():
    assert higher_is_better("roc_auc") and higher_is_better("spearman") and higher_is_better("mcc")
    assert not higher_is_better("rmse") and not higher_is_better("mae")
    with pytest.raises(KeyError):
        higher_is_better("loss")
