"""benchmarks/online_eval.py's pieces on a small pool: the tuned challengers really differ by the margin, the
A/B test's sample size is the textbook one, and a short run reports every scenario and method."""
import math

import numpy as np
import pytest
from scipy import stats

from benchmarks import online_eval


def test_tuned_challengers_hit_the_margin_and_rank_differently():
    p = online_eval.request_pool(2000, 10, seed=0)
    assert p.shape == (2000, 10) and ((0 < p) & (p < 1)).all()
    rng = np.random.default_rng(0)
    champion_noise, noise = rng.normal(size=p.shape), rng.normal(size=p.shape)
    champion = online_eval.policy_choice(p, 2.0, champion_noise)
    base = p[np.arange(len(p)), champion].mean()
    sigma = online_eval.tune_sigma(p, noise, base * 1.05)
    better = online_eval.policy_choice(p, sigma, noise)
    assert p[np.arange(len(p)), better].mean() == pytest.approx(base * 1.05, rel=0.01)
    assert (better != champion).mean() > 0.2


def test_ab_sample_size_is_the_textbook_formula():
    # Fleiss' formula for two proportions, one-sided alpha 0.05 and power 0.95, written out here.
    p1, p2 = 0.10, 0.105
    z = stats.norm.ppf(0.95)
    pbar = 0.1025
    n = (z * math.sqrt(2 * pbar * (1 - pbar)) + z * math.sqrt(0.1 * 0.9 + 0.105 * 0.895)) ** 2 / 0.005 ** 2
    assert online_eval.ab_sample_size(p1, p2) == math.ceil(n)


def test_a_short_run_reports_every_scenario_and_method(capsys):
    assert online_eval.main(["--seeds", "2", "--ope-seeds", "1", "--requests", "2000", "--thresholds", "0.95",
                             "--ope-impressions", "5000", "--no-write"]) == 0
    out = capsys.readouterr().out
    for scenario in online_eval.SCENARIOS:
        assert f"{scenario} ts@0.95:" in out and f"{scenario} ab:" in out
    assert "off-policy (epsilon 0.05)" in out
