"""The gate's paired tests (components/evaluator/paired.py) against independent references."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from components.evaluator import paired


def _delong_reference(labels, scores):
    """DeLong et al. (1988), straight from the definitions: O(m x n) structural components.

    psi(X, Y) = 1 if X > Y, 1/2 if X = Y, 0 otherwise; V10(X_i) = mean_j psi(X_i, Y_j),
    V01(Y_j) = mean_i psi(X_i, Y_j); S10, S01 their sample covariances over the positives
    and negatives; var = S10 / m + S01 / n.
    """
    labels = np.asarray(labels)
    pos = [[float(s) for s, l in zip(row, labels) if l == 1] for row in scores]
    neg = [[float(s) for s, l in zip(row, labels) if l == 0] for row in scores]
    m, n = len(pos[0]), len(neg[0])

    def psi(x, y):
        return 1.0 if x > y else (0.5 if x == y else 0.0)

    v10 = [[sum(psi(x, y) for y in neg[r]) / n for x in pos[r]] for r in range(len(scores))]
    v01 = [[sum(psi(x, y) for x in pos[r]) / m for y in neg[r]] for r in range(len(scores))]
    aucs = [sum(v) / m for v in v10]
    k = len(scores)
    s10 = [[sum((v10[a][i] - aucs[a]) * (v10[b][i] - aucs[b]) for i in range(m)) / (m - 1) for b in range(k)]
           for a in range(k)]
    s01 = [[sum((v01[a][j] - aucs[a]) * (v01[b][j] - aucs[b]) for j in range(n)) / (n - 1) for b in range(k)]
           for a in range(k)]
    cov = [[s10[a][b] / m + s01[a][b] / n for b in range(k)] for a in range(k)]
    return aucs, cov


@pytest.mark.parametrize("seed,rows,ties", [(0, 60, False), (1, 150, True), (2, 41, True)])
def test_delong_difference_matches_the_quadratic_reference(seed, rows, ties):
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.3).astype(float)
    base = rng.normal(size=rows) + labels
    cand = 0.7 * base + 0.5 * rng.normal(size=rows) + 0.3 * labels
    if ties:  # coarse scores: many ties within and across the classes
        base, cand = np.round(base, 0), np.round(cand, 1)
    aucs, cov = _delong_reference(labels, [cand, base])
    est = paired.auc_difference(labels, cand, base)
    assert est.diff == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert est.se == pytest.approx(math.sqrt(cov[0][0] + cov[1][1] - 2 * cov[0][1]), rel=1e-9)
    one = paired.auc_with_se(labels, cand)
    assert one.diff == pytest.approx(aucs[0], abs=1e-12)
    assert one.se == pytest.approx(math.sqrt(cov[0][0]), rel=1e-9)


def test_delong_on_a_hand_example():
    # 3 positives, 3 negatives. Candidate separates perfectly (AUC 1); baseline ranks one pair wrong
    # and ties one: psi over the 9 pairs = 7 ones, one 0, one 1/2 -> AUC 7.5 / 9.
    labels = np.array([1, 1, 1, 0, 0, 0])
    cand = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    base = np.array([0.9, 0.4, 0.7, 0.5, 0.4, 0.1])
    est = paired.auc_difference(labels, cand, base)
    assert est.diff == pytest.approx(1.0 - 7.5 / 9.0)
    aucs, cov = _delong_reference(labels, [cand, base])
    assert est.se == pytest.approx(math.sqrt(cov[0][0] + cov[1][1] - 2 * cov[0][1]))


def test_midranks_share_ties():
    assert paired.midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_one_class_gives_nan_not_an_error():
    est = paired.auc_difference(np.ones(5), np.arange(5.0), np.arange(5.0))
    assert math.isnan(est.diff) and math.isnan(est.se)


def test_bounds_and_p_values_are_the_normal_ones_for_delong():
    est = paired.PairedEstimate(diff=-0.02, se=0.01)
    lower, upper = paired.bounds(est, 0.95)
    assert upper == pytest.approx(-0.02 + 1.6448536 * 0.01, abs=1e-6)
    assert lower == pytest.approx(-0.02 - 1.6448536 * 0.01, abs=1e-6)
    assert paired.p_value_below(est) == pytest.approx(stats.norm.cdf(-2.0))
    # Against a tolerated margin of 0.01 the drop is 1 se beyond it.
    assert paired.p_value_below(est, margin=0.01) == pytest.approx(stats.norm.cdf(-1.0))


def test_log_loss_paired_test_matches_scipy_ttest_rel():
    labels = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 0], dtype=float)
    cand = np.array([0.8, 0.3, 0.2, 0.55, 0.9, 0.4, 0.1, 0.35, 0.6, 0.25])
    base = np.array([0.7, 0.2, 0.25, 0.6, 0.8, 0.5, 0.05, 0.3, 0.5, 0.3])
    ll_c = -(labels * np.log(cand) + (1 - labels) * np.log(1 - cand))
    ll_b = -(labels * np.log(base) + (1 - labels) * np.log(1 - base))
    est = paired.log_loss_difference(labels, cand, base)
    assert est.diff == pytest.approx(ll_c.mean() - ll_b.mean())
    assert est.dof == 9
    ref = stats.ttest_rel(ll_c, ll_b, alternative="greater")
    assert paired.p_value_above(est) == pytest.approx(ref.pvalue, rel=1e-9)
    ref_less = stats.ttest_rel(ll_c, ll_b, alternative="less")
    assert paired.p_value_above(est) == pytest.approx(1 - ref_less.pvalue, rel=1e-9)
    # The bounds are scipy's t interval of the mean difference.
    lo, hi = stats.t.interval(0.90, 9, loc=(ll_c - ll_b).mean(), scale=stats.sem(ll_c - ll_b))
    assert paired.bounds(est, 0.95) == pytest.approx((lo, hi))
