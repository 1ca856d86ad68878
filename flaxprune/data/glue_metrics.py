"""GLUE's evaluation metrics, per task, from scikit-learn and SciPy.

GLUE (Wang et al., 2019, Table 1) scores each task by:

* CoLA: Matthews correlation (``matthews_correlation``);
* SST-2, MNLI (matched and mismatched, each its own split), QNLI, RTE, WNLI:
  accuracy;
* MRPC, QQP: accuracy and F1 of the positive class 1 (paraphrase /
  duplicate), the leaderboard's number being their mean
  (``accuracy_and_f1``);
* STS-B: Pearson and Spearman correlation, the leaderboard's number being
  their mean (``pearson_and_spearman``).

These are the definitions the GLUE leaderboard and Hugging Face's
``glue_compute_metrics`` use. Every metric here is higher-is-better; FLOP
(Wang, Wohlwend & Lei, EMNLP 2020, Section 4.2) reports the same numbers on
the dev sets. Which metrics a task reports, and its primary one, live in
``glue.GLUE_TASKS``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

from flaxprune.data.glue import get_task

__all__ = [
    "METRICS",
    "accuracy",
    "accuracy_and_f1",
    "f1",
    "higher_is_better",
    "matthews_correlation",
    "pearson",
    "pearson_and_spearman",
    "primary_metric",
    "spearman",
    "task_metrics",
]


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of ``predictions`` equal to ``labels`` (class ids, ``[n]``)."""
    return float(sk_metrics.accuracy_score(labels, predictions))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class 1; 0.0 when there are no true or predicted positives."""
    return float(sk_metrics.f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def accuracy_and_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The mean of ``accuracy`` and ``f1``: the MRPC / QQP leaderboard number."""
    return (accuracy(predictions, labels) + f1(predictions, labels)) / 2


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient; 0.0 when either side is constant."""
    return float(sk_metrics.matthews_corrcoef(labels, predictions))


def _correlation(fn, predictions, labels) -> float:
    # A constant side makes the correlation undefined: NaN, as scipy returns,
    # without its warning (it is expected early in training).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(fn(predictions, labels)[0])


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation of scores; NaN when either side is constant."""
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation of scores; NaN when either side is constant."""
    return _correlation(stats.spearmanr, predictions, labels)


def pearson_and_spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The mean of ``pearson`` and ``spearman``: the STS-B leaderboard number."""
    return (pearson(predictions, labels) + spearman(predictions, labels)) / 2


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "accuracy_and_f1": accuracy_and_f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
    "pearson_and_spearman": pearson_and_spearman,
}


def primary_metric(task: str) -> str:
    """The task's one leaderboard number: ``'matthews_correlation'`` (CoLA),
    ``'accuracy_and_f1'`` (MRPC, QQP), ``'pearson_and_spearman'`` (STS-B) or
    ``'accuracy'`` (the rest).

    Raises:
      ValueError: for an unknown task.
    """
    return get_task(task).primary_metric


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (True for every GLUE metric).

    Raises:
      ValueError: for an unknown metric name.
    """
    if metric not in METRICS:
        raise ValueError(f"higher_is_better: metric={metric!r} is not one of {sorted(METRICS)}.")
    return True


def task_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric GLUE reports for ``task``, on one split.

    Args:
      task: a GLUE task name (``'mrpc'`` or ``'MRPC'``; see ``glue.GLUE_TASKS``).
      predictions: class ids ``[n]`` or class scores / logits ``[n, num_labels]``
        (argmax taken) for classification; scores ``[n]`` or ``[n, 1]`` for
        STS-B.
      labels: ``[n]`` class ids, or scores for STS-B.

    Returns:
      ``{metric name: value}`` for ``glue.GLUE_TASKS[task].metrics``, e.g.
      ``{'accuracy', 'f1', 'accuracy_and_f1'}`` for MRPC.

    Raises:
      ValueError: for an unknown task, mismatched or empty inputs, or scores
        of the wrong width.
    """
    spec = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"task_metrics({task!r}): labels must be a non-empty [n] array, got shape {labels.shape}.")
    if predictions.ndim == 2 and predictions.shape[1] == spec.num_labels:
        predictions = predictions[:, 0] if spec.is_regression else predictions.argmax(axis=-1)  # [n]
    if predictions.shape != labels.shape:
        want = "[n] or [n, 1]" if spec.is_regression else f"[n] class ids or [n, {spec.num_labels}] scores"
        raise ValueError(
            f"task_metrics({task!r}): predictions shape {predictions.shape} does not fit labels {labels.shape}; "
            f"expected {want}."
        )
    if not spec.is_regression:
        for name, values in (("predictions", predictions), ("labels", labels)):
            if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
                raise ValueError(
                    f"task_metrics({task!r}): {name} must be class ids for a classification task, got "
                    f"non-integer values of dtype {values.dtype}; pass [n, {spec.num_labels}] scores to take argmax."
                )
        predictions, labels = predictions.astype(np.int64), labels.astype(np.int64)
    return {name: METRICS[name](predictions, labels) for name in spec.metrics}
