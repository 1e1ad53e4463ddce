"""The pure parts of benchmarks/freshness.py and benchmarks/stock_tfx.py (no pipeline runs, no TensorFlow)."""
import csv
import os

import pytest

from benchmarks import freshness as fb
from benchmarks import stock_tfx
from components.streaming_example_gen import windowing
from pipelines.config import WindowConfig
from pipelines.simulator import SimulatorConfig, simulate


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp("stream") / "log")
    sim = SimulatorConfig(minutes=23, events_per_minute=60, late_fraction=0.2)
    simulate(log_dir, sim)
    return log_dir, sim


def test_csv_export_holds_the_same_events(stream, tmp_path):
    log_dir, sim = stream
    by_span = fb.group_by_span(fb.read_events(log_dir), sim.start_ms)
    path = stock_tfx.span_csv_path(str(tmp_path), 2)
    assert stock_tfx.export_span_csv(by_span[2], path) == len(by_span[2]) > 0
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == stock_tfx.CSV_COLUMNS
    assert [r["event_id"] for r in rows] == [e["event_id"] for e in by_span[2]]
    for row, event in zip(rows, by_span[2]):
        assert int(row["event_time"]) == event["event_time"]
        assert float(row["price"]) == event["price"] and "." in row["price"]  # a float column for CsvExampleGen
        assert (row["user_id"], row["ad_id"], row["device"]) == (event["user_id"], event["ad_id"], event["device"])
        assert int(row["clicked"]) == event["clicked"] and int(row["hour_of_day"]) == event["hour_of_day"]
    assert not any(n.endswith(".tmp") for n in os.listdir(os.path.dirname(path)))


def test_spans_are_cut_by_event_time_and_keep_log_order(stream):
    log_dir, sim = stream
    events = fb.read_events(log_dir)
    by_span = fb.group_by_span(events, sim.start_ms)
    assert sorted(by_span) == [1, 2, 3]
    assert sum(len(v) for v in by_span.values()) == len(events)
    for k, span_events in by_span.items():
        lo = sim.start_ms + (k - 1) * fb.SPAN_MS
        assert all(lo <= e["event_time"] < lo + fb.SPAN_MS for e in span_events)
        position = {e["event_id"]: i for i, e in enumerate(events)}
        order = [position[e["event_id"]] for e in span_events]
        assert order == sorted(order)
    # Late events sit after newer ones in the log, so log order is not event-time order.
    assert any(a["event_time"] > b["event_time"] for a, b in zip(by_span[1], by_span[1][1:]))


@pytest.mark.parametrize("lateness", [0, 30, 60, 119, 120, 300])
def test_replay_closes_exactly_one_new_span_per_cycle(lateness):
    schedule = fb.replay_schedule(5, lateness)
    window = windowing.Window(fb.SPAN_MS, lateness * 1000, WindowConfig().eval_fraction)
    start_span = SimulatorConfig().start_ms // fb.SPAN_MS
    minutes = 0
    for cycle, m in enumerate(schedule, start=1):
        minutes += m
        # The newest event lies in the last appended minute: anywhere in it.
        for newest in (SimulatorConfig().start_ms + (minutes - 1) * 60_000,
                       SimulatorConfig().start_ms + minutes * 60_000 - 1):
            assert window.closed_through(newest) - start_span + 1 == cycle


def test_replay_refuses_a_lateness_that_would_close_two_spans():
    with pytest.raises(ValueError, match="allowed lateness"):
        fb.replay_schedule(3, 600)


def _rows(values, key="wall_s"):
    return [{"span": k, key: v} for k, v in enumerate(values, start=1)]


def test_medians_means_and_ratios_skip_cycle_one_and_missing_values():
    rows = _rows([100.0, 3.0, 1.0, 2.0, None])
    assert fb.median_over(rows, "wall_s", 2, 5) == 2.0
    assert fb.mean_over(rows, "wall_s", 2, 5) == 2.0
    assert fb.at_span(rows, "wall_s", 5) is None
    assert fb.median_over(rows, "wall_s", 6, 8) is None
    assert fb.ratio(10.0, 2.0) == 5.0 and fb.ratio(1.0, 0.0) is None and fb.ratio(None, 1.0) is None


