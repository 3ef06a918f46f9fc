"""Face scores -> track and video scores: the rules a model file's ``[aggregation]`` names.

A published detector's video score is its authors' aggregation over the face scores of the
sampled frames (the DFDC winner's ``confident_strategy``); running it differently changes
the accuracy it was published with. The worker applies that aggregation per face track
(one identity) instead of over the whole video, so one faked face among real ones is not
averaged away, and the video score is the most suspicious track's (see
:func:`worker.core.policy.video_score`). For an ensemble, each member's faces are aggregated
separately and the members' track scores are averaged, as the winner averaged its models'
video scores.

``confident_strategy`` is the DFDC winner's rule (selimsef/dfdc_deepfake_challenge,
``kernel_utils.py``), restated from its published behaviour: when many faces are confidently
fake the video is scored by those faces alone, when nearly all are confidently real by those
alone, otherwise by the mean. Pure numpy, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from worker.core.tracks import FaceTrack

#: more than this many confident fakes are needed (besides more than len // 2.5) to trust them
MIN_CONFIDENT_FAKES = 11
#: a face under this score is confidently real
CONFIDENT_REAL = 0.2
#: share of confidently real faces above which only they count
REAL_SHARE = 0.9


def _scores(preds: Sequence[float] | np.ndarray) -> np.ndarray:
    scores = np.asarray(preds, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("no face scores to aggregate")
    if not np.all(np.isfinite(scores)):
        raise ValueError("face scores must be finite")
    return scores


def confident_strategy(preds: Sequence[float] | np.ndarray, t: float = 0.8) -> float:
    """The winner's video score from its faces' fake probabilities.

    Faces above ``t`` count as confident fakes; if there are more than ``len // 2.5`` of them
    (float floor division, as published) and more than 11, the score is their mean. Else, if
    more than 90 % of faces are under 0.2, it is the mean of those. Else the plain mean.
    """
    scores = _scores(preds)
    size = scores.size
    fakes = scores[scores > t]
    if fakes.size > size // 2.5 and fakes.size > MIN_CONFIDENT_FAKES:
        return float(fakes.mean())
    reals = scores[scores < CONFIDENT_REAL]
    if reals.size > REAL_SHARE * size:
        return float(reals.mean())
    return float(scores.mean())


def mean(preds: Sequence[float] | np.ndarray) -> float:
    return float(_scores(preds).mean())


def maximum(preds: Sequence[float] | np.ndarray) -> float:
    return float(_scores(preds).max())


def ensemble(video_scores: Sequence[float]) -> float:
    """Several checkpoints' video scores -> one: their mean, as the winner averaged its models."""
    return mean(video_scores)


#: the names a model file's ``aggregation.method`` may use
METHODS: dict[str, Callable[..., float]] = {
    "confident_strategy": confident_strategy, "mean": mean, "max": maximum}


def aggregate(method: str, preds: Sequence[float] | np.ndarray, threshold: float = 0.8) -> float:
    """Apply the named method; ``threshold`` is used by ``confident_strategy`` only."""
    if method not in METHODS:
        raise ValueError(f"unknown aggregation method {method!r}; expected one of {sorted(METHODS)}")
    if method == "confident_strategy":
        return confident_strategy(preds, threshold)
    return METHODS[method](preds)


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
