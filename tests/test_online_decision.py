"""The online-evaluation decision core: posteriors, P(better), Thompson choice, the rule, replacement.

Expected values come from outside the code under test: closed-form integrals worked by hand, or
scipy's numerical quadrature of the two Beta densities.
"""
import math

import numpy as np
import pytest
from scipy import integrate, stats

from components.online_evaluator.decision import (
    CHALLENGER, CHAMPION, CONTINUE, PROMOTE, RETIRE, RULE_CALIBRATION, RULE_ERROR_RATE, RULE_LATENCY,
    RULE_MIN_IMPRESSIONS, RULE_P_BETTER, RULE_P_WORSE, RULE_UNDECIDED, BetaPosterior, Comparison, Counts,
    DecisionRule, GuardrailReading, Guardrails, Prior, calibration_error, choose_arm, decide, prob_better)


def quad_p_better(champion, challenger):
    """P(X_challenger > X_champion) = integral of f_challenger(x) * F_champion(x) dx, by quadrature."""
    a, b = stats.beta(champion.alpha, champion.beta), stats.beta(challenger.alpha, challenger.beta)
    lo, hi = b.ppf(1e-12), b.ppf(1 - 1e-12)
    value, _ = integrate.quad(lambda x: b.pdf(x) * a.cdf(x), lo, hi, limit=500, points=[b.mean()])
    return value


def test_posterior_from_counts_and_update():
    p = BetaPosterior.from_counts(Counts(3, 10))
    assert (p.alpha, p.beta) == (4, 8)
    assert BetaPosterior.from_counts(Counts(3, 10), Prior(2, 5)) == BetaPosterior(5, 12)
    assert p.update(Counts(1, 5)) == BetaPosterior(5, 12)
    assert BetaPosterior.from_counts(Counts()).mean == 0.5


def test_counts_reject_impossible_values():
    with pytest.raises(ValueError, match="cannot exceed trials"):
        Counts(5, 4)
    for s, t in ((-1, 3), (1.5, 3), (True, 3), (0, -2)):
        with pytest.raises(ValueError, match="whole number"):
            Counts(s, t)
    assert Counts(1, 2) + Counts(3, 4) == Counts(4, 6)
    assert Counts().rate is None and Counts(1, 4).rate == 0.25


def test_prior_rejects_non_positive():
    for a in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="prior"):
            Prior(alpha=a)


def test_p_better_closed_forms():
    # Two uniform posteriors: a fair coin.
    assert prob_better(BetaPosterior(1, 1), BetaPosterior(1, 1)) == pytest.approx(0.5, abs=1e-12)
    # X_a uniform, X_b with density 2x: P(X_b > X_a) = integral of 2x * x dx = 2/3.
    assert prob_better(BetaPosterior(1, 1), BetaPosterior(2, 1)) == pytest.approx(2 / 3, abs=1e-12)
    assert prob_better(BetaPosterior(2, 1), BetaPosterior(1, 1)) == pytest.approx(1 / 3, abs=1e-12)
    # Identical posteriors, whatever their shape: 1/2 by symmetry.
    assert prob_better(BetaPosterior(501, 4500), BetaPosterior(501, 4500)) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("champion,challenger", [
    (Counts(100, 1000), Counts(120, 1000)),
    (Counts(1000, 10000), Counts(1050, 10000)),
    (Counts(5000, 50000), Counts(4900, 50000)),
    (Counts(0, 300), Counts(2, 300)),
    (Counts(300, 300), Counts(299, 300)),
    (Counts(0, 0), Counts(7, 20)),
])
def test_p_better_exact_matches_quadrature(champion, challenger):
    a, b = BetaPosterior.from_counts(champion), BetaPosterior.from_counts(challenger)
    assert prob_better(a, b) == pytest.approx(quad_p_better(a, b), abs=1e-7)
    assert prob_better(a, b) + prob_better(b, a) == pytest.approx(1.0, abs=1e-9)