def _fake_result(size, driftline_cpu, stateless_cpu=100.0, with_stock=True):
    n = 4

    def rows(wall, cpu, auc, **extra):
        return [dict({"span": k, "wall_s": wall + k, "cpu_s": cpu + k, "next_span_auc": auc,
                      "candidate_next_span_auc": auc, "components_s": {"Trainer": 1.0 * k}}, **extra)
                for k in range(1, n + 1)]

    regimes = {
        fb.DRIFTLINE: {"startup_s": 9.0, "rows": [
            dict(r, freshness_s=70.0 + r["span"], pushed=True, controller_wall_s=r["wall_s"] + 1,
                 nontraining_share=0.4, nontraining_share_strict=0.6, rss_mb=1000.0, peak_rss_mb=1100.0)
            for r in rows(10.0, driftline_cpu, 0.75)]},
        fb.RIVER: {"rows": [{"span": k, "wall_s": 0.5, "cpu_s": 0.5, "next_span_auc": 0.70} for k in range(1, n + 1)]},
    }
    if with_stock:
        regimes[fb.STOCK_STATELESS] = {"rows": rows(150.0, stateless_cpu, 0.74, pushed=True, freshness_s=200.0)}
        regimes[fb.STOCK_STATEFUL] = {"rows": rows(120.0, 80.0, 0.70, pushed=True, freshness_s=180.0)}
    result = {"events_per_span": size, "spans": n, "regimes": regimes,
              "oracle_auc": {str(k): 0.85 for k in range(2, n + 2)}}
    result["summary"] = fb.summarize_size(result)
    return result


def test_headline_keys_ratios_and_targets():
    sizes = {"10000": _fake_result(10_000, driftline_cpu=10.0), "100000": _fake_result(100_000, driftline_cpu=19.0,
                                                                                        with_stock=False)}
    h = fb.headline(sizes, 10_000)
    for key in ("stock_stateless_cycle_s", "stock_stateful_cycle_s", "driftline_cycle_s", "driftline_freshness_s",
                "driftline_nontraining_share", "cpu_ratio_span8", "next_span_auc_stock_stateless",
                "next_span_auc_river", "next_span_auc_driftline"):
        assert key in h and h[key] is not None, key
    assert h["stock_stateless_cycle_s"] == 153.0 and h["driftline_cycle_s"] == 13.0  # medians over spans 2-4
    assert h["cpu_ratio_span8"] == round(104.0 / 14.0, 2)  # at the last span
    assert h["driftline_freshness_s"] == 73.0
    # (median CPU 22 at 100k - 13 at 10k) over nine extra 10k blocks
    assert h["driftline_cpu_per_extra_10k_events_s"] == 1.0
    targets = {t["target"]: t for t in fb.evaluate_targets(h)}
    assert targets["driftline cycle wall time"]["met"] is True
    assert targets["stock stateless cycle / driftline cycle"]["met"] is True
    assert targets["driftline freshness (median, allowed lateness included)"]["met"] is False
    assert targets["driftline cycle CPU per extra 10k events"]["met"] is True
    assert targets["mean next-span AUC, driftline minus stock stateless"]["value"] == 0.01
    memory = targets["controller RSS flat"]
    assert memory["met"] is True and "100" in memory["note"]


def test_targets_say_not_measured_without_stock_or_a_second_size():
    h = fb.headline({"10000": _fake_result(10_000, 10.0, with_stock=False)}, 10_000)
    targets = {t["target"]: t for t in fb.evaluate_targets(h)}
    assert targets["stock stateless cycle / driftline cycle"]["met"] is None
    assert targets["driftline cycle CPU per extra 10k events"]["met"] is None
    assert "second" in targets["driftline cycle CPU per extra 10k events"]["note"]


