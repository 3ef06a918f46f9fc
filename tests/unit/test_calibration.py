import math

import pytest

from worker.core.calibration import Calibration, CalibrationError, logit, sigmoid


def test_temperature_one_is_the_identity_and_larger_temperatures_soften():
    same = Calibration("temperature", 0.9, 0.5, temperature=1.0)
    soft = Calibration("temperature", 0.9, 0.5, temperature=2.0)
    for raw in (0.01, 0.3, 0.5, 0.8, 0.999):
        assert same.apply(raw) == pytest.approx(raw, abs=1e-9)
    assert soft.apply(0.5) == pytest.approx(0.5)
    assert 0.5 < soft.apply(0.9) < 0.9
    assert soft.apply(0.9) == pytest.approx(sigmoid(logit(0.9) / 2))


def test_isotonic_map_interpolates_between_points_and_is_flat_beyond_them():
    cal = Calibration("isotonic", 0.9, 0.5, isotonic_x=(0.2, 0.6, 0.9), isotonic_y=(0.0, 0.4, 1.0))
    assert cal.apply(0.0) == 0.0
    assert cal.apply(0.4) == pytest.approx(0.2)
    assert cal.apply(0.75) == pytest.approx(0.7)
    assert cal.apply(0.95) == 1.0


def test_mapping_round_trip_keeps_everything():
    cal = Calibration("isotonic", 0.95, 0.3, isotonic_x=(0.1, 0.9), isotonic_y=(0.05, 0.97),
                      target_precision=0.99, target_recall=0.9,
                      validation={"videos": 40, "auc": 0.93})
    assert Calibration.from_mapping(cal.to_mapping()) == cal
    temp = Calibration("temperature", 0.8, 0.2, temperature=1.7)
    assert Calibration.from_mapping(temp.to_mapping()) == temp
    assert temp.version != Calibration("temperature", 0.8, 0.2, temperature=1.6).version


@pytest.mark.parametrize("table, message", [
    ({"method": "platt", "takedown_threshold": 0.9, "review_threshold": 0.5}, "method"),
    ({"method": "temperature", "takedown_threshold": 0.4, "review_threshold": 0.5}, "thresholds"),
    ({"method": "temperature", "takedown_threshold": 0.9, "review_threshold": 0.5, "temperature": 0}, "temperature"),
    ({"method": "isotonic", "takedown_threshold": 0.9, "review_threshold": 0.5,
      "isotonic_x": [0.5, 0.2], "isotonic_y": [0.1, 0.2]}, "non-decreasing"),
    ({"method": "isotonic", "takedown_threshold": 0.9, "review_threshold": 0.5}, "at least one"),
    ({"method": "temperature", "review_threshold": 0.5}, "takedown_threshold"),
    ({"method": "temperature", "takedown_threshold": 0.9, "review_threshold": 0.5, "bias": 1}, "unknown"),
    ({"method": "temperature", "takedown_threshold": "high", "review_threshold": 0.5}, "bad calibration"),
])
def test_bad_tables_are_refused_with_a_reason(table, message):
    with pytest.raises(CalibrationError, match=message):
        Calibration.from_mapping(table)


def test_logit_and_sigmoid_are_inverse_and_finite_at_the_ends():
    for p in (1e-9, 0.25, 0.5, 0.75, 1.0):
        assert math.isfinite(logit(p))
    assert sigmoid(logit(0.3)) == pytest.approx(0.3)
    assert sigmoid(-1000) == 0.0 and sigmoid(1000) == 1.0
