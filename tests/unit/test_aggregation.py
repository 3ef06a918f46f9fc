"""Video aggregation: the DFDC winner's confident strategy at its edges, mean, max."""
from __future__ import annotations

import pytest

from worker.core.aggregation import aggregate, confident_strategy, ensemble, maximum, mean


def test_many_confident_fakes_score_by_themselves():
    # 13 of 32 over 0.8: more than 32 // 2.5 == 12 and more than 11
    preds = [0.9] * 12 + [1.0] + [0.1] * 19
    assert confident_strategy(preds) == pytest.approx((0.9 * 12 + 1.0) / 13)


def test_confident_fakes_need_more_than_len_over_2_5():
    preds = [0.9] * 12 + [0.1] * 20  # 12 is not more than 12.0
    assert confident_strategy(preds) == pytest.approx((0.9 * 12 + 0.1 * 20) / 32)


def test_confident_fakes_need_more_than_eleven():
    preds = [0.95] * 11  # all fake, but only 11
    assert confident_strategy(preds) == pytest.approx(0.95)
    preds = [0.95] * 11 + [0.5]
    assert confident_strategy(preds) == pytest.approx((0.95 * 11 + 0.5) / 12)


def test_threshold_is_strict_and_configurable():
    at_threshold = [0.8] * 20 + [0.3] * 2
    assert confident_strategy(at_threshold) == pytest.approx((0.8 * 20 + 0.6) / 22)
    assert confident_strategy(at_threshold, t=0.7) == pytest.approx(0.8)


def test_nearly_all_confident_reals_score_by_themselves():
    preds = [0.1] * 19 + [0.9]  # 19 of 20 under 0.2: more than 90 %
    assert confident_strategy(preds) == pytest.approx(0.1)
    preds = [0.1] * 18 + [0.9] * 2  # exactly 90 % is not more
    assert confident_strategy(preds) == pytest.approx((0.1 * 18 + 1.8) / 20)


def test_mean_max_ensemble_and_dispatch():
    preds = [0.2, 0.4, 0.9]
    assert mean(preds) == pytest.approx(0.5)
    assert maximum(preds) == pytest.approx(0.9)
    assert ensemble([0.3, 0.5]) == pytest.approx(0.4)
    assert aggregate("max", preds) == pytest.approx(0.9)
    assert aggregate("mean", preds) == pytest.approx(0.5)
    assert aggregate("confident_strategy", [0.9] * 13, threshold=0.95) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="unknown aggregation method 'median'"):
        aggregate("median", preds)


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")]])
def test_no_or_non_finite_scores_are_refused(bad):
    with pytest.raises(ValueError):
        confident_strategy(bad)
    with pytest.raises(ValueError):
        mean(bad)
