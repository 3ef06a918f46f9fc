"""Detection metrics over (label, score) pairs, in numpy: ROC, AUC, EER, AP, log-loss.

The evaluation reports these for the platform's own labelled videos, and calibration picks
thresholds from them, so they must mean exactly what the literature's tables mean: the
definitions are scikit-learn's (a test checks the agreement), but the worker does not
depend on scikit-learn to run. Labels are 1 = fake (the positive class), 0 = real; a
score is the model's probability that the video (or face) is fake; a prediction is
positive when ``score >= threshold``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_LOSS_EPS = 1e-7


class MetricError(ValueError):
    """The labels and scores cannot give this metric (one class only, bad shapes, NaN)."""


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise MetricError("labels and scores must be 1-D and of the same length")
    if len(y) == 0:
        raise MetricError("no predictions")
    if not np.isin(y, (0, 1)).all():
        raise MetricError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(s).all():
        raise MetricError("scores must be finite")
    return y.astype(np.int64), s


def _two_classes(y: np.ndarray) -> None:
    if y.min() == y.max():
        raise MetricError("the metric needs both real and fake examples")


@dataclass(frozen=True)
class Curve:
    """Cumulative counts at each distinct score, from the highest down."""

    thresholds: np.ndarray      # distinct scores, decreasing
    true_positives: np.ndarray  # fakes with score >= threshold
    false_positives: np.ndarray  # reals with score >= threshold
    positives: int
    negatives: int


def _curve(y: np.ndarray, s: np.ndarray) -> Curve:
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # The last index of each run of equal scores: ties enter the curve together.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return Curve(s[last], tps, fps, int(y.sum()), int(len(y) - y.sum()))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), every distinct score a point, starting at (0, 0) with an
    infinite threshold (scikit-learn's ``roc_curve(drop_intermediate=False)``)."""
    y, s = _check(labels, scores)
    _two_classes(y)
    c = _curve(y, s)
    fpr = np.r_[0.0, c.false_positives / c.negatives]
    tpr = np.r_[0.0, c.true_positives / c.positives]
    return fpr, tpr, np.r_[np.inf, c.thresholds]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (trapezoids, so tied scores count one half)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def equal_error_rate(labels, scores) -> tuple[float, float]:
    """(EER, threshold): where the false-positive rate equals the false-negative rate on the
    ROC curve, linear between its points; the threshold is the score of the curve point
    at or just past the crossing."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.flatnonzero(fnr <= fpr)[0])  # exists: the last point has fpr = 1, fnr = 0
    if i == 0 or fnr[i] == fpr[i]:
        return float(fpr[i]), float(thresholds[i])
    # On the segment from point i-1 to i, fpr - fnr goes from negative to positive.
    d0, d1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    t = -d0 / (d1 - d0)
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1])), float(thresholds[i])


def average_precision(labels, scores) -> float:
    """AP = sum over thresholds of (R_n - R_{n-1}) * P_n: the step-wise area under the
    precision-recall curve, without interpolation (as scikit-learn defines it)."""
    y, s = _check(labels, scores)
    c = _curve(y, s)
    if c.positives == 0:
        raise MetricError("average precision needs at least one fake example")
    precision = c.true_positives / (c.true_positives + c.false_positives)
    recall = c.true_positives / c.positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(labels, scores, eps: float = LOG_LOSS_EPS) -> float:
    """Mean binary cross-entropy, scores clipped to [eps, 1 - eps] so that a confident
    mistake costs a lot but not infinity."""
    y, s = _check(labels, scores)
    p = np.clip(s, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclass(frozen=True)
class AtThreshold:
    threshold: float
    precision: float | None   # None when nothing scores at or above the threshold
    recall: float | None      # None when there is no fake example
    predicted_positive: int
    true_positive: int
    false_positive: int


def at_threshold(labels, scores, threshold: float) -> AtThreshold:
    """Precision and recall of the rule ``score >= threshold``."""
    y, s = _check(labels, scores)
    flagged = s >= threshold
    tp = int(np.sum(flagged & (y == 1)))
    fp = int(np.sum(flagged & (y == 0)))
    positives = int(y.sum())
    return AtThreshold(
        threshold=float(threshold),
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / positives if positives else None,
        predicted_positive=tp + fp, true_positive=tp, false_positive=fp)


def precision_recall_by_threshold(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds decreasing, precision, recall) of ``score >= t`` at every distinct score."""
    y, s = _check(labels, scores)
    c = _curve(y, s)
    precision = c.true_positives / (c.true_positives + c.false_positives)
    recall = c.true_positives / c.positives if c.positives else np.full(len(c.thresholds), np.nan)
    return c.thresholds, precision, recall