def test_p_better_one_whole_alpha_and_monte_carlo_fallback():
    # One whole alpha: still exact (the sum runs over that one).
    a, b = BetaPosterior(10.5, 90), BetaPosterior(14, 86.5)
    assert prob_better(a, b) == pytest.approx(quad_p_better(a, b), abs=1e-7)
    assert prob_better(b, a) == pytest.approx(quad_p_better(b, a), abs=1e-7)
    # No whole alpha: Monte Carlo, 200,000 draws, standard error <= 0.0012; 5 sigma is 0.006.
    a, b = BetaPosterior(10.5, 90.5), BetaPosterior(14.5, 86.5)
    assert prob_better(a, b) == pytest.approx(quad_p_better(a, b), abs=0.006)
    assert prob_better(a, b) == prob_better(a, b)  # fixed seed: the same answer every time


def test_thompson_choice_frequency_matches_its_propensity():
    champion, challenger = BetaPosterior(30, 270), BetaPosterior(36, 264)
    rng = np.random.default_rng(1)
    chosen = [choose_arm(champion, challenger, rng) for _ in range(20000)]
    share = sum(arm == CHALLENGER for arm, _ in chosen) / len(chosen)
    expected = quad_p_better(champion, challenger)
    assert share == pytest.approx(expected, abs=0.015)  # 4 sigma of a 20,000-draw share
    for arm, propensity in chosen[:50]:
        assert propensity == pytest.approx(expected if arm == CHALLENGER else 1 - expected, abs=1e-7)
    assert {arm for arm, _ in chosen} == {CHAMPION, CHALLENGER}


def _counts_with_p(target_low, target_high):
    """Champion/challenger counts whose P(better), by quadrature, lies in [low, high)."""
    for extra in range(0, 400):
        champ, chal = Counts(1000, 10000), Counts(1000 + extra, 10000)
        p = quad_p_better(BetaPosterior.from_counts(champ), BetaPosterior.from_counts(chal))
        if target_low <= p < target_high:
            return champ, chal, p
    raise AssertionError("no counts found")


def test_promote_at_threshold_and_not_below():
    rule = DecisionRule(threshold=0.95, min_impressions=1000)
    champ, chal, p = _counts_with_p(0.95, 0.97)
    d = decide(champ, chal, rule)
    assert (d.action, d.rule) == (PROMOTE, RULE_P_BETTER) and d.p_better == pytest.approx(p, abs=1e-7)
    assert d.impressions == 20000 and d.champion == BetaPosterior(1001, 9001)
    champ, chal, p = _counts_with_p(0.9, 0.95)
    assert (decide(champ, chal, rule).action, decide(champ, chal, rule).rule) == (CONTINUE, RULE_UNDECIDED)
    # Exactly at the threshold promotes (>=): a threshold equal to the computed P(better).
    champ, chal, p = _counts_with_p(0.95, 0.97)
    assert decide(champ, chal, DecisionRule(threshold=p - 1e-12, min_impressions=0)).action == PROMOTE
    assert decide(champ, chal, DecisionRule(threshold=min(p + 1e-6, 0.999), min_impressions=0)).action == CONTINUE


def test_retire_when_worse():
    champ, chal, _ = _counts_with_p(0.95, 0.97)
    d = decide(chal, champ, DecisionRule())  # swapped: the challenger is the worse one
    assert (d.action, d.rule) == (RETIRE, RULE_P_WORSE) and d.p_worse >= 0.95


def test_min_impressions_holds_back_both_posterior_rules():
    champ, chal = Counts(0, 300), Counts(60, 300)  # overwhelming, but 600 impressions
    rule = DecisionRule(min_impressions=601)
    assert (decide(champ, chal, rule).action, decide(champ, chal, rule).rule) == (CONTINUE, RULE_MIN_IMPRESSIONS)
    assert decide(chal, champ, rule).action == CONTINUE
    assert decide(champ, chal, DecisionRule(min_impressions=600)).action == PROMOTE  # exactly the minimum
    assert decide(chal, champ, DecisionRule(min_impressions=600)).action == RETIRE


