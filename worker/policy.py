"""Takedown policy: face-track scores and thresholds in, a decision and reason codes out.

Pure and deterministic, so that a verdict can be re-derived from its evidence during an
audit. The policy version names the thresholds, and every verdict carries it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .tracks import FaceTrack

TAKEDOWN = "takedown"
REVIEW = "review"
ALLOW = "allow"

KNOWN_CONTENT_MATCH = "known_content_match"
NO_FACES_DETECTED = "no_faces_detected"
NO_MODEL_CHECKPOINT = "no_model_checkpoint"
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
    video_score: float | None


def video_score(tracks: Sequence[FaceTrack]) -> float | None:
    """The most suspicious track decides: one faked face among real ones must not be diluted."""
    scores = [t.score for t in tracks if t.score is not None]
    return max(scores) if scores else None


def decide(policy: Policy, tracks: Sequence[FaceTrack], model_loaded: bool,
           known: KnownContentMatch | None = None) -> Decision:
    if known is not None:
        # Content already taken down: no model uncertainty. A score, if one was computed,
        # is evidence only.
        return Decision(TAKEDOWN, (KNOWN_CONTENT_MATCH,), video_score(tracks) if model_loaded else None)
    if not tracks:
        return Decision(ALLOW, (NO_FACES_DETECTED,), None)
    if not model_loaded:
        # Faces were found but nothing trustworthy scored them: a person decides.
        return Decision(REVIEW, (NO_MODEL_CHECKPOINT,), None)
    score = video_score(tracks)
    if score is None:
        raise ValueError("a model is loaded but no track has a score")
    if score >= policy.takedown_threshold:
        return Decision(TAKEDOWN, (SCORE_AT_OR_ABOVE_TAKEDOWN_THRESHOLD,), score)
    if score >= policy.review_threshold:
        return Decision(REVIEW, (SCORE_AT_OR_ABOVE_REVIEW_THRESHOLD,), score)
    return Decision(ALLOW, (SCORE_BELOW_REVIEW_THRESHOLD,), score)
