"""Face tracks: IoU and linking detections across sampled frames."""
from __future__ import annotations

import pytest

from worker.core.tracks import Detection, FaceTrack, iou, link_tracks


def det(frame: int, box, score=None) -> Detection:
    return Detection(frame, frame / 25, tuple(float(c) for c in box), 0.99, score)


@pytest.mark.parametrize("a,b,expected", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),          # edges touch, no area in common
    ((0, 0, 2, 2), (1, 0, 3, 2), 1 / 3),             # half of each overlaps
    ((0, 0, 4, 4), (1, 1, 3, 3), 0.25),              # one inside the other
    ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),               # degenerate boxes
])
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_a_face_moving_slowly_is_one_track():
    frames = list(range(0, 100, 10))
    detections = [det(f, (100 + 2 * i, 50 + i, 160 + 2 * i, 120 + i)) for i, f in enumerate(frames)]
    tracks = link_tracks(detections, frames)
    assert len(tracks) == 1
    assert tracks[0].track_id == 0
    assert tracks[0].detections == tuple(detections)


def test_two_far_apart_faces_are_two_tracks():
    frames = [0, 8, 16, 24]
    left = [det(f, (10 + i, 10, 60 + i, 70)) for i, f in enumerate(frames)]
    right = [det(f, (300 - i, 12, 350 - i, 72)) for i, f in enumerate(frames)]
    interleaved = [d for pair in zip(right, left) for d in pair]
    tracks = link_tracks(interleaved, frames)
    assert {t.detections for t in tracks} == {tuple(left), tuple(right)}
    assert [t.track_id for t in tracks] == [0, 1]


def test_input_order_does_not_matter():
    frames = [0, 5, 10, 15]
    detections = [det(f, (10 + f, 10, 60 + f, 70)) for f in frames]
    assert link_tracks(detections, frames) == link_tracks(detections[::-1], frames)


@pytest.mark.parametrize("max_gap", [1, 2, 3])
def test_a_gap_larger_than_max_gap_opens_a_new_track(max_gap):
    # the gap counts sampled frames, not frame indices: frames 0..90 step 10 are ranks 0..9
    frames = list(range(0, 100, 10))
    box = (40, 40, 90, 100)
    joined = link_tracks([det(0, box), det(10 * max_gap, box)], frames, max_gap=max_gap)
    split = link_tracks([det(0, box), det(10 * (max_gap + 1), box)], frames, max_gap=max_gap)
    assert [len(t.detections) for t in joined] == [2]
    assert [len(t.detections) for t in split] == [1, 1]
    assert [t.detections[0].frame_index for t in split] == [0, 10 * (max_gap + 1)]


def test_a_face_that_jumps_away_opens_a_new_track():
    tracks = link_tracks([det(0, (0, 0, 50, 50)), det(1, (200, 200, 250, 250))], [0, 1])
    assert len(tracks) == 2


def test_one_detection_joins_only_one_track():
    # two faces overlapping the same earlier face: the better overlap continues the track
    frames = [0, 1]
    first = det(0, (0, 0, 100, 100))
    close, farther = det(1, (5, 0, 105, 100)), det(1, (40, 0, 140, 100))
    tracks = link_tracks([first, farther, close], frames)
    assert tracks[0].detections == (first, close)
    assert tracks[1].detections == (farther,)


def test_track_score_is_the_mean_of_its_detection_scores():
    assert FaceTrack(0, (det(0, (0, 0, 1, 1), 0.2), det(1, (0, 0, 1, 1), 0.4),
                         det(2, (0, 0, 1, 1), 0.9))).score == pytest.approx(0.5)
    assert FaceTrack(0, (det(0, (0, 0, 1, 1), 0.2), det(1, (0, 0, 1, 1), None))).score == pytest.approx(0.2)
    assert FaceTrack(0, (det(0, (0, 0, 1, 1), None),)).score is None


def test_linked_track_score_comes_from_its_own_detections():
    frames = [0, 1, 2]
    fake = [det(f, (10, 10, 60, 70), s) for f, s in zip(frames, (0.9, 0.8, 1.0))]
    real = [det(f, (300, 10, 350, 70), s) for f, s in zip(frames, (0.1, 0.0, 0.2))]
    scores = sorted(t.score for t in link_tracks(fake + real, frames))
    assert scores == pytest.approx([0.1, 0.9])
