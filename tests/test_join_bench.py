"""The pure parts of benchmarks/join.py (no join runs, no TensorFlow)."""
import json

from benchmarks import join as jb
from components import event_log


def _lines(log_dir):
    out = []
    for chunk in event_log.plan_read(log_dir, None).chunks:
        out += [json.loads(line) for _, line in event_log.read_chunk(log_dir, chunk)]
    return out


def test_feeder_appends_in_arrival_order_up_to_the_first_event_at_the_cut(tmp_path):
    staged, live = str(tmp_path / "staged"), str(tmp_path / "live")
    # Arrival order, with a late event (time 5) behind a later one: it stays behind it.
    times = [1, 2, 8, 5, 9, 10, 3, 12]
    with event_log.EventLogWriter(staged) as w:
        w.write_events([{"id": i, "event_time": t} for i, t in enumerate(times)])
    feeder = jb.Feeder(staged, live, "event_time")
    assert [e["event_time"] for e in feeder.feed(9)] == [1, 2, 8, 5]
    assert [e["event_time"] for e in _lines(live)] == [1, 2, 8, 5]
    assert feeder.feed(9) == []  # the head (9) waits for a later cut
    assert [e["event_time"] for e in feeder.feed(100)] == [9, 10, 3, 12]
    feeder.close()
    assert [e["id"] for e in _lines(live)] == list(range(len(times)))


def test_section_names_the_target_and_whether_it_was_met():
    row = {"per_span": 100_000, "ingest_examples_per_s": 40_000, "join_examples_per_s": 18_000, "ratio": 0.45,
           "met": False, "join_peak_rss_mib": [900, 905], "join_rss_growth_mib": [300, 302]}
    report = {"date": "d", "machine": {"nproc": 2, "cpu_model": "c", "mem_gib": 24, "python": "3.10"},
              "command": "benchmarks/join.py", "attribution_window_s": 600, "click_delay_mean_s": 60.0,
              "rows": [row]}
    text = jb.render_section(report, "results/join.png")
    assert text.startswith(jb.START_MARK) and text.rstrip().endswith(jb.END_MARK)
    assert "| 100,000 | 40,000 | 18,000 | 0.45 | **not met** | 900, 905 | 300, 302 |" in text
