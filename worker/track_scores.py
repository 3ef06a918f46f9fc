"""A face track's score from its faces' scores, with the model's own aggregation.

A published detector's video score is its authors' aggregation over the face scores of the
sampled frames (the DFDC winner's ``confident_strategy``); running it differently changes
the accuracy it was published with. The worker applies that aggregation per face track
(one identity) instead of over the whole video, so one faked face among real ones is not
averaged away, and the video score is the most suspicious track's (see
:func:`worker.policy.video_score`). For an ensemble, each member's faces are aggregated
separately and the members' track scores are averaged, as the winner averaged its models'
video scores. Plain Python, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from .models.aggregation import METHODS, aggregate, ensemble  # numpy only, no torch
from .tracks import FaceTrack

CONFIDENT_STRATEGY = "confident_strategy"
MEAN = "mean"
AGGREGATIONS = tuple(METHODS)


@dataclass(frozen=True)
class Aggregation:
    method: str = MEAN
    threshold: float = 0.8   # confident_strategy's t; unused by mean and max

    def __post_init__(self):
        if self.method not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {self.method!r}")

    @property
    def label(self) -> str:
        """As the verdict names it."""
        return f"{self.method}(t={self.threshold!r})" if self.method == CONFIDENT_STRATEGY else self.method

    def apply(self, scores: Sequence[float]) -> float:
        return aggregate(self.method, scores, self.threshold)


def score_tracks(tracks: Sequence[FaceTrack], aggregation: Aggregation) -> tuple[FaceTrack, ...]:
    """The tracks with their ``aggregated`` score set from their detections' member scores."""
    scored = []
    for track in tracks:
        members = [d.member_scores for d in track.detections if d.member_scores]
        if not members:
            scored.append(track)
            continue
        count = len(members[0])
        if any(len(m) != count for m in members):
            raise ValueError("every detection needs one score per ensemble member")
        per_member = [aggregation.apply([m[i] for m in members]) for i in range(count)]
        scored.append(replace(track, aggregated=ensemble(per_member)))
    return tuple(scored)
