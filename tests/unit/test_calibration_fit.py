"""Fitting a calibration: temperature recovery, isotonic = scikit-learn's, thresholds meet
their targets on the validation data, the table round-trips through TOML."""
import tomllib

import numpy as np
import pytest
import tomli_w
from sklearn.isotonic import IsotonicRegression

from worker.core.calibration import Calibration, CalibrationError
from worker.evaluation import metrics
from worker.evaluation.calibration import (choose_thresholds, fit_calibration, fit_isotonic, fit_temperature,
                                           precision_lower_bound)


def _synthetic(temperature: float, n: int, seed: int):
    """Raw scores sigmoid(z) whose true probability of being fake is sigmoid(z / T)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z / temperature))).astype(int)
    return 1 / (1 + np.exp(-z)), labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_temperature_fit_recovers_a_known_temperature(temperature):
    raw, labels = _synthetic(temperature, 20000, seed=int(temperature * 10))
    assert fit_temperature(raw, labels) == pytest.approx(temperature, rel=0.06)


def test_temperature_fit_minimises_the_log_loss():
    raw, labels = _synthetic(1.7, 3000, seed=3)
    best = fit_temperature(raw, labels)

    def loss(t):
        cal = Calibration("temperature", 1.0, 0.0, temperature=t)
        return metrics.log_loss(labels, [cal.apply(r) for r in raw])

    assert loss(best) <= min(loss(best * 0.97), loss(best * 1.03))


def test_scores_that_rank_reals_above_fakes_cannot_be_calibrated():
    raw, labels = _synthetic(1.0, 2000, seed=4)
    with pytest.raises(CalibrationError, match="do not rank"):
        fit_temperature(raw, 1 - labels)


@pytest.mark.parametrize("seed, rounding", [(0, None), (1, 2), (2, 1)])
def test_isotonic_map_is_monotone_and_matches_sklearn(seed, rounding):
    raw, labels = _synthetic(2.0, 3000, seed)
    if rounding is not None:
        raw = np.round(raw, rounding)  # tied raw scores
    xs, ys = fit_isotonic(raw, labels)
    assert all(b >= a for a, b in zip(xs, xs[1:])) and all(b >= a for a, b in zip(ys, ys[1:]))
    cal = Calibration("isotonic", 1.0, 0.0, isotonic_x=xs, isotonic_y=ys)
    reference = IsotonicRegression(out_of_bounds="clip").fit(raw, labels)
    grid = np.r_[np.linspace(0, 1, 2001), raw[:200]]
    np.testing.assert_allclose([cal.apply(g) for g in grid], reference.predict(grid), atol=1e-12)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
@pytest.mark.parametrize("precision, recall", [(0.99, 0.95), (0.9, 0.8)])
def test_thresholds_meet_their_targets_on_the_validation_data(method, precision, recall):
    raw, labels = _synthetic(0.6, 20000, seed=11)  # sharp: many videos are surely fake
    cal = fit_calibration(raw, labels, method, precision, recall, dataset="synthetic")
    calibrated = np.array([cal.apply(r) for r in raw])
    takedown = metrics.at_threshold(labels, calibrated, cal.takedown_threshold)
    review = metrics.at_threshold(labels, calibrated, cal.review_threshold)
    assert takedown.precision >= precision
    assert review.recall >= recall
    # With its confidence, too: the Wilson lower bound of the precision reaches the target.
    assert precision_lower_bound(takedown.true_positive, takedown.predicted_positive) >= precision
    # The lowest such threshold: one step lower, the bound misses the target.
    below = calibrated[calibrated < cal.takedown_threshold]
    if len(below):
        lower = metrics.at_threshold(labels, calibrated, below.max())
        assert precision_lower_bound(lower.true_positive, lower.predicted_positive) < precision
    assert cal.validation["takedown_precision"] == takedown.precision
    assert cal.validation["review_recall"] == review.recall
    assert cal.validation["videos"] == 20000


def test_unreachable_precision_is_refused():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 500)
    raw = np.clip(0.5 + 0.05 * labels + 0.2 * rng.random(500), 0, 1)  # overlapping everywhere
    raw[labels == 0] = raw.max() + 0.0  # the highest-scored video is real
    with pytest.raises(CalibrationError, match="no threshold reaches precision 0.99"):
        choose_thresholds(raw, labels, 0.99, 0.9)


def test_review_threshold_never_exceeds_takedown():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])  # separable: precision 1 from 0.7 down
    takedown, review = choose_thresholds(scores, labels, 0.99, 0.5, confidence=0)
    assert takedown == 0.7 and review == 0.7


def test_a_few_lucky_videos_at_the_top_do_not_make_a_precision_claim():
    labels = np.array([1, 0] * 50 + [1, 1])
    scores = np.r_[np.linspace(0.1, 0.8, 100), 0.95, 0.97]  # two fakes on top, then chance
    with pytest.raises(CalibrationError, match="refusing to calibrate"):
        choose_thresholds(scores, labels, 0.99, 0.9)
    assert choose_thresholds(scores, labels, 0.99, 0.9, confidence=0)[0] == 0.95  # point estimate


def test_wilson_lower_bound_known_values():
    # 50 of 100 at 97.5 % one-sided (95 % two-sided): the textbook interval is 0.4038..0.5962.
    assert precision_lower_bound(50, 100, 0.975) == pytest.approx(0.4038, abs=1e-4)
    assert precision_lower_bound(7, 10, 0.5) == pytest.approx(0.7)
    # All n flagged are fake: bound n / (n + z^2).
    assert precision_lower_bound(300, 300, 0.95) == pytest.approx(300 / (300 + 1.6448536**2), abs=1e-6)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_fitted_table_round_trips_through_toml(method):
    raw, labels = _synthetic(1.2, 1500, seed=8)
    cal = fit_calibration(raw, labels, method, 0.95, 0.9, dataset="synthetic")
    text = tomli_w.dumps({"calibration": cal.to_mapping()})
    assert Calibration.from_mapping(tomllib.loads(text)["calibration"]) == cal


def test_one_class_only_is_refused():
    with pytest.raises(CalibrationError, match="both real and fake"):
        fit_calibration([0.2, 0.4, 0.9], [1, 1, 1])