def test_memory_summary_sees_growth():
    rows = [{"span": k, "rss_mb": 1000.0 + (50.0 * k if k > 1 else 0), "peak_rss_mb": 2000.0} for k in range(1, 11)]
    m = fb.memory_summary(rows)
    assert m["rss_slope_mb_per_cycle"] == 50.0 and m["flat"] is False


def test_memory_summary_of_a_level_run_is_flat_with_its_second_half_slope():
    # Growth that levels off, as caches fill: flat, and the late slope near zero.
    rows = [{"span": k, "rss_mb": 1000.0 + 200.0 * (1 - 0.8 ** k), "peak_rss_mb": 1300.0} for k in range(1, 101)]
    m = fb.memory_summary(rows)
    assert m["flat"] is True and abs(m["rss_slope_second_half_mb_per_cycle"]) < 0.01


def test_a_memory_run_is_what_the_memory_target_judges():
    sizes = {"10000": _fake_result(10_000, driftline_cpu=10.0)}
    rows = [{"span": k, "rss_mb": 1000.0 + k, "peak_rss_mb": 1200.0, "wall_s": 9.0} for k in range(1, 101)]
    run = {"events_per_span": 10_000, "cycles": 100, "rows": rows}
    run["memory"] = fb.memory_summary(rows)
    h = fb.headline(sizes, 10_000, run)
    memory = {t["target"]: t for t in fb.evaluate_targets(h)}["controller RSS flat"]
    assert memory["value"] == 1.0 and memory["met"] is True  # +1 MB a cycle: 1,100 vs 1,051, within 5%
    assert "over 100 cycles of 10,000 events" in memory["note"] and "asks for" not in memory["note"]
    without = {t["target"]: t for t in fb.evaluate_targets(fb.headline(sizes, 10_000))}["controller RSS flat"]
    assert "--memory-cycles 100" in without["note"]


def test_stock_rows_are_reused_only_from_the_same_stream_and_stock_code():
    old_result = _fake_result(10_000, driftline_cpu=10.0)
    old_result["simulator"] = {"seed": 0, "events_per_minute": 1000}
    here = {k: v for k, v in fb.machine_info().items() if k in ("nproc", "cpu_model", "mem_gib")}
    old = {"date": "2026-12-01", "command": "freshness.py --stock-sizes 10000", "allowed_lateness_s": 30,
           "sizes": {"10000": old_result}, "machine": dict(here, python="3.10")}
    now = {"simulator": {"seed": 0, "events_per_minute": 1000}, "spans": 4}
    reused = fb.reused_stock("old.json", old, 10_000, now, 30)
    assert set(reused["regimes"]) == {fb.STOCK_STATELESS, fb.STOCK_STATEFUL}
    assert reused["regimes"][fb.STOCK_STATELESS] == old_result["regimes"][fb.STOCK_STATELESS]
    assert reused["source"]["date"] == "2026-12-01"
    assert fb.reused_stock("old.json", old, 100_000, now, 30) is None  # no stock run at that size
    with pytest.raises(SystemExit, match="differs in simulator"):
        fb.reused_stock("old.json", old, 10_000, dict(now, simulator={"seed": 1, "events_per_minute": 1000}), 30)
    with pytest.raises(SystemExit, match="differs in allowed lateness"):
        fb.reused_stock("old.json", old, 10_000, now, 60)
    with pytest.raises(SystemExit, match="differs in machine"):
        fb.reused_stock("old.json", dict(old, machine=dict(here, nproc=64)), 10_000, now, 30)
    with pytest.raises(SystemExit, match="stock code"):
        fb.reused_stock("old.json", dict(old, stock_code_digest="0" * 16), 10_000, now, 30)
    assert fb.reused_stock("old.json", dict(old, stock_code_digest=fb.stock_code_digest()), 10_000, now, 30)


