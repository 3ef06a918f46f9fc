"""A track's score from its faces' member scores, with the model file's aggregation."""
from __future__ import annotations

import pytest

from worker.core.aggregation import Aggregation, score_tracks
from worker.core.tracks import Detection, FaceTrack


def track(track_id: int, *members: tuple[float, ...]) -> FaceTrack:
    return FaceTrack(track_id, tuple(Detection(i, i / 25, (0, 0, 10, 10), 0.99, sum(m) / len(m), m)
                                     for i, m in enumerate(members)))


@pytest.mark.parametrize("method,expected", [("mean", 0.4), ("max", 0.6)])
def test_each_member_is_aggregated_then_the_members_averaged(method, expected):
    # member 1 saw 0.1 and 0.5 (mean 0.3, max 0.5); member 2 saw 0.3 and 0.7 (mean 0.5, max 0.7)
    (scored,) = score_tracks([track(0, (0.1, 0.3), (0.5, 0.7))], Aggregation(method))
    assert scored.score == pytest.approx(expected)
    assert scored.detections[1].score == pytest.approx(0.6)  # the evidence: the members' mean


def test_unscored_tracks_keep_no_score_and_the_label_names_the_rule():
    (unscored,) = score_tracks([FaceTrack(0, (Detection(0, 0.0, (0, 0, 5, 5), 0.9),))], Aggregation())
    assert unscored.score is None
    assert Aggregation("confident_strategy", 0.8).label == "confident_strategy(t=0.8)"
    assert Aggregation("max").label == "max"


def test_detections_with_different_member_counts_are_an_error():
    with pytest.raises(ValueError, match="one score per ensemble member"):
        score_tracks([track(0, (0.1, 0.2), (0.3,))], Aggregation("mean"))


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        Aggregation("median")
