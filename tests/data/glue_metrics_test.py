"""GLUE metrics against hand-computed values."""

import math

import numpy as np
import pytest

from flaxprune.data import glue_metrics as gm
from flaxprune.data.glue import GLUE_TASKS

# A 2x2 confusion: TP = 3, FN = 1, FP = 2, TN = 4 (10 examples).
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PREDS = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
ACC = 7 / 10
F1 = 2 * 3 / (2 * 3 + 2 + 1)  # 2TP / (2TP + FP + FN) = 6 / 9
MCC = (3 * 4 - 2 * 1) / math.sqrt((3 + 2) * (3 + 1) * (4 + 2) * (4 + 1))  # 10 / sqrt(600)


def test_classification_metrics_hand_computed():
    assert gm.accuracy(PREDS, LABELS) == pytest.approx(ACC)
    assert gm.f1(PREDS, LABELS) == pytest.approx(F1)
    assert gm.accuracy_and_f1(PREDS, LABELS) == pytest.approx((ACC + F1) / 2)
    assert gm.matthews_correlation(PREDS, LABELS) == pytest.approx(MCC)


def test_f1_is_of_class_one():
    # Swapping the classes changes F1 (TP = 4, FP = 1, FN = 2 for class 0), not accuracy.
    assert gm.f1(1 - PREDS, 1 - LABELS) == pytest.approx(8 / 11)
    assert gm.f1(np.zeros(4, int), np.array([0, 0, 1, 1])) == 0.0  # no predicted positives: 0, no warning


def test_correlations_hand_computed():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 5.0])
    # Pearson: centred x = (-1.5, -.5, .5, 1.5), y = (-1.75, .25, -.75, 2.25); sum xy = 5.5,
    # sum x^2 = 5, sum y^2 = 8.75.
    assert gm.pearson(x, y) == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    # Spearman: ranks of y are (1, 3, 2, 4); d = (0, -1, 1, 0): 1 - 6 * 2 / (4 * 15) = 0.8.
    assert gm.spearman(x, y) == pytest.approx(0.8)
    assert gm.pearson_and_spearman(x, y) == pytest.approx((5.5 / math.sqrt(43.75) + 0.8) / 2)
    assert gm.spearman(x, x**3) == pytest.approx(1.0)  # monotone, not linear
    assert math.isnan(gm.pearson(np.ones(4), y))  # undefined for a constant side


def test_task_metrics():
    assert gm.task_metrics("MRPC", PREDS, LABELS) == pytest.approx(
        {"accuracy": ACC, "f1": F1, "accuracy_and_f1": (ACC + F1) / 2}
    )
    assert gm.task_metrics("cola", PREDS, LABELS) == pytest.approx({"matthews_correlation": MCC})
    assert gm.task_metrics("sst2", PREDS, LABELS) == pytest.approx({"accuracy": ACC})
    x, y = np.array([0.5, 1.0, 4.0]), np.array([1.0, 2.0, 3.0])
    metrics = gm.task_metrics("stsb", x[:, None], y)  # [n, 1] regression outputs are fine
    assert set(metrics) == {"pearson", "spearman", "pearson_and_spearman"}
    assert metrics["spearman"] == pytest.approx(1.0)
    # Logits: argmax over the classes.
    logits = np.array([[2.0, 0.1, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    assert gm.task_metrics("mnli", logits, np.array([0, 2, 2])) == pytest.approx({"accuracy": 2 / 3})


def test_primary_metric_and_direction():
    expected = {"cola": "matthews_correlation", "mrpc": "accuracy_and_f1", "qqp": "accuracy_and_f1"}
    expected |= {"stsb": "pearson_and_spearman", "sst2": "accuracy", "mnli": "accuracy", "rte": "accuracy"}
    for task, metric in expected.items():
        assert gm.primary_metric(task) == metric
    assert all(gm.higher_is_better(m) for t in GLUE_TASKS.values() for m in t.metrics)
    with pytest.raises(ValueError, match="metric='loss' is not one of"):
        gm.higher_is_better("loss")


def test_errors():
    with pytest.raises(ValueError, match="task='snli' is not a GLUE task"):
        gm.task_metrics("snli", PREDS, LABELS)
    with pytest.raises(ValueError, match=r"predictions shape \(3,\) does not fit labels \(10,\)"):
        gm.task_metrics("sst2", PREDS[:3], LABELS)
    with pytest.raises(ValueError, match=r"\[n, 3\] scores"):
        gm.task_metrics("mnli", np.zeros((10, 2)), LABELS)
    with pytest.raises(ValueError, match="must be class ids"):
        gm.task_metrics("sst2", np.full(10, 0.7), LABELS)
    with pytest.raises(ValueError, match="non-empty"):
        gm.task_metrics("sst2", [], [])
