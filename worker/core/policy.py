"""Takedown policy: face-track scores and thresholds in, a decision and reason codes out.

Pure and deterministic, so that a verdict can be re-derived from its evidence during an
audit. The policy version names the thresholds, and every verdict carries it.

A model acts on its own (``takedown``) only when its model file carries a calibration
fitted on the platform's labelled data: its thresholds then apply to the calibrated score,
and the policy version names the calibration. An uncalibrated model's raw score is not a
probability anyone can defend, so its highest outcome is ``review`` (``model_uncalibrated``);
the ``[policy]`` thresholds still sort its scores into review and allow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from worker.core.calibration import Calibration
from worker.core.tracks import FaceTrack

TAKEDOWN = "takedown"
REVIEW = "review"
ALLOW = "allow"

KNOWN_CONTENT_MATCH = "known_content_match"
NO_FACES_DETECTED = "no_faces_detected"
NO_MODEL_CHECKPOINT = "no_model_checkpoint"
MODEL_UNCALIBRATED = "model_uncalibrated"
SCORE_AT_OR_ABOVE_TAKEDOWN_THRESHOLD = "score_at_or_above_takedown_threshold"
SCORE_AT_OR_ABOVE_REVIEW_THRESHOLD = "score_at_or_above_review_threshold"
SCORE_BELOW_REVIEW_THRESHOLD = "score_below_review_threshold"


@dataclass(frozen=True)
class Policy:
    takedown_threshold: float = 0.9
    review_threshold: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.review_threshold <= self.takedown_threshold <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= review <= takedown <= 1")

    @property
    def version(self) -> str:
        # repr is the shortest exact form: two different thresholds never share a version.
        return f"thresholds-v1:takedown={self.takedown_threshold!r},review={self.review_threshold!r}"


@dataclass(frozen=True)
class KnownContentMatch:
    """The upload matched an entry of the known-content (positive) hash bank."""

    entry_id: str
    source_video_id: str | None
    query_match_percent: float   # share of the upload's frames that matched the entry
    entry_match_percent: float   # share of the entry's frames that the upload matched
    median_distance: float       # median PDQ Hamming distance of the matched frame pairs


@dataclass(frozen=True)
class Decision:
    decision: str
    reasons: tuple[str, ...]
    video_score: float | None           # calibrated when the model has a calibration, else raw
    raw_video_score: float | None = None
    track_id: int | None = None         # the track whose score is the video score


def policy_version(policy: Policy, calibration: Calibration | None) -> str:
    """What the verdict's thresholds were: the calibration's when the model has one."""
    return f"calibrated-v1:{calibration.version}" if calibration is not None else policy.version


def decisive_track(tracks: Sequence[FaceTrack]) -> FaceTrack | None:
    """The most suspicious track: one faked face among real ones must not be diluted."""
    scored = [t for t in tracks if t.score is not None]
    return max(scored, key=lambda t: t.score) if scored else None


def video_score(tracks: Sequence[FaceTrack]) -> float | None:
    """The raw video score: the most suspicious track's."""
    track = decisive_track(tracks)
    return None if track is None else track.score


def decide(policy: Policy, tracks: Sequence[FaceTrack], model_loaded: bool,
           known: KnownContentMatch | None = None,
           calibration: Calibration | None = None) -> Decision:
    """``calibration`` is the loaded model's (None: the model is uncalibrated)."""
    track = decisive_track(tracks) if model_loaded else None
    raw = None if track is None else track.score
    score = raw if raw is None or calibration is None else calibration.apply(raw)
    track_id = None if track is None else track.track_id
    if known is not None:
        # Content already taken down: no model uncertainty. A score, if one was computed,
        # is evidence only.
        return Decision(TAKEDOWN, (KNOWN_CONTENT_MATCH,), score, raw, track_id)
    if not tracks:
        return Decision(ALLOW, (NO_FACES_DETECTED,), None)
    if not model_loaded:
        # Faces were found but nothing trustworthy scored them: a person decides.
        return Decision(REVIEW, (NO_MODEL_CHECKPOINT,), None)
    if score is None:
        raise ValueError("a model is loaded but no track has a score")
    if calibration is not None:
        takedown, review = calibration.takedown_threshold, calibration.review_threshold
    else:
        takedown, review = policy.takedown_threshold, policy.review_threshold
    if score >= takedown:
        if calibration is None:
            return Decision(REVIEW, (MODEL_UNCALIBRATED,), score, raw, track_id)
        return Decision(TAKEDOWN, (SCORE_AT_OR_ABOVE_TAKEDOWN_THRESHOLD,), score, raw, track_id)
    if score >= review:
        return Decision(REVIEW, (SCORE_AT_OR_ABOVE_REVIEW_THRESHOLD,), score, raw, track_id)
    return Decision(ALLOW, (SCORE_BELOW_REVIEW_THRESHOLD,), score, raw, track_id)
