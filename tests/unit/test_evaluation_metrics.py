"""The evaluation's numpy metrics agree with scikit-learn on the same predictions."""
import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn import metrics as sk

from worker.evaluation import metrics

CASES = {
    "random": lambda rng: (rng.integers(0, 2, 500), rng.random(500)),
    "informative": lambda rng: (y := rng.integers(0, 2, 400), np.clip(0.3 * y + 0.7 * rng.random(400), 0, 1)),
    # Scores rounded to one decimal: many ties, within and across classes.
    "ties": lambda rng: (rng.integers(0, 2, 300), np.round(rng.random(300), 1)),
    "all_tied": lambda rng: (np.array([0, 1, 1, 0, 1]), np.full(5, 0.5)),
    "imbalanced": lambda rng: ((rng.random(600) < 0.05).astype(int), rng.random(600)),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param](np.random.default_rng(12345))


def test_roc_curve_and_auc_match_sklearn(case):
    y, s = case
    fpr, tpr, thr = metrics.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])  # sklearn's first is inf (or max + 1 in old versions)
    assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


def test_average_precision_matches_sklearn(case):
    y, s = case
    assert metrics.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


def test_log_loss_matches_sklearn(case):
    y, s = case
    s = np.clip(s, 1e-3, 1 - 1e-3)  # away from the clipping, where both are the plain definition
    assert metrics.log_loss(y, s) == pytest.approx(sk.log_loss(y, s, labels=[0, 1]), rel=1e-12)


def test_log_loss_clips_certain_mistakes_to_a_finite_cost():
    loss = metrics.log_loss([1, 0], [0.0, 1.0])
    assert loss == pytest.approx(-np.log(metrics.LOG_LOSS_EPS), rel=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 0.7, 0.95])
def test_precision_and_recall_at_a_threshold_match_sklearn(case, threshold):
    y, s = case
    at = metrics.at_threshold(y, s, threshold)
    predicted = (s >= threshold).astype(int)
    assert at.recall == pytest.approx(sk.recall_score(y, predicted))
    if predicted.any():
        assert at.precision == pytest.approx(sk.precision_score(y, predicted))
    else:
        assert at.precision is None
    assert at.predicted_positive == predicted.sum()


def test_precision_recall_by_threshold_matches_sklearn(case):
    y, s = case
    thr, precision, recall = metrics.precision_recall_by_threshold(y, s)
    sk_p, sk_r, sk_t = sk.precision_recall_curve(y, s, drop_intermediate=False)
    # sklearn: increasing thresholds, then a final (1, 0) point; ours: decreasing, no extra point.
    np.testing.assert_array_equal(thr[::-1], sk_t)
    np.testing.assert_allclose(precision[::-1], sk_p[:-1])
    np.testing.assert_allclose(recall[::-1], sk_r[:-1])


def test_eer_matches_the_usual_interpolation_on_sklearn_roc():
    rng = np.random.default_rng(7)
    for _ in range(5):
        y = rng.integers(0, 2, 400)
        s = rng.normal(size=400) + 0.8 * y
        fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
        expected = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
        eer, threshold = metrics.equal_error_rate(y, s)
        assert eer == pytest.approx(expected, abs=1e-9)
        # At the returned threshold the two error rates are close to the EER.
        at = metrics.at_threshold(y, s, threshold)
        fnr = 1 - at.recall
        fpr_here = at.false_positive / (len(y) - y.sum())
        assert min(fnr, fpr_here) <= eer + 1e-9 <= max(fnr, fpr_here) + 1e-9


def test_eer_of_perfect_and_inverted_scores():
    assert metrics.equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == 0.0
    assert metrics.equal_error_rate([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])[0] == 1.0


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 0, 0], [0.1, 0.2, 0.3], "both real and fake"),
    ([0, 2], [0.1, 0.2], "labels must be"),
    ([0, 1], [0.1], "same length"),
    ([0, 1], [0.1, float("nan")], "finite"),
    ([], [], "no predictions"),
])
def test_bad_inputs_are_refused(labels, scores, message):
    with pytest.raises(metrics.MetricError, match=message):
        metrics.roc_auc(labels, scores)
