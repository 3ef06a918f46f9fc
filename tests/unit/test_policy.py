"""Takedown policy: track scores and thresholds in, decision and reason codes out."""
from __future__ import annotations

import pytest

from worker.policy import Policy, decide, video_score
from worker.tracks import Detection, FaceTrack


def track(track_id: int, *scores: float | None) -> FaceTrack:
    return FaceTrack(track_id, tuple(Detection(i, i / 25, (0, 0, 10, 10), 0.99, s)
                                     for i, s in enumerate(scores)))


def test_no_tracks_is_allowed_as_no_faces():
    decision = decide(Policy(), [], model_loaded=True)
    assert (decision.decision, decision.reasons, decision.video_score) == (
        "allow", ("no_faces_detected",), None)
    assert decide(Policy(), [], model_loaded=False).decision == "allow"


@pytest.mark.parametrize("policy", [Policy(), Policy(0.0, 0.0), Policy(0.5, 0.1)],
                         ids=["default", "zero-thresholds", "low-thresholds"])
@pytest.mark.parametrize("scores", [(None,), (0.0,), (0.6,), (1.0,), (1.0, 1.0, 0.99)])
def test_faces_without_a_model_go_to_review_never_takedown(policy, scores):
    decision = decide(policy, [track(0, *scores), track(1, 1.0)], model_loaded=False)
    assert (decision.decision, decision.reasons, decision.video_score) == (
        "review", ("no_model_checkpoint",), None)


@pytest.mark.parametrize("policy,score,expected,reason", [
    (Policy(), 0.9, "takedown", "score_at_or_above_takedown_threshold"),
    (Policy(), 1.0, "takedown", "score_at_or_above_takedown_threshold"),
    (Policy(), 0.8999, "review", "score_at_or_above_review_threshold"),
    (Policy(), 0.5, "review", "score_at_or_above_review_threshold"),
    (Policy(), 0.4999, "allow", "score_below_review_threshold"),
    (Policy(), 0.0, "allow", "score_below_review_threshold"),
    (Policy(0.75, 0.25), 0.75, "takedown", "score_at_or_above_takedown_threshold"),
    (Policy(0.75, 0.25), 0.25, "review", "score_at_or_above_review_threshold"),
    (Policy(0.75, 0.25), 0.2499, "allow", "score_below_review_threshold"),
    (Policy(0.7, 0.7), 0.7, "takedown", "score_at_or_above_takedown_threshold"),
])
def test_thresholds(policy, score, expected, reason):
    decision = decide(policy, [track(0, score)], model_loaded=True)
    assert (decision.decision, decision.reasons) == (expected, (reason,))
    assert decision.video_score == score


def test_a_track_whose_mean_lands_on_the_threshold_is_a_takedown():
    decision = decide(Policy(0.75, 0.25), [track(0, 0.5, 1.0)], model_loaded=True)
    assert (decision.decision, decision.video_score) == ("takedown", 0.75)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_the_most_suspicious_track_decides(order):
    tracks = [track(0, 0.05, 0.1), track(1, 0.2), track(2, 0.96, 0.94)]
    decision = decide(Policy(), [tracks[i] for i in order], model_loaded=True)
    assert decision.decision == "takedown"
    assert decision.video_score == pytest.approx(0.95)


def test_tracks_without_scores_do_not_count():
    assert video_score([track(0, None), track(1, 0.3)]) == 0.3
    assert video_score([track(0, None)]) is None


def test_a_model_that_scored_nothing_is_an_error_not_a_verdict():
    with pytest.raises(ValueError):
        decide(Policy(), [track(0, None)], model_loaded=True)


@pytest.mark.parametrize("takedown,review", [(0.5, 0.9), (1.1, 0.5), (0.9, -0.1), (-0.2, -0.5)])
def test_policy_rejects_bad_thresholds(takedown, review):
    with pytest.raises(ValueError):
        Policy(takedown_threshold=takedown, review_threshold=review)


def test_policy_version_names_the_thresholds():
    assert Policy().version == Policy(0.9, 0.5).version
    versions = {Policy(t, r).version for t, r in [(0.9, 0.5), (0.95, 0.5), (0.9, 0.6), (0.8, 0.5),
                                                  (0.5, 0.5), (0.91, 0.5)]}
    assert len(versions) == 6


def test_policy_version_tells_calibrated_thresholds_apart():
    # Thresholds calibrated to a target false-positive rate carry many digits; two
    # calibrations that decide a score differently must not share a version.
    old, new = Policy(0.93718254, 0.5), Policy(0.93718311, 0.5)
    score = [track(0, 0.9371828)]
    assert decide(old, score, True).decision != decide(new, score, True).decision
    assert old.version != new.version
