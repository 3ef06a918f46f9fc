"""Takedown policy: track scores and thresholds in, decision and reason codes out."""
from __future__ import annotations

import pytest

from worker.core.calibration import Calibration
from worker.core.policy import Policy, decide, policy_version, video_score
from worker.core.tracks import Detection, FaceTrack
from worker.testing.fakes import identity_calibration


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


@pytest.mark.parametrize("thresholds,score,expected,reason", [
    ((0.9, 0.5), 0.9, "takedown", "score_at_or_above_takedown_threshold"),
    ((0.9, 0.5), 1.0, "takedown", "score_at_or_above_takedown_threshold"),
    ((0.9, 0.5), 0.8999, "review", "score_at_or_above_review_threshold"),
    ((0.9, 0.5), 0.5, "review", "score_at_or_above_review_threshold"),
    ((0.9, 0.5), 0.4999, "allow", "score_below_review_threshold"),
    ((0.9, 0.5), 0.0, "allow", "score_below_review_threshold"),
    ((0.75, 0.25), 0.75, "takedown", "score_at_or_above_takedown_threshold"),
    ((0.75, 0.25), 0.25, "review", "score_at_or_above_review_threshold"),
    ((0.75, 0.25), 0.2499, "allow", "score_below_review_threshold"),
    ((0.7, 0.7), 0.7, "takedown", "score_at_or_above_takedown_threshold"),
])
def test_a_calibrated_model_decides_with_the_calibration_thresholds(thresholds, score, expected, reason):
    # The [policy] thresholds are set apart on purpose: a calibration's own apply.
    decision = decide(Policy(0.99, 0.98), [track(0, score)], model_loaded=True,
                      calibration=identity_calibration(*thresholds))
    assert (decision.decision, decision.reasons) == (expected, (reason,))
    assert decision.video_score == decision.raw_video_score == score


@pytest.mark.parametrize("policy,score,expected,reason", [
    (Policy(), 0.9, "review", "model_uncalibrated"),
    (Policy(), 1.0, "review", "model_uncalibrated"),
    (Policy(), 0.8999, "review", "score_at_or_above_review_threshold"),
    (Policy(), 0.5, "review", "score_at_or_above_review_threshold"),
    (Policy(), 0.4999, "allow", "score_below_review_threshold"),
    (Policy(0.75, 0.25), 0.75, "review", "model_uncalibrated"),
    (Policy(0.75, 0.25), 0.2499, "allow", "score_below_review_threshold"),
    (Policy(0.0, 0.0), 0.0, "review", "model_uncalibrated"),
])
def test_an_uncalibrated_model_never_recommends_takedown(policy, score, expected, reason):
    decision = decide(policy, [track(0, score)], model_loaded=True)
    assert (decision.decision, decision.reasons) == (expected, (reason,))
    assert decision.video_score == decision.raw_video_score == score


def test_the_calibrated_score_decides_and_the_raw_score_is_kept():
    calibration = Calibration("temperature", 0.97, 0.4, temperature=0.5)  # sharpens: 0.9 -> 0.988
    decision = decide(Policy(), [track(0, 0.1), track(1, 0.9)], model_loaded=True, calibration=calibration)
    assert (decision.decision, decision.track_id) == ("takedown", 1)
    assert decision.raw_video_score == pytest.approx(0.9)
    assert decision.video_score == pytest.approx(calibration.apply(0.9)) and decision.video_score > 0.98
    softer = Calibration("temperature", 0.97, 0.4, temperature=3.0)      # 0.9 -> 0.676
    decision = decide(Policy(), [track(0, 0.9)], model_loaded=True, calibration=softer)
    assert (decision.decision, decision.reasons) == ("review", ("score_at_or_above_review_threshold",))
    assert decision.video_score == pytest.approx(softer.apply(0.9))


def test_a_track_whose_mean_lands_on_the_threshold_is_a_takedown():
    decision = decide(Policy(), [track(0, 0.5, 1.0)], model_loaded=True,
                      calibration=identity_calibration(0.75, 0.25))
    assert (decision.decision, decision.video_score) == ("takedown", 0.75)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_the_most_suspicious_track_decides(order):
    tracks = [track(0, 0.05, 0.1), track(1, 0.2), track(2, 0.96, 0.94)]
    decision = decide(Policy(), [tracks[i] for i in order], model_loaded=True,
                      calibration=identity_calibration())
    assert decision.decision == "takedown"
    assert decision.video_score == pytest.approx(0.95)
    assert decision.track_id == 2


def test_a_track_score_set_by_the_model_aggregation_wins_over_the_mean():
    aggregated = FaceTrack(0, track(0, 0.1, 0.1).detections, aggregated=0.93)
    assert aggregated.score == 0.93
    assert decide(Policy(), [aggregated], True, calibration=identity_calibration()).decision == "takedown"


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
    # Thresholds calibrated to a target precision carry many digits; two calibrations that
    # decide a score differently must not share a version.
    old, new = identity_calibration(0.93718254, 0.5), identity_calibration(0.93718311, 0.5)
    score = [track(0, 0.9371828)]
    assert (decide(Policy(), score, True, calibration=old).decision
            != decide(Policy(), score, True, calibration=new).decision)
    assert policy_version(Policy(), old) != policy_version(Policy(), new)
    assert policy_version(Policy(), old).startswith("calibrated-v1:isotonic:")
    assert policy_version(Policy(), None) == Policy().version
