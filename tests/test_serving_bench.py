"""benchmarks/serving.py's arithmetic: rows of alternating segments, and the log's paired cost."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import serving  # noqa: E402


def _segment(p50, p99, requests=1000, seconds=4.0, failed=0, worst=None):
    return {"requests": requests, "failed": failed, "p50_ms": p50, "p99_ms": p99, "max_ms": worst or p99 + 1,
            "requests_per_s": requests / seconds}


def test_a_row_takes_the_medians_of_its_segments_and_sums_their_counts():
    row = serving.combine([_segment(4.0, 9.0, failed=1), _segment(5.0, 30.0, worst=44.0), _segment(4.5, 10.0)])
    assert row["p50_ms"] == 4.5 and row["p99_ms"] == 10.0  # one slow segment does not make the row
    assert row["segment_p99_ms"] == [9.0, 30.0, 10.0]  # ... and is kept, to be shown
    assert row["requests"] == 3000 and row["failed"] == 1 and row["max_ms"] == 44.0
    assert row["requests_per_s"] == 250.0


def test_the_logs_cost_is_paired_so_the_machines_drift_stays_out_of_it():
    # The machine slows by 10 ms a round; the log costs 1 ms in every pair.
    on = [_segment(4.0, 11.0), _segment(4.0, 21.0), _segment(4.0, 31.0)]
    off = [_segment(4.0, 10.0), _segment(4.0, 20.0), _segment(4.0, 30.0)]
    assert serving.log_added_p99(on, off) == 1.0
    # A burst of other work during one segment makes one outlying pair; the median of the pairs ignores it.
    on = [_segment(4.0, 12.0), _segment(4.0, 21.5), _segment(4.0, 45.0)]
    assert serving.log_added_p99(on, off) == 2.0


def test_the_verdict_uses_the_paired_cost_when_the_run_has_rounds():
    run = {"http": {"1_log": {"p99_ms": 9.0}, "1_nolog": {"p99_ms": 5.0}}, "log_added_p99_ms": {"1": 0.8}}
    assert serving.added_p99(run, 1) == 0.8
    assert "0.8 ms, met" in "\n".join(serving.verdicts(run))
    del run["log_added_p99_ms"]  # a run stored before the rounds: the rows' difference
    assert serving.added_p99(run, 1) == 4.0
