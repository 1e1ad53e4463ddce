"""The guardrail readings (components/online_evaluator/guardrails.py), measured from impression lines as the
server writes them (`arm_latency_ms`, `challenger_fallback`), on every edge; expectations by hand or by numpy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from components.online_evaluator import arm_counts, guardrails
from components.online_evaluator.config import OnlineEvalConfig
from components.online_evaluator.decision import (RULE_CALIBRATION, RULE_ERROR_RATE, RULE_LATENCY, Counts,
                                                  DecisionRule, Guardrails, decide)
from components.online_evaluator.guardrails import ArmStats


def line(request, arm, challenger=7, clicked=0, score=0.1, latency=5.0, fallback=0, **extra):
    e = {"request_id": request, "arm": arm, "challenger_model_id": challenger, "clicked": clicked, "score": score,
         "arm_latency_ms": latency, "challenger_fallback": fallback}
    e.update(extra)
    return {k: v for k, v in e.items() if v is not None}


def test_measure_counts_each_request_once_on_its_arm_and_the_fallbacks_on_the_challenger():
    lines = [
        # Two shown lines of one champion request: one request, two scored impressions.
        line("r1", "champion", clicked=1, score=0.3, latency=4.0), line("r1", "champion", score=0.1, latency=4.0),
        line("r2", "challenger", score=0.2, latency=12.0),
        # Drawn for the challenger, answered by the champion: a champion request and a challenger fallback.
        line("r3", "champion", score=0.05, latency=3.0, fallback=1),
        # An old server's line (no fallback field): no request, but its score counts for the calibration.
        line("r4", "challenger", score=0.4, clicked=1, latency=None, fallback=None),
        # No latency logged: a request, untimed.
        line("r5", "challenger", score=0.6, latency=None),
        # Another comparison's, and a line served with none open.
        line("r6", "challenger", challenger=9, latency=100.0),
        {"request_id": "r7", "arm": "champion", "score": 0.9, "clicked": 1},
        # A score that is not a number is no calibration evidence.
        line("r8", "champion", score=float("nan"), latency=float("inf")),
    ]
    m = guardrails.measure(lines, "clicked")
    assert set(m) == {7, 9}
    champion, challenger = m[7]["champion"], m[7]["challenger"]
    assert (champion.requests, champion.fallbacks, champion.timed) == (3, 0, 2)  # r1, r3, r8 (r8 untimed: inf)
    assert (challenger.requests, challenger.fallbacks, challenger.timed) == (2, 1, 1)  # r2, r5; r3's fallback
    assert champion.latency_ms == {guardrails.latency_bucket(4.0): 1, guardrails.latency_bucket(3.0): 1}
    assert (champion.scored, champion.scored_successes) == (3, 1)
    assert math.isclose(champion.score_sum, 0.3 + 0.1 + 0.05)
    assert (challenger.scored, challenger.scored_successes) == (3, 1)
    assert math.isclose(challenger.score_sum, 0.2 + 0.4 + 0.6)
    assert m[9]["challenger"].requests == 1 and m[9]["champion"] == ArmStats()


def test_the_latency_buckets_bound_every_latency_within_one_sixteenth_of_an_octave():
    for ms in (0.001, 0.37, 1.0, 2.0, 3.0, 99.0, 1234.5, 3e5):
        upper = guardrails.bucket_upper_ms(guardrails.latency_bucket(ms))
        assert ms <= upper * (1 + 1e-12) and upper < ms * 2 ** (1 / 16) * (1 + 1e-12), ms
    assert guardrails.latency_bucket(0.0) == guardrails.latency_bucket(-3.0) == guardrails.MIN_BUCKET
    assert guardrails.latency_bucket(1e-9) == guardrails.MIN_BUCKET


def _stats(latencies):
    hist = {}
    for ms in latencies:
        b = guardrails.latency_bucket(ms)
        hist[b] = hist.get(b, 0) + 1
    return ArmStats(requests=len(latencies), latency_ms=hist)


def test_latency_p99_is_the_nearest_rank_p99_rounded_up_to_its_bucket_and_needs_the_minimum():
    rng = np.random.default_rng(3)
    for n in (100, 101, 250, 5000):
        sample = rng.lognormal(2.0, 0.8, n)
        true = float(np.percentile(sample, 99, method="inverted_cdf"))  # nearest rank
        got = guardrails.latency_p99_ms(_stats(sample), min_requests=100)
        assert true <= got < true * 2 ** (1 / 16), (n, true, got)
    # 1 .. 100 ms: the 99th smallest is 99 ms.
    got = guardrails.latency_p99_ms(_stats(range(1, 101)), min_requests=100)
    assert 99 <= got < 99 * 2 ** (1 / 16)
    assert guardrails.latency_p99_ms(_stats(range(1, 100)), min_requests=100) is None  # 99 < the minimum
    assert guardrails.latency_p99_ms(ArmStats(), min_requests=1) is None
    # Nearest rank: of 100 requests the 99th smallest, so one slow request is not the p99 and two are; of 200,
    # the 198th: two slow ones are not, three are.
    assert guardrails.latency_p99_ms(_stats([1.0] * 99 + [500.0]), 100) < 1.1
    assert guardrails.latency_p99_ms(_stats([1.0] * 98 + [500.0] * 2), 100) >= 500
    assert guardrails.latency_p99_ms(_stats([1.0] * 198 + [500.0] * 2), 100) < 1.1
    assert guardrails.latency_p99_ms(_stats([1.0] * 197 + [500.0] * 3), 100) >= 500


def test_error_rate_is_fallbacks_over_the_requests_drawn_for_the_challenger():
    assert guardrails.error_rate(ArmStats(), 1) is None
    assert guardrails.error_rate(ArmStats(requests=60, fallbacks=39), 100) is None  # 99 drawn < 100
    assert guardrails.error_rate(ArmStats(requests=60, fallbacks=40), 100) == 0.4
    assert guardrails.error_rate(ArmStats(requests=0, fallbacks=100), 100) == 1.0  # never answered
    assert guardrails.error_rate(ArmStats(requests=100), 100) == 0.0


def test_calibration_error_needs_the_minimum_successes():
    assert guardrails.calibration_error(ArmStats(scored=1000, score_sum=50.0), 1) is None  # no success
    s = ArmStats(scored=1000, score_sum=100.0, scored_successes=49)
    assert guardrails.calibration_error(s, 50) is None
    # Mean score 0.1, observed rate 0.05: predicted twice the rate, error 1.
    s = ArmStats(scored=1000, score_sum=100.0, scored_successes=50)
    assert math.isclose(guardrails.calibration_error(s, 50), 1.0)
    assert math.isclose(guardrails.calibration_error(ArmStats(scored=1000, score_sum=25.0, scored_successes=50), 50),
                        0.5)


def test_stats_merge_round_trip_and_refuse_nonsense():
    a = ArmStats(3, 1, {4: 2, 5: 1}, 6, 1.5, 2)
    b = ArmStats(1, 0, {5: 1, 90: 1}, 2, 0.5, 0)
    assert a + b == ArmStats(4, 1, {4: 2, 5: 2, 90: 1}, 8, 2.0, 2)
    both = guardrails.merge({"champion": a}, {"champion": b, "challenger": a})
    assert both == {"champion": a + b, "challenger": a}
    assert guardrails.from_dict(guardrails.to_dict(both)) == both
    assert guardrails.merge(None, None) == guardrails.empty()
    for bad in (dict(requests=-1), dict(requests=True), dict(scored=1, scored_successes=2),
                dict(score_sum=float("nan")), dict(latency_ms={3: -1})):
        with pytest.raises(ValueError):
            ArmStats(**bad)


def test_the_span_property_carries_counts_and_measures_and_reads_back_both():
    lines = [line("r1", "champion", clicked=1, score=0.3), line("r1", "champion", score=0.1),
             line("r2", "challenger", score=0.2, latency=40.0), line("r3", "champion", fallback=1)]
    text = arm_counts.span_json(iter(lines), "clicked")  # one pass over a generator, as the join hands them
    assert arm_counts.from_json(text) == {7: {"champion": Counts(1, 3), "challenger": Counts(0, 1)}}
    stats = arm_counts.stats_from_json(text)[7]
    assert (stats["champion"].requests, stats["challenger"].requests, stats["challenger"].fallbacks) == (2, 1, 1)
    # A span written before the measures existed: its counts read back, its measures are zero.
    old = arm_counts.to_json({7: {"champion": Counts(1, 3), "challenger": Counts(0, 1)}})
    assert arm_counts.stats_from_json(old)[7] == guardrails.empty()


def test_decide_retires_on_each_guardrail_and_the_limits_and_minimums_are_checked():
    rule = DecisionRule(min_impressions=10 ** 6, guardrails=Guardrails(max_latency_p99_ms=50.0, max_error_rate=0.05,
                                                                      max_calibration_error=0.5))
    even = Counts(10, 200)
    for stats, fired in ((_stats([10.0] * 98 + [80.0] * 2), RULE_LATENCY),
                         (ArmStats(requests=90, fallbacks=10), RULE_ERROR_RATE),
                         (ArmStats(scored=1000, score_sum=200.0, scored_successes=60), RULE_CALIBRATION)):
        d = decide(even, even, rule, guardrails.reading(stats, 100, 50))
        assert (d.action, d.rule) == ("retire", fired), d.reason
    # Within every limit, or not judged yet: the posteriors' rule (here: too few impressions) decides.
    fine = ArmStats(requests=100, fallbacks=0, latency_ms=_stats([10.0] * 100).latency_ms, scored=1000,
                    score_sum=60.0, scored_successes=60)
    assert decide(even, even, rule, guardrails.reading(fine, 100, 50)).rule == "min_impressions"
    assert decide(even, even, rule, guardrails.reading(ArmStats(requests=0, fallbacks=99), 100, 50)).rule == \
        "min_impressions"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="min_requests"):
            Guardrails(min_requests=bad)
        with pytest.raises(ValueError, match="min_calibration_successes"):
            Guardrails(min_calibration_successes=bad)
    g = OnlineEvalConfig(guardrail_min_requests=7, min_calibration_successes=9).rule().guardrails
    assert (g.min_requests, g.min_calibration_successes) == (7, 9)