@pytest.mark.parametrize("reading,fired", [
    (GuardrailReading(latency_p99_ms=50.1), RULE_LATENCY),
    (GuardrailReading(error_rate=0.011), RULE_ERROR_RATE),
    (GuardrailReading(calibration_error=0.31), RULE_CALIBRATION),
])
def test_guardrail_breach_retires_even_a_winner_with_few_impressions(reading, fired):
    rule = DecisionRule(min_impressions=10**6, guardrails=Guardrails(max_latency_p99_ms=50, max_error_rate=0.01,
                                                                      max_calibration_error=0.3))
    d = decide(Counts(0, 300), Counts(60, 300), rule, reading)
    assert (d.action, d.rule) == (RETIRE, fired) and "guardrail" in d.reason


def test_guardrail_at_limit_unmeasured_or_unset_does_not_fire():
    rule = DecisionRule(min_impressions=0, guardrails=Guardrails(max_latency_p99_ms=50, max_error_rate=0.01))
    for reading in (GuardrailReading(latency_p99_ms=50.0, error_rate=0.01), GuardrailReading(),
                    GuardrailReading(latency_p99_ms=float("nan")), GuardrailReading(calibration_error=9.0), None):
        assert decide(Counts(10, 100), Counts(10, 100), rule, reading).rule == RULE_UNDECIDED


def test_rule_rejects_bad_settings():
    for t in (0.5, 1.0, 0.2, float("nan"), True):
        with pytest.raises(ValueError, match="threshold"):
            DecisionRule(threshold=t)
    with pytest.raises(ValueError, match="min_impressions"):
        DecisionRule(min_impressions=-1)
    with pytest.raises(ValueError, match="guardrail"):
        Guardrails(max_error_rate=-0.1)


def test_calibration_error():
    assert calibration_error(0.12, Counts(10, 100)) == pytest.approx(0.2)
    assert calibration_error(0.12, Counts(0, 100)) is None and calibration_error(0.1, Counts()) is None


def test_comparison_update_and_replacement():
    c = Comparison(1, 2).update(Counts(3, 10), Counts(4, 10)).update(Counts(1, 5), Counts(0, 5))
    assert (c.champion, c.challenger) == (Counts(4, 15), Counts(4, 15))
    r = c.replace_challenger(3)
    assert r == Comparison(1, 3) and (r.champion, r.challenger) == (Counts(), Counts())
    with pytest.raises(ValueError, match="already the challenger"):
        c.replace_challenger(2)
    with pytest.raises(ValueError, match="both champion and challenger"):
        Comparison(4, 4)
    assert math.isclose(decide(c.champion, c.challenger).p_better, 0.5, abs_tol=1e-9)


def test_a_challenger_that_served_too_few_impressions_is_not_promoted_on_its_prior():
    """A challenger whose every draw fell back to the champion has no impressions of its own: with a 2 % CTR
    champion, its Beta(1, 1) prior alone reads P(better) ~ 0.98, yet it must not be promoted."""
    champ, silent = Counts(successes=40, trials=2000), Counts(successes=0, trials=0)
    d = decide(champ, silent, DecisionRule(threshold=0.95, min_impressions=1000))
    assert d.p_better > 0.95  # the prior alone would have promoted it
    assert (d.action, d.rule) == (CONTINUE, "min_challenger_impressions")
    served = Counts(successes=8, trials=99)
    assert decide(champ, served, DecisionRule(min_challenger_impressions=99)).action == PROMOTE  # exactly
    assert decide(champ, served, DecisionRule(min_challenger_impressions=100)).action == CONTINUE
    with pytest.raises(ValueError, match="min_challenger_impressions"):
        DecisionRule(min_challenger_impressions=-1)
