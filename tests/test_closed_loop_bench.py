"""benchmarks/closed_loop.py's summary of a regime's run, on rows worked out by hand (no loop runs here)."""
from __future__ import annotations

import argparse

import pytest

from benchmarks import closed_loop as bench


def _row(span, shown, clicks, expected, oracle, random_, hot_candidates=0, hot_shown=0, hot_clicks=0):
    return {"span": span, "shown": shown, "clicks_in_window": clicks, "expected_clicks": expected,
            "oracle_expected_clicks": oracle, "random_expected_clicks": random_, "hot_candidates": hot_candidates,
            "hot_shown": hot_shown, "hot_clicks_in_window": hot_clicks}


ARGS = argparse.Namespace(span_seconds=20, attribution_window_seconds=10)


def test_totals_leave_out_the_partial_first_and_last_spans_and_place_the_order_between_random_and_best():
    rows = [_row(100, 10, 9, 9.0, 9.0, 9.0),  # partial first span: left out
            _row(101, 100, 20, 18.0, 30.0, 10.0),
            _row(102, 100, 10, 22.0, 30.0, 10.0),
            _row(103, 4, 4, 4.0, 4.0, 0.0)]  # partial last span: left out
    run = {"rows": list(reversed(rows)), "cycles": [], "requests": 100, "failed": 0, "wall_s": 1.0}
    s = bench.summarize(run, ARGS)
    assert s["live_spans_counted"] == 2
    assert s["shown"] == 200 and s["clicks_in_window"] == 30
    assert s["served_ctr"] == pytest.approx(0.15)
    assert s["expected_ctr"] == pytest.approx(0.20)
    assert s["oracle_ctr"] == pytest.approx(0.30) and s["random_ctr"] == pytest.approx(0.10)
    # (40 - 20) / (60 - 20): halfway from a random order to the best one.
    assert s["expected_share_of_oracle_gain"] == pytest.approx(0.5)


def test_the_hot_ad_is_counted_from_the_span_it_first_was_a_candidate_to_the_first_shown_half_the_time():
    rows = [_row(10, 1, 0, 0.1, 0.1, 0.1),
            _row(11, 1, 0, 0.1, 0.1, 0.1, hot_candidates=10, hot_shown=1),
            _row(12, 1, 0, 0.1, 0.1, 0.1, hot_candidates=10, hot_shown=4),
            _row(13, 1, 0, 0.1, 0.1, 0.1, hot_candidates=10, hot_shown=5, hot_clicks=2),
            _row(14, 1, 0, 0.1, 0.1, 0.1, hot_candidates=10, hot_shown=9, hot_clicks=3)]
    s = bench.summarize({"rows": rows, "cycles": [], "requests": 5, "failed": 0, "wall_s": 1.0}, ARGS)
    assert s["hot_show_rate_by_span"] == [(1, 0.1), (2, 0.4), (3, 0.5), (4, 0.9)]
    assert s["hot_first_span"] == 1 and s["hot_spans_to_half_shown"] == 2
    assert (s["hot_shown"], s["hot_candidates"], s["hot_clicks_in_window"]) == (19, 40, 5)


def test_a_hot_ad_never_shown_half_the_time_and_the_freshness_median_of_the_cycles():
    rows = [_row(0, 1, 0, 0.1, 0.1, 0.1, hot_candidates=10, hot_shown=2)]
    # The first cycle trains on the written history (900 s old clicks, no user's): not the loop's freshness.
    cycles = [{"click_freshness_median_seconds": v} for v in (900.0, 50.0, None, 70.0, 40.0)] + [{}]
    s = bench.summarize({"rows": rows, "cycles": cycles, "requests": 1, "failed": 0, "wall_s": 1.0}, ARGS)
    assert s["hot_spans_to_half_shown"] is None
    assert s["click_freshness_median_s"] == 50.0
    assert s["click_freshness_target_s"] == 90
    assert s["cycles"] == 6 and s["pushes"] == 0
