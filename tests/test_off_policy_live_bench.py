"""benchmarks/off_policy_live.py's pieces without a server: the join's label rule, the realized CTRs, and the
RESULTS.md section rendered from the committed run (its numbers checked against its JSON by hand)."""
import json
import os

import pytest

from benchmarks import off_policy_live

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imp(iid, t, position, request, explored=0):
    return {"event_id": iid, "event_time": t, "position": position, "request_id": request, "explored": explored}


def test_labels_follow_the_attribution_window_and_realized_ctr_splits_greedy_from_explored():
    lines = [_imp("a", 1000, 0, "r1"), _imp("b", 1000, 1, "r1"), _imp("c", 1000, 2, "r1"),
             _imp("d", 2000, 0, "r2", explored=1), _imp("e", 2000, 1, "r2", explored=1)]
    outcomes = [{"impression_id": "a", "event_time": 1000 + 10_000, "outcome_type": "click"},  # at the window's end
                {"impression_id": "b", "event_time": 1000 + 10_001, "outcome_type": "click"},  # after it
                {"impression_id": "c", "event_time": 1500, "outcome_type": "click"},  # not shown (position 2)
                {"impression_id": "d", "event_time": 2100, "outcome_type": "view"},  # not a click
                {"impression_id": "e", "event_time": 2100, "outcome_type": "click"},
                {"impression_id": "zz", "event_time": 2100, "outcome_type": "click"}]  # an orphan
    labels = off_policy_live.labels_of(lines, outcomes, 10_000)
    assert labels == {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0, "e": 1.0}
    r = off_policy_live.realized(lines, labels, k=2)
    assert r == {"greedy_ctr": 0.5, "greedy_shown": 2, "served_ctr": 0.5, "shown": 4, "requests": 2,
                 "explored_requests": 1}


def test_the_section_shows_each_estimate_against_the_realized_ctr():
    with open(os.path.join(REPO, "benchmarks", "results", "off_policy_live.json")) as f:
        saved = json.load(f)
    text = off_policy_live.section(saved, saved["when"], saved["machine"])
    start, end = off_policy_live.marks(off_policy_live.SECTION)
    assert text.startswith(start) and text.endswith(end)
    e, truth = saved["estimates"]["B_from_A"]["snips"], saved["realized"]["B"]["greedy_ctr"]
    covered = "yes" if e["lower"] <= truth <= e["upper"] else "no"
    row = (f"| B | A | SNIPS | {e['point']:.4f} [{e['lower']:.4f}, {e['upper']:.4f}] | {truth:.4f} | "
           f"{e['point'] - truth:+.4f} | {covered} |")
    assert row in text
    assert text.count("\n| A |") + text.count("\n| B |") == 8  # 2 models x 2 logs x 2 estimators
