"""The simulated ad-click stream and the `driftline simulate` command: real logs, real parsing."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

from components.event_log import segment_name
from components.event_schema import InvalidEvent, ad_click_schema
from pipelines import cli
from pipelines.simulator import (DEVICES, HOUR_MS, MINUTE_MS, SimulatorConfig, SimulatorError, ad_popularity,
                                 click_probability, hot_ad_id, hot_ad_start_ms, simulate)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = ad_click_schema()


def log_bytes(log_dir):
    """The whole log, segments in name (= age) order."""
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(".jsonl"))
    return b"".join(open(os.path.join(log_dir, n), "rb").read() for n in names)


def log_lines(log_dir):
    return log_bytes(log_dir).splitlines()


def parse_all(lines):
    good, rejected = [], []
    for line in lines:
        try:
            good.append(SCHEMA.parse(line))
        except InvalidEvent as e:
            rejected.append(str(e))
    return good, rejected


def auc(labels, scores):
    labels = np.asarray(labels)
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    pos = labels.sum()
    neg = len(labels) - pos
    return (ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)


def rank_correlation(a, b):
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def hourly_ad_ctr(events, config, hour):
    """Click rate of each regular ad within one event-time hour."""
    clicks = np.zeros(config.n_ads)
    shown = np.zeros(config.n_ads)
    lo = config.start_ms + hour * HOUR_MS
    for e in events:
        a = int(e["ad_id"][1:])
        if lo <= e["event_time"] < lo + HOUR_MS and a < config.n_ads:
            shown[a] += 1
            clicks[a] += e["clicked"]
    return clicks / np.maximum(shown, 1)


# Three hours, few ads (so per-ad click rates are measured precisely), the hot ad at minute 60.
STREAM = SimulatorConfig(seed=7, minutes=180, events_per_minute=1000, n_ads=40, hot_ad_minute=60)


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp("stream"))
    summary = simulate(log_dir, STREAM)
    lines = log_lines(log_dir)
    events, rejected = parse_all(lines)
    return summary, lines, events, rejected


# -- determinism and shape -------------------------------------------------------------

def test_same_seed_gives_a_byte_identical_log_and_another_seed_another(tmp_path):
    config = SimulatorConfig(seed=3, minutes=12, events_per_minute=500, bad_fraction=0.02)
    logs = []
    for name, cfg in (("a", config), ("b", config), ("c", dataclasses.replace(config, seed=4))):
        simulate(str(tmp_path / name), cfg)
        logs.append(log_bytes(str(tmp_path / name)))
    assert len(logs[0]) > 100_000
    assert logs[0] == logs[1]
    assert logs[0] != logs[2]


def test_every_line_is_a_valid_event_with_exactly_the_schema_fields(stream):
    summary, lines, events, rejected = stream
    assert rejected == []
    assert len(events) == len(lines) == summary.events_written == 180_000
    assert {tuple(sorted(json.loads(line))) for line in lines[:1000]} == {
        tuple(sorted(f.name for f in SCHEMA.fields))}
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    category_of_ad = {}
    for e in events:
        assert e["hour_of_day"] == (e["event_time"] // HOUR_MS) % 24
        assert e["device"] in DEVICES
        assert e["price"] > 0
        assert e["clicked"] in (0, 1)
        assert category_of_ad.setdefault(e["ad_id"], e["ad_category"]) == e["ad_category"]
    times = [e["event_time"] for e in events]
    assert min(times) == summary.first_event_ms >= STREAM.start_ms
    assert max(times) == summary.last_event_ms < STREAM.start_ms + 180 * MINUTE_MS
    assert summary.clicks == sum(e["clicked"] for e in events)


def test_devices_belong_to_users(stream):
    _, _, events, _ = stream
    by_user = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e["device"])
    busy = [d for d in by_user.values() if len(d) >= 50]
    assert len(busy) > 100
    usual_share = np.mean([max(d.count(x) for x in DEVICES) / len(d) for d in busy])
    assert usual_share > 0.75  # uniform devices would give about 0.4


def test_click_rate_is_realistic_and_affinity_makes_it_learnable(stream):
    _, _, events, _ = stream
    clicked = np.array([e["clicked"] for e in events])
    assert 0.05 < clicked.mean() < 0.15
    truth = click_probability(STREAM, events)
    # The ground truth is the truth: calibrated in every probability band.
    assert abs(truth.mean() - clicked.mean()) < 0.005
    for lo, hi in ((0.0, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 1.0)):
        band = (truth >= lo) & (truth < hi)
        assert band.sum() > 1000
        assert abs(clicked[band].mean() - truth[band].mean()) < 0.02
    # Who sees which ad matters far more than which ad it is.
    ad_ctr = {}
    for e in events:
        c = ad_ctr.setdefault(e["ad_id"], [0, 0])
        c[0] += e["clicked"]
        c[1] += 1
    ad_only = np.array([ad_ctr[e["ad_id"]][0] / ad_ctr[e["ad_id"]][1] for e in events])
    assert auc(clicked, truth) > 0.8
    assert auc(clicked, truth) - auc(clicked, ad_only) > 0.1


# -- drift and the hot ad ------------------------------------------------------------

def test_ad_popularity_drifts_so_the_best_ads_change(stream, tmp_path):
    _, _, events, _ = stream
    first, last = hourly_ad_ctr(events, STREAM, 0), hourly_ad_ctr(events, STREAM, 2)
    assert rank_correlation(first, last) < 0.5
    assert set(np.argsort(first)[-5:]) != set(np.argsort(last)[-5:])
    truth = ad_popularity(STREAM, STREAM.start_ms), ad_popularity(STREAM, STREAM.start_ms + 150 * MINUTE_MS)
    assert rank_correlation(list(truth[0].values()), list(truth[1].values())) < 0.5

    # The control: without drift the same ads stay the best, so the test above can fail.
    still = dataclasses.replace(STREAM, drift_strength=0.0, hot_ad_minute=None)
    simulate(str(tmp_path), still)
    still_events, _ = parse_all(log_lines(str(tmp_path)))
    assert rank_correlation(hourly_ad_ctr(still_events, still, 0), hourly_ad_ctr(still_events, still, 2)) > 0.8


def test_hot_ad_appears_at_its_minute_with_a_high_click_rate(stream):
    summary, _, events, _ = stream
    hot, start = hot_ad_id(STREAM), hot_ad_start_ms(STREAM)
    assert (summary.hot_ad_id, summary.hot_ad_start_ms) == (hot, start) == ("a40", STREAM.start_ms + HOUR_MS)
    assert not any(e["ad_id"] == hot for e in events if e["event_time"] < start)
    after = [e for e in events if e["event_time"] >= start]
    shown = [e for e in after if e["ad_id"] == hot]
    assert abs(len(shown) / len(after) - STREAM.hot_ad_share) < 0.01
    hot_ctr = np.mean([e["clicked"] for e in shown])
    overall_ctr = np.mean([e["clicked"] for e in after])
    assert hot_ctr > 2 * overall_ctr
    assert hot_ctr > max(hourly_ad_ctr(events, STREAM, 1))  # better than every regular ad


# -- late and malformed data --------------------------------------------------------------

def test_late_events_arrive_after_newer_ones_at_about_the_late_fraction(stream):
    summary, _, events, _ = stream
    times = np.array([e["event_time"] for e in events])
    newest_before = np.maximum.accumulate(np.concatenate([[0], times[:-1]]))
    out_of_order = times < newest_before
    assert abs(out_of_order.mean() - STREAM.late_fraction) < 0.005
    # Nearly every delayed event is overtaken; the count the summary reports is real.
    assert 0.98 * summary.late_events <= out_of_order.sum() <= summary.late_events
    lateness = (newest_before - times)[out_of_order]
    assert lateness.max() <= STREAM.late_delay_max_ms
    assert lateness.max() > 60_000  # some are late by minutes, past the default allowed lateness


def test_without_late_events_the_log_is_in_event_time_order(tmp_path):
    summary = simulate(str(tmp_path), SimulatorConfig(minutes=5, late_fraction=0.0))
    times = [json.loads(line)["event_time"] for line in log_lines(str(tmp_path))]
    assert summary.late_events == 0
    assert times == sorted(times)


def test_bad_fraction_writes_lines_the_schema_rejects_of_every_kind(tmp_path):
    base = SimulatorConfig(seed=5, minutes=20, events_per_minute=1000)
    summary = simulate(str(tmp_path / "bad"), dataclasses.replace(base, bad_fraction=0.1))
    lines = log_lines(str(tmp_path / "bad"))
    events, rejected = parse_all(lines)
    assert len(lines) == 20_000
    assert 0.085 < len(rejected) / len(lines) < 0.115
    assert (summary.bad_lines, summary.events_written) == (len(rejected), len(events))
    reasons = " | ".join(rejected)
    for kind in ("not JSON", "missing required field", "expected int", "expected float", "not a finite number",
                 "exceeds max_string_length"):
        assert kind in reasons
    assert b"NaN" in b"".join(lines)
    # Corruption replaces lines of the same stream: every valid line is a line of the clean log.
    simulate(str(tmp_path / "clean"), base)
    clean = set(log_lines(str(tmp_path / "clean")))
    assert all(line in clean for line in lines if _parses(line))


def _parses(line):
    try:
        SCHEMA.parse(line)
        return True
    except InvalidEvent:
        return False


# -- the log: segments, appending, memory --------------------------------------------------

def test_segments_rotate_in_age_order_without_splitting_lines(tmp_path):
    config = SimulatorConfig(seed=2, minutes=10, events_per_minute=300)
    simulate(str(tmp_path / "one"), config)
    summary = simulate(str(tmp_path / "many"), dataclasses.replace(config, max_segment_bytes=20_000))
    names = sorted(n for n in os.listdir(tmp_path / "many") if n.endswith(".jsonl"))  # not the writers' lock file
    assert len(names) > 20
    assert names == [segment_name(i) for i in range(len(names))]
    assert summary.segments == tuple(names)
    for name in names:
        data = (tmp_path / "many" / name).read_bytes()
        assert data.endswith(b"\n") and len(data) <= 20_000
        for line in data.splitlines():
            SCHEMA.parse(line)
    # Rotation neither splits nor reorders: the segments read in name order are the unrotated log.
    assert log_bytes(str(tmp_path / "many")) == log_bytes(str(tmp_path / "one"))


def test_appending_continues_the_same_stream(tmp_path):
    first = SimulatorConfig(seed=1, minutes=10, events_per_minute=500)
    simulate(str(tmp_path / "split"), first)
    with pytest.raises(SimulatorError, match="append"):
        simulate(str(tmp_path / "split"), first)
    summary = simulate(str(tmp_path / "split"), first, append=True)
    assert summary.first_event_ms >= first.start_ms + 10 * MINUTE_MS
    split = log_lines(str(tmp_path / "split"))
    ids = [json.loads(line)["event_id"] for line in split]
    assert len(ids) == len(set(ids)) == 10_000
    # Two appended runs of 10 minutes hold the very events of one 20-minute run.
    simulate(str(tmp_path / "whole"), dataclasses.replace(first, minutes=20))
    assert sorted(split) == sorted(log_lines(str(tmp_path / "whole")))


def test_generation_streams_in_bounded_memory(tmp_path):
    config = SimulatorConfig(minutes=100, events_per_minute=1000, max_segment_bytes=4 << 20)
    simulate(str(tmp_path / "warm"), SimulatorConfig(minutes=1))  # world and imports outside the measurement
    tracemalloc.start()
    try:
        summary = simulate(str(tmp_path / "big"), config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    log_size = sum(os.path.getsize(tmp_path / "big" / n) for n in os.listdir(tmp_path / "big"))
    assert summary.events_written == 100_000 and log_size > 15 << 20
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for a {log_size / 2**20:.0f} MiB log"


# -- live mode ---------------------------------------------------------------------------------

def test_live_mode_runs_for_its_minutes_with_wall_clock_times_and_fresh_ids(tmp_path):
    simulate(str(tmp_path), SimulatorConfig(minutes=1, events_per_minute=200))
    before = time.time() * 1000
    summary = simulate(str(tmp_path), SimulatorConfig(minutes=0.02, events_per_minute=3000,
                                                      live_flush_seconds=0.2), live=True)
    after = time.time() * 1000
    assert summary.live and 40 <= summary.events_written <= 80  # 1.2 s at 50 events/s
    lines = log_lines(str(tmp_path))
    events, rejected = parse_all(lines)
    assert rejected == [] and len(events) == 200 + summary.events_written
    live_times = [e["event_time"] for e in events[200:]]
    assert before <= min(live_times) and max(live_times) <= after
    assert len({e["event_id"] for e in events}) == len(events)


def test_live_mode_stops_when_asked_from_another_thread(tmp_path):
    stop = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("summary", simulate(
        str(tmp_path), SimulatorConfig(minutes=None, events_per_minute=6000, live_flush_seconds=0.1),
        live=True, stop=stop)))
    worker.start()
    time.sleep(0.6)
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert result["summary"].events_written > 20
    assert log_bytes(str(tmp_path)).endswith(b"\n")


def test_live_cli_exits_cleanly_on_sigterm_leaving_whole_lines(tmp_path):
    log_dir = tmp_path / "live"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "simulate", "--log", str(log_dir), "--live",
         "--events-per-minute", "6000", "--bad-fraction", "0.05"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log_dir.is_dir() and log_bytes(str(log_dir))):
            time.sleep(0.05)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    data = log_bytes(str(log_dir))
    assert data.endswith(b"\n")
    events, rejected = parse_all(data.splitlines())
    assert len(events) > 100 and len(rejected) < len(events)
    assert f"wrote {len(events):,} events".encode() in out
    assert b"late), event time up to" in err  # a progress line


# -- the CLI ------------------------------------------------------------------------------------

def test_cli_simulate_prints_what_it_wrote(tmp_path, capsys):
    assert cli.main(["simulate", "--log", str(tmp_path), "--minutes", "2", "--events-per-minute", "100",
                     "--seed", "9", "--hot-ad-minute", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote 200 events" in out and "segment-000000000000.jsonl" in out and "hot ad a300" in out
    assert len(log_lines(str(tmp_path))) == 200


@pytest.mark.parametrize("args, message", [
    (["--late-fraction", "2"], "--late-fraction: must be a fraction between 0 and 1"),
    (["--events-per-minute", "0"], "--events-per-minute: must be >= 1"),
    (["--minutes", "soon"], "--minutes: expected a number"),
    (["--seed", "-1"], "--seed: must be >= 0"),
    (["--live", "--append"], "--append is for batch mode"),
])
def test_cli_rejects_bad_arguments_with_exit_code_2(tmp_path, capsys, args, message):
    assert cli.main(["simulate", "--log", str(tmp_path)] + args) == 2
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_cli_needs_a_command_and_a_log(capsys):
    assert cli.main([]) == 2
    assert cli.main(["simulate"]) == 2
    assert "--log" in capsys.readouterr().err


def test_cli_refuses_to_overwrite_a_log_without_append(tmp_path, capsys):
    assert cli.main(["simulate", "--log", str(tmp_path), "--minutes", "1"]) == 0
    assert cli.main(["simulate", "--log", str(tmp_path), "--minutes", "1"]) == 1
    assert "--append" in capsys.readouterr().err
    assert cli.main(["simulate", "--log", str(tmp_path), "--minutes", "1", "--append"]) == 0
    assert len(log_lines(str(tmp_path))) == 2000


@pytest.mark.parametrize("setting, value", [
    ("late_fraction", 1.5), ("bad_fraction", -0.1), ("events_per_minute", 0), ("minutes", 0),
    ("hot_ad_ctr", 1.0), ("late_delay_max_ms", 10), ("seed", -1), ("n_ads", 2.5), ("max_segment_bytes", 0),
])
def test_config_names_the_bad_setting(setting, value):
    with pytest.raises(ValueError, match=setting):
        SimulatorConfig(**{setting: value})


def test_a_batch_run_needs_minutes(tmp_path):
    with pytest.raises(ValueError, match="minutes"):
        simulate(str(tmp_path), SimulatorConfig(minutes=None))


def test_flip_labels_minutes_poisons_exactly_that_window(tmp_path):
    def events(path, config):
        simulate(str(path), config)
        rows = []
        for name in sorted(os.listdir(path)):
            rows += [json.loads(line) for line in open(path / name, "rb")]
        return {e["event_id"]: e for e in rows}

    base = SimulatorConfig(minutes=6, events_per_minute=200, seed=4)
    clean = events(tmp_path / "clean", base)
    poisoned = events(tmp_path / "poisoned", dataclasses.replace(base, flip_labels_minutes=(2.0, 4.0)))
    assert clean.keys() == poisoned.keys()
    for eid, e in clean.items():
        minute = (e["event_time"] - base.start_ms) / MINUTE_MS
        flipped = poisoned[eid]["clicked"] != e["clicked"]
        assert flipped == (2.0 <= minute < 4.0), (eid, minute)
    with pytest.raises(ValueError, match="flip_labels_minutes"):
        SimulatorConfig(flip_labels_minutes=(5.0, 1.0))
