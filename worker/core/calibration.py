"""A model's calibration: how its raw video scores map to probabilities, and where it may act.

A detector's raw score is not a probability a platform can defend: a published checkpoint
run on another platform's uploads is over- or under-confident. A calibration is fitted on
the platform's own labelled validation run (``python -m worker calibrate``). It holds a
monotone map from raw to calibrated score (a temperature on the logit, or an isotonic
step map), the ``takedown`` threshold chosen for a target precision (which must hold at a
stated confidence, not just on a lucky handful of videos) and the ``review`` threshold chosen
for a target recall, and the validation figures that justify both.

The model acts on its own (``takedown``) only when it carries a calibration; see
:func:`worker.core.policy.decide`. It is stored as the ``[calibration]`` table of the model's
config file, in the form :meth:`Calibration.to_mapping` writes. Plain Python, no torch. Fitting one is offline work: :mod:`worker.evaluation.calibration`.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Mapping


TEMPERATURE = "temperature"
ISOTONIC = "isotonic"
METHODS = (TEMPERATURE, ISOTONIC)

EPS = 1e-7


class CalibrationError(ValueError):
    """A calibration table that cannot be used: unknown method, bad map or thresholds."""


def logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
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