def test_section_renders_between_its_marks(tmp_path):
    sizes = {"10000": _fake_result(10_000, 10.0)}
    h = fb.headline(sizes, 10_000)
    report = {"date": "2026-01-01", "command": ".venv/bin/python benchmarks/freshness.py --quick",
              "machine": {"nproc": 2, "cpu_model": "x", "mem_gib": 8, "python": "3.10", "tensorflow": "2.16",
                          "apache_beam": "2.59", "tfx": "1.16"},
              "river_version": "0.19.0", "seed": 0, "allowed_lateness_s": 60, "poll_seconds": 5.0,
              "benchmark_wall_s": 600.0, "headline": h, "targets": fb.evaluate_targets(h), "sizes": sizes,
              "notes": ""}
    section = fb.render_section(report, "results/freshness.png")
    start, end = fb.marks(fb.SECTION)
    assert section.startswith(start) and section.rstrip().endswith(end)
    assert "| 4 | driftline continuous | 14.0 | 14.0 | 74 | yes | 0.7500 | 0.7500 |" in section
    out = tmp_path / "RESULTS.md"
    out.write_text("# driftline benchmark results\n\n<!-- cost:start -->\nkept\n<!-- cost:end -->\n")
    fb.replace_section(str(out), fb.SECTION, section)
    fb.replace_section(str(out), fb.SECTION, section)
    text = out.read_text()
    assert text.count(start) == 1 and "kept" in text


def test_replaying_span_by_span_writes_the_reference_stream(tmp_path):
    sim = SimulatorConfig(minutes=40, events_per_minute=50, late_fraction=0.3)
    reference = str(tmp_path / "reference")
    simulate(reference, sim)
    replayed = str(tmp_path / "replayed")
    schedule = fb.replay_schedule(3, 60)
    for i, minutes in enumerate(schedule):
        simulate(replayed, SimulatorConfig(minutes=minutes, events_per_minute=50, late_fraction=0.3), append=i > 0)
    until = sim.start_ms + sum(schedule) * 60_000
    ref_events = fb.read_events(reference)
    assert fb.stream_difference(fb.read_events(replayed), ref_events, until) == 0
    assert fb.stream_difference(fb.read_events(replayed), ref_events, until - 60_000) > 0


def test_a_worker_peak_memory_is_its_own_not_its_parents():
    # A parent holding 400 MB starts a child that allocates next to nothing; ru_maxrss would say 400+.
    import subprocess
    import sys

    ballast = bytearray(400 * 2 ** 20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touched, so resident
    out = subprocess.run([sys.executable, "-c", "from benchmarks import freshness; print(freshness.peak_rss_mb())"],
                         env=fb._child_env(), capture_output=True, text=True, check=True)
    del ballast
    assert 0 < float(out.stdout.strip()) < 300


def test_every_river_configuration_scores_a_span_before_learning_it_and_the_best_is_the_peer():
    # Span 1 teaches "user a clicks, user b does not"; span 2 shows it again; span 3 reverses it. A model that
    # learned span 2 before scoring it would rank span 2 perfectly at every rate; scored first, it ranks it by
    # what span 1 taught.
    def span(click_user, n=40):
        return [{"user_id": u, "ad_id": "x", "ad_category": "c", "device": "d", "hour_of_day": 1, "price": 1.0,
                 "clicked": u == click_user} for _ in range(n) for u in ("a", "b")]
    by_span = {1: span("a"), 2: span("a"), 3: span("b")}
    peers = fb.river_peers(by_span, 2)
    assert set(peers) == set(fb.RIVER_CONFIGS)
    for config, rows in peers.items():
        assert [r["span"] for r in rows] == [1, 2]
        assert rows[0]["next_span_auc"] == 1.0, config  # learned span 1, scored on span 2
        assert rows[1]["next_span_auc"] == 0.0, config  # learned spans 1-2, scored on span 3 (reversed)
    fake = {"x": [{"span": 2, "next_span_auc": 0.6}, {"span": 3, "next_span_auc": 0.8}],
            "y": [{"span": 1, "next_span_auc": 0.99}, {"span": 2, "next_span_auc": 0.65}, {"span": 3, "next_span_auc": 0.7}]}
    assert fb.best_river(fake) == "x"  # 0.70 against 0.675: cycle 1 is not steady state
