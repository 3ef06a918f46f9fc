"""Face tracks: the same face followed across the sampled frames.

A video's score comes from per-identity tracks rather than from a flat list of faces, so
one faked face among several real ones is not averaged away, and the verdict's evidence
points at a track a reviewer can follow. Association is greedy IoU between consecutive
sampled frames: plain Python, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean
from typing import Iterable, Sequence

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One face in one sampled frame; ``score`` is the classifier's, None if none ran.

    ``member_scores`` are the scores of each ensemble member (``score`` is their mean);
    the track aggregation uses them, the verdict does not carry them.
    """

    frame_index: int
    timestamp_s: float
    box: Box
    confidence: float
    score: float | None = None
    member_scores: tuple[float, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class FaceTrack:
    """``aggregated`` is the model's aggregation of the faces' scores
    (:func:`worker.core.aggregation.score_tracks`); without one, the score is their mean."""

    track_id: int
    detections: tuple[Detection, ...]
    aggregated: float | None = None

    @property
    def score(self) -> float | None:
        if self.aggregated is not None:
            return self.aggregated
        scores = [d.score for d in self.detections if d.score is not None]
        return fmean(scores) if scores else None


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def link_tracks(detections: Iterable[Detection], sampled_frames: Sequence[int],
                min_iou: float = 0.3, max_gap: int = 2) -> tuple[FaceTrack, ...]:
    """Group detections into tracks.

    A detection joins the open track whose last box overlaps it most (IoU >= ``min_iou``),
    if that track was seen at most ``max_gap`` sampled frames earlier; else it opens a track.
    """
    rank = {frame: i for i, frame in enumerate(sampled_frames)}
    by_frame: dict[int, list[Detection]] = {}
    for det in detections:
        by_frame.setdefault(det.frame_index, []).append(det)
    tracks: list[list[Detection]] = []
    for frame in sorted(by_frame, key=lambda f: rank[f]):
        here = rank[frame]
        open_tracks = [t for t in tracks if here - rank[t[-1].frame_index] <= max_gap]
        pairs = sorted(((iou(t[-1].box, d.box), ti, di)
                        for ti, t in enumerate(open_tracks)
                        for di, d in enumerate(by_frame[frame])), reverse=True)
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        for overlap, ti, di in pairs:
            if overlap < min_iou:
                break
            if ti in used_tracks or di in used_dets:
                continue
            open_tracks[ti].append(by_frame[frame][di])
            used_tracks.add(ti)
            used_dets.add(di)
        for di, det in enumerate(by_frame[frame]):
            if di not in used_dets:
                tracks.append([det])
    return tuple(FaceTrack(track_id=i, detections=tuple(t)) for i, t in enumerate(tracks))
