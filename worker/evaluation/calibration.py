"""Fitting a calibration: from a labelled validation run to a :class:`~worker.core.calibration.Calibration`.

Offline work (``python -m worker calibrate``), kept apart from applying a calibration, which
the worker does for every verdict (:mod:`worker.core.calibration`).
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from statistics import NormalDist
from typing import Any

import numpy as np

from worker.core.calibration import EPS, ISOTONIC, METHODS, TEMPERATURE, Calibration, CalibrationError
from worker.evaluation import metrics

#
# The map is fitted to raw video scores and labels (1 = fake); the thresholds are then chosen
# on the scores the map gives, computed with Calibration.apply itself, so that the policy
# compares exactly the numbers the thresholds were chosen on.

DEFAULT_TARGET_PRECISION = 0.99
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_CONFIDENCE = 0.95
TEMPERATURE_BOUNDS = (0.01, 100.0)


def _labelled(raw, labels):
    x = np.asarray(raw, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise CalibrationError("calibration needs as many labels as raw scores, at least one")
    if not np.isin(y, (0, 1)).all() or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise CalibrationError("labels must be 0/1 and raw scores finite in [0, 1]")
    if y.min() == y.max():
        raise CalibrationError("calibration needs both real and fake validation videos")
    return x, y.astype(np.float64)


def fit_temperature(raw, labels) -> float:
    """The temperature T minimising the log-loss of sigmoid(logit(raw) / T).

    The loss is convex in a = 1/T, so the root of its derivative is found by bisection
    (on log a). Scores that do not rank fakes above reals have no positive temperature;
    perfectly separated scores push T to the lower bound of ``TEMPERATURE_BOUNDS``.
    """
    x, y = _labelled(raw, labels)
    z = np.log(np.clip(x, EPS, 1 - EPS)) - np.log1p(-np.clip(x, EPS, 1 - EPS))

    def slope(a: float) -> float:  # d(loss)/da, increasing in a
        return float(np.sum((0.5 * (1 + np.tanh(a * z / 2)) - y) * z))

    lo, hi = math.log(1 / TEMPERATURE_BOUNDS[1]), math.log(1 / TEMPERATURE_BOUNDS[0])
    if slope(0.0) >= 0:
        raise CalibrationError("the raw scores do not rank fake videos above real ones: "
                               "no temperature can calibrate them")
    if slope(math.exp(lo)) >= 0:
        return TEMPERATURE_BOUNDS[1]
    if slope(math.exp(hi)) <= 0:
        return TEMPERATURE_BOUNDS[0]
    for _ in range(80):
        mid = (lo + hi) / 2
        if slope(math.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return 1 / math.exp((lo + hi) / 2)


def fit_isotonic(raw, labels) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The non-decreasing least-squares fit of labels on raw scores (pool adjacent
    violators, tied scores pooled first), as the fewest (x, y) points that reproduce it
    under :meth:`Calibration.apply`'s linear interpolation."""
    x, y = _labelled(raw, labels)
    xs, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y) / counts
    blocks: list[list[float]] = []  # [value, weight, first index, last index]
    for i, (value, weight) in enumerate(zip(means.tolist(), counts.tolist())):
        block = [value, float(weight), i, i]
        while blocks and blocks[-1][0] >= block[0]:
            prev = blocks.pop()
            total = prev[1] + block[1]
            block = [(prev[0] * prev[1] + block[0] * block[1]) / total, total, prev[2], block[3]]
        blocks.append(block)
    px: list[float] = []
    py: list[float] = []
    for value, _, first, last in blocks:
        value = min(max(value, 0.0), 1.0)
        for i in (first, last) if last > first else (first,):
            px.append(float(xs[i]))
            py.append(value)
    return tuple(px), tuple(py)


