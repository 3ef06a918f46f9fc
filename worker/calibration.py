"""A model's calibration: how its raw video scores map to probabilities, and where it may act.

A detector's raw score is not a probability a platform can defend: a published checkpoint
run on another platform's uploads is over- or under-confident. A calibration is fitted on
the platform's own labelled validation run (``python -m worker calibrate``). It holds a
monotone map from raw to calibrated score (a temperature on the logit, or an isotonic
step map), the ``takedown`` threshold chosen for a target precision (which must hold at a
stated confidence, not just on a lucky handful of videos) and the ``review`` threshold chosen
for a target recall, and the validation figures that justify both.

The model acts on its own (``takedown``) only when it carries a calibration; see
:func:`worker.policy.decide`. It is stored as the ``[calibration]`` table of the model's
config file, in the form :meth:`Calibration.to_mapping` writes. Plain Python, no torch.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Mapping

import numpy as np

TEMPERATURE = "temperature"
ISOTONIC = "isotonic"
METHODS = (TEMPERATURE, ISOTONIC)

_EPS = 1e-7


class CalibrationError(ValueError):
    """A calibration table that cannot be used: unknown method, bad map or thresholds."""


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    z = math.exp(x)
    return z / (1 + z)


@dataclass(frozen=True)
class Calibration:
    """``temperature``: calibrated = sigmoid(logit(raw) / temperature).
    ``isotonic``: a non-decreasing piecewise-linear map through the points
    (``isotonic_x``, ``isotonic_y``), flat beyond the ends.
    Both thresholds apply to calibrated scores."""

    method: str
    takedown_threshold: float
    review_threshold: float
    temperature: float = 1.0
    isotonic_x: tuple[float, ...] = ()
    isotonic_y: tuple[float, ...] = ()
    target_precision: float | None = None
    target_recall: float | None = None
    validation: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise CalibrationError(f"calibration method must be one of {METHODS}, not {self.method!r}")
        if not 0.0 <= self.review_threshold <= self.takedown_threshold <= 1.0:
            raise CalibrationError("calibration thresholds must satisfy 0 <= review <= takedown <= 1")
        if self.method == TEMPERATURE and not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise CalibrationError("the temperature must be a positive finite number")
        if self.method == ISOTONIC:
            xs, ys = self.isotonic_x, self.isotonic_y
            if len(xs) < 1 or len(xs) != len(ys):
                raise CalibrationError("an isotonic map needs as many x as y points, at least one")
            if any(b < a for a, b in zip(xs, xs[1:])) or any(b < a for a, b in zip(ys, ys[1:])):
                raise CalibrationError("an isotonic map must be non-decreasing in x and in y")
            if not all(0.0 <= v <= 1.0 for v in (*xs, *ys)):
                raise CalibrationError("isotonic map points must lie in [0, 1]")

    def apply(self, raw: float) -> float:
        """The calibrated probability of a raw video score."""
        if self.method == TEMPERATURE:
            return sigmoid(logit(raw) / self.temperature)
        xs, ys = self.isotonic_x, self.isotonic_y
        if raw <= xs[0]:
            return ys[0]
        if raw >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, raw)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (raw - x0) / (x1 - x0)

    @property
    def version(self) -> str:
        """Names the map and thresholds, for the verdict's policy version."""
        if self.method == TEMPERATURE:
            shape = f"T={self.temperature!r}"
        else:
            shape = f"points={len(self.isotonic_x)}"
        return (f"{self.method}:{shape},takedown={self.takedown_threshold!r},"
                f"review={self.review_threshold!r}")

    def to_mapping(self) -> dict[str, Any]:
        """The ``[calibration]`` table of a model config file (TOML-serialisable)."""
        out: dict[str, Any] = {"method": self.method,
                               "takedown_threshold": self.takedown_threshold,
                               "review_threshold": self.review_threshold}
        if self.method == TEMPERATURE:
            out["temperature"] = self.temperature
        else:
            out["isotonic_x"] = list(self.isotonic_x)
            out["isotonic_y"] = list(self.isotonic_y)
        if self.target_precision is not None:
            out["target_precision"] = self.target_precision
        if self.target_recall is not None:
            out["target_recall"] = self.target_recall
        if self.validation:
            out["validation"] = dict(self.validation)
        return out

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> "Calibration":
        known = {"method", "takedown_threshold", "review_threshold", "temperature", "isotonic_x",
                 "isotonic_y", "target_precision", "target_recall", "validation"}
        unknown = set(table) - known
        if unknown:
            raise CalibrationError(f"unknown calibration keys: {sorted(unknown)}")
        for key in ("method", "takedown_threshold", "review_threshold"):
            if key not in table:
                raise CalibrationError(f"the calibration table needs {key!r}")
        try:
            return cls(
                method=str(table["method"]),
                takedown_threshold=float(table["takedown_threshold"]),
                review_threshold=float(table["review_threshold"]),
                temperature=float(table.get("temperature", 1.0)),
                isotonic_x=tuple(float(v) for v in table.get("isotonic_x", ())),
                isotonic_y=tuple(float(v) for v in table.get("isotonic_y", ())),
                target_precision=(None if table.get("target_precision") is None
                                  else float(table["target_precision"])),
                target_recall=None if table.get("target_recall") is None else float(table["target_recall"]),
                validation=dict(table.get("validation", {})),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"bad calibration table: {exc}") from None


# ---- Fitting: from a labelled validation run to a Calibration --------------------------
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
    z = np.log(np.clip(x, _EPS, 1 - _EPS)) - np.log1p(-np.clip(x, _EPS, 1 - _EPS))

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
    from datetime import datetime, timezone

    from .evaluation import metrics

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
