"""The evaluation report: video- and frame-level figures from the predictions, as JSON.

Video level is what the platform acts on (one score per upload). Frame level counts every
sampled face's score with its video's label, the figure most papers quote, and shows
whether the aggregation over a video's faces helps. A figure that the data cannot give
(one class only, say) is null with the reason in ``notes``, never a made-up number.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from worker.core.calibration import Calibration
from worker.evaluation import metrics
from worker.evaluation.predictions import FAILED, NO_FACES, SCORED, VideoPrediction


def level_figures(labels: Sequence[int], scores: Sequence[float],
                  thresholds: Mapping[str, float]) -> dict[str, Any]:
    """AUC, EER, AP, log-loss, and precision/recall at each named threshold."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"count": int(len(y)), "fake": int(y.sum()), "real": int(len(y) - y.sum())}
    notes: list[str] = []
    if len(y) == 0:
        return {**out, "auc": None, "eer": None, "eer_threshold": None, "average_precision": None,
                "log_loss": None, "at_thresholds": {}, "notes": ["no scored predictions"]}
    both = 0 < y.sum() < len(y)
    out["auc"] = metrics.roc_auc(y, s) if both else None
    eer = metrics.equal_error_rate(y, s) if both else (None, None)
    out["eer"], out["eer_threshold"] = eer
    out["average_precision"] = metrics.average_precision(y, s) if y.sum() else None
    out["log_loss"] = metrics.log_loss(y, s)
    if not both:
        notes.append("AUC and EER need both real and fake examples")
    if not y.sum():
        notes.append("average precision and recall need fake examples")
    out["at_thresholds"] = {
        name: vars(metrics.at_threshold(y, s, value)) for name, value in thresholds.items()}
    out["notes"] = notes
    return out


def roc_points(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0 or y.min() == y.max():
        return None
    fpr, tpr, _ = metrics.roc_curve(y, scores)
    return fpr, tpr


def video_arrays(predictions: Sequence[VideoPrediction],
                 no_face_score: float | None = None) -> tuple[list[int], list[float]]:
    """Labels and raw video scores; a video without faces counts with ``no_face_score``
    when one is given, else it is left out (and listed in the report)."""
    labels, scores = [], []
    for p in predictions:
        if p.status == SCORED:
            labels.append(p.label)
            scores.append(p.video_score)
        elif p.status == NO_FACES and no_face_score is not None:
            labels.append(p.label)
            scores.append(no_face_score)
    return labels, scores


def face_arrays(predictions: Sequence[VideoPrediction]) -> tuple[list[int], list[float]]:
    labels, scores = [], []
    for p in predictions:
        if p.status == SCORED:
            labels += [p.label] * len(p.face_scores)
            scores += list(p.face_scores)
    return labels, scores


def build_report(predictions: Sequence[VideoPrediction], thresholds: Mapping[str, float],
                 dataset: Mapping[str, Any], model: Mapping[str, Any],
                 calibration: Calibration | None = None,
                 no_face_score: float | None = None) -> dict[str, Any]:
    """The report for one dataset and one model (predictions in dataset order)."""
    v_labels, v_scores = video_arrays(predictions, no_face_score)
    f_labels, f_scores = face_arrays(predictions)
    report: dict[str, Any] = {
        "dataset": dict(dataset),
        "model": dict(model),
        "videos": {
            "total": len(predictions),
            "scored": sum(p.status == SCORED for p in predictions),
            "no_faces": sum(p.status == NO_FACES for p in predictions),
            "failed": sum(p.status == FAILED for p in predictions),
            "in_video_metrics": len(v_labels),
        },
        "no_face_score": no_face_score,
        "thresholds": dict(thresholds),
        "video_level": level_figures(v_labels, v_scores, thresholds),
        "frame_level": level_figures(f_labels, f_scores, thresholds),
        "failed": [{"path": p.key, "reason": p.reason, "message": p.message}
                   for p in predictions if p.status == FAILED],
        "no_faces": [p.key for p in predictions if p.status == NO_FACES],
    }
    if calibration is not None:
        # The policy compares calibrated scores with the calibration's own thresholds.
        calibrated = [calibration.apply(s) for s in v_scores]
        report["video_level_calibrated"] = {
            "calibration": calibration.version,
            **level_figures(v_labels, calibrated, {"takedown": calibration.takedown_threshold,
                                                   "review": calibration.review_threshold})}
    return report