def precision_lower_bound(true_positive, flagged, confidence: float = DEFAULT_CONFIDENCE):
    """The one-sided Wilson lower confidence bound of a precision tp/flagged (elementwise);
    ``confidence`` <= 0.5 gives the point estimate."""
    tp = np.asarray(true_positive, dtype=np.float64)
    n = np.asarray(flagged, dtype=np.float64)
    p = tp / n
    z = NormalDist().inv_cdf(confidence) if confidence > 0.5 else 0.0
    if z == 0.0:
        return p
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def choose_thresholds(calibrated, labels, target_precision: float = DEFAULT_TARGET_PRECISION,
                      target_recall: float = DEFAULT_TARGET_RECALL,
                      confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """(takedown, review) on calibrated validation scores.

    ``takedown`` is the lowest score whose rule ``score >= t`` reaches ``target_precision``
    with the given ``confidence`` (the Wilson lower bound of its precision on the validation
    videos, so two lucky videos at the top do not make a 99 % claim); if none does, the
    calibration is refused (:class:`CalibrationError`): a model that cannot be shown to act
    precisely enough stays uncalibrated, and so never takes down on its own.
    ``review`` is the highest score whose rule still reaches ``target_recall``, lowered to
    ``takedown`` if it lies above it (everything at or above takedown is acted on anyway).
    """
    if not 0 < target_precision <= 1 or not 0 < target_recall <= 1:
        raise CalibrationError("target precision and recall must lie in (0, 1]")
    if not 0 <= confidence < 1:
        raise CalibrationError("the confidence must lie in [0, 1)")
    x, y = _labelled(calibrated, labels)
    order = np.argsort(-x, kind="mergesort")
    xs, ys = x[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(xs)), len(xs) - 1]  # ties enter together
    thresholds, tp, flagged = xs[last], np.cumsum(ys)[last], last + 1.0
    bound = precision_lower_bound(tp, flagged, confidence)
    reached = bound >= target_precision
    if not reached.any():
        best = int(bound.argmax())
        raise CalibrationError(
            f"no threshold reaches precision {target_precision} at confidence {confidence} on the "
            f"validation data ({int(y.sum())} fake, {int(len(y) - y.sum())} real videos; best lower "
            f"bound {bound[best]:.4f}: {int(tp[best])} of {int(flagged[best])} flagged videos fake at "
            f"{thresholds[best]:.4f}): refusing to calibrate, so the model cannot recommend "
            f"takedown on its own")
    takedown = float(thresholds[np.flatnonzero(reached)[-1]])
    recall = tp / y.sum()
    review = float(thresholds[np.flatnonzero(recall >= target_recall)[0]])
    return takedown, min(review, takedown)


def fit_calibration(raw, labels, method: str = TEMPERATURE,
                    target_precision: float = DEFAULT_TARGET_PRECISION,
                    target_recall: float = DEFAULT_TARGET_RECALL,
                    dataset: str = "", fitted_at: str | None = None,
                    confidence: float = DEFAULT_CONFIDENCE) -> Calibration:
    """Fit the map, choose both thresholds, and record the validation figures that justify
    them (TOML-serialisable: no null values)."""
    x, y = _labelled(raw, labels)
    if method == TEMPERATURE:
        shape: dict[str, Any] = {"temperature": fit_temperature(x, y)}
    elif method == ISOTONIC:
        px, py = fit_isotonic(x, y)
        shape = {"isotonic_x": px, "isotonic_y": py}
    else:
        raise CalibrationError(f"calibration method must be one of {METHODS}, not {method!r}")
    draft = Calibration(method, takedown_threshold=1.0, review_threshold=0.0, **shape)
    calibrated = np.array([draft.apply(float(v)) for v in x])
    takedown, review = choose_thresholds(calibrated, y, target_precision, target_recall, confidence)
    labels_int = y.astype(int)
    eer, _ = metrics.equal_error_rate(labels_int, x)
    figures: dict[str, Any] = {
        "dataset": dataset, "videos": int(len(y)), "fake_videos": int(y.sum()),
        "real_videos": int(len(y) - y.sum()),
        "auc": metrics.roc_auc(labels_int, x), "ap": metrics.average_precision(labels_int, x),
        "eer": eer, "log_loss_raw": metrics.log_loss(labels_int, x),
        "log_loss_calibrated": metrics.log_loss(labels_int, calibrated),
    }
    for name, threshold in (("takedown", takedown), ("review", review)):
        at = metrics.at_threshold(labels_int, calibrated, threshold)
        figures[f"{name}_precision"] = at.precision
        figures[f"{name}_recall"] = at.recall
        figures[f"{name}_videos"] = at.predicted_positive
        if name == "takedown":
            figures["takedown_precision_lower_bound"] = float(
                precision_lower_bound(at.true_positive, at.predicted_positive, confidence))
    figures["confidence"] = confidence
    figures["fitted_at"] = fitted_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Calibration(method, takedown_threshold=takedown, review_threshold=review,
                       target_precision=target_precision, target_recall=target_recall,
                       validation=figures, **shape)
