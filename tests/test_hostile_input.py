"""Hostile producers against ingestion: lines that used to crash it, clocks that used to freeze it,
and retries that used to be trained twice (issue: hostile producers).

Every test runs the real reader, parser and Beam graph (`ingest.run_ingest` on DirectRunner, no TFX),
chaining committed states from run to run as ML Metadata would, and checks each line the test wrote
against what the runs published: its spans' examples, dead letters and duplicate lists.
"""
from __future__ import annotations

import glob
import json
import os
import random
from typing import Dict, List

import apache_beam as beam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.event_log import EventLogWriter, Position
from components.event_schema import InvalidEvent, ad_click_schema
from components.streaming_example_gen import ingest, windowing
from components.streaming_example_gen.sources import EventLogSource
from ingest_helpers import BASE_MS, MINUTE_MS, ad_click_event

SPAN_MS = 10 * MINUTE_MS
YEAR_MS = 365 * 24 * 60 * MINUTE_MS


def _line(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


# -- the parse path never raises ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"[" * 5000,                                # the line that used to crash every ingest run
    b'{"a":' * 5000,
    b"[" * 995 + b"NaN" + b"]" * 995,            # within orjson's depth, too deep for json.loads' recursion
    b'{"event_id": "x", "nested": ' + b"[" * 3000 + b"]" * 3000 + b"}",
])
def test_deeply_nested_lines_are_dead_letters_not_crashes(raw):
    with pytest.raises(InvalidEvent, match="nested"):
        ad_click_schema().parse(raw)


def test_a_line_longer_than_max_line_bytes_is_refused_unparsed():
    schema = ad_click_schema()
    event = ad_click_event("long", BASE_MS, random.Random(0))
    event["padding"] = "x" * (schema.max_line_bytes + 10)  # an unknown key: valid but for its length
    with pytest.raises(InvalidEvent, match=f"exceeds max_line_bytes={schema.max_line_bytes}"):
        schema.parse(_line(event))
    # The limit travels with the schema, as it does to the ingest workers.
    small = type(schema).from_json(json.dumps(dict(schema.to_dict(), max_line_bytes=200)))
    assert small.max_line_bytes == 200
    with pytest.raises(InvalidEvent, match="exceeds max_line_bytes=200"):
        small.parse(_line(dict(ad_click_event("e", BASE_MS, random.Random(0)), note="y" * 100)))


_JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
_JSON = st.recursive(_JSON_LEAVES, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)), max_leaves=20)
_GOOD = ad_click_event("fuzz", BASE_MS, random.Random(1))


@st.composite
def _event_like(draw) -> bytes:
    """A valid event with some fields replaced, dropped or added, serialized as JSON (NaN allowed)."""
    event = dict(_GOOD)
    for key in draw(st.lists(st.sampled_from(sorted(_GOOD)), max_size=4, unique=True)):
        if draw(st.booleans()):
            event[key] = draw(_JSON)
        else:
            del event[key]
    event.update(draw(st.dictionaries(st.text(max_size=6), _JSON, max_size=2)))
    text = json.dumps(event)
    if draw(st.booleans()):  # tear it somewhere
        text = text[:draw(st.integers(min_value=0, max_value=len(text)))]
    return text.encode("utf-8", "surrogatepass")


def _fuzz_lines(lines: List[bytes]) -> None:
    """Every line is exactly one valid event or one invalid record with a reason; nothing raises."""
    parser = ingest.RecordParser(ad_click_schema(), windowing.Window(SPAN_MS, 0, 0.2))
    records = [(i, line.replace(b"\n", b" "), None) for i, line in enumerate(lines)]
    valid, invalid, hashes, _ = parser.parse(records)
    assert sorted([v[0] for v in valid] + [r[0] for r in invalid]) == list(range(len(lines)))
    assert len(hashes) == len(valid)
    assert all(isinstance(reason, str) and reason for _, _, reason in invalid)


# Iterations: the README quotes these (lines fuzzed = examples x up to 12 lines each).
FUZZ_EXAMPLES = 1500


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=12))
def test_fuzz_random_bytes_never_escape_the_parser(lines):
    _fuzz_lines(lines)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event_like(), min_size=1, max_size=12))
def test_fuzz_structured_json_never_escapes_the_parser(lines):
    _fuzz_lines(lines)


# -- running ingest as the component does ---------------------------------------------------------------------------


class Runs:
    """Ingest runs over one log, each publishing into its own folder and committing its state."""

    def __init__(self, tmp_path, window: windowing.Window, horizon: int = 3):
        self.tmp_path = tmp_path
        self.log_dir = str(tmp_path / "events")
        self.window = window
        self.horizon = horizon
        self.state = windowing.CommittedState()
        self.span_uris: Dict[int, str] = {}
        self.n = 0

    def run(self, now_ms: int) -> ingest.IngestRun:
        self.n += 1
        root = str(self.tmp_path / f"run-{self.n}")
        os.makedirs(self.tmp_path / f"work-{self.n}")
        newest = sorted(self.span_uris)[-self.horizon:] if self.horizon else []
        run = ingest.run_ingest(beam.Pipeline, source=EventLogSource(self.log_dir, chunk_bytes=4096),
                                schema=ad_click_schema(), window=self.window, state=self.state,
                                output_root=root, work_dir=str(self.tmp_path / f"work-{self.n}"),
                                dedup_span_uris=[self.span_uris[s] for s in newest], now_ms=now_ms)
        self.state = run.committed
        if run.result is not None:
            for span in run.result.decision.emitted_spans:
                self.span_uris[span] = ingest.span_dir(root, span)
        return run

    def examples(self) -> Dict[str, int]:
        """event_id -> the span it was published in, from the TFRecords; a repeat fails the test."""
        import tensorflow as tf

        where: Dict[str, int] = {}
        for span, uri in self.span_uris.items():
            for path in glob.glob(os.path.join(uri, "Split-*", "*.tfrecord.gz")):
                for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                    example = tf.train.Example.FromString(record.numpy())
                    event_id = example.features.feature["event_id"].bytes_list.value[0].decode()
                    assert event_id not in where, f"{event_id} published twice"
                    where[event_id] = span
        return where

    def dead_letters(self) -> List[dict]:
        return [json.loads(line) for uri in self.span_uris.values()
                for path in glob.glob(os.path.join(uri, ingest.DEAD_LETTER_DIR, "*.jsonl"))
                for line in open(path)]

    def duplicates(self) -> List[dict]:
        return [json.loads(line) for uri in self.span_uris.values()
                for path in glob.glob(os.path.join(uri, ingest.DUPLICATES_DIR, "*.jsonl"))
                for line in open(path)]


def _write(log_dir: str, lines: List[bytes]) -> None:
    with EventLogWriter(log_dir) as writer:
        writer.write_lines(lines)


def _minutes(start_ms: int, minutes: int, per_minute: int, prefix: str, seed: int = 0) -> List[dict]:
    rng = random.Random(seed)
    step = MINUTE_MS // per_minute
    return [ad_click_event(f"{prefix}-{i}", start_ms + i * step, rng) for i in range(minutes * per_minute)]


NOW = BASE_MS + 10 * 24 * 60 * MINUTE_MS  # the ingest machine's clock in these tests: ten days after the events


def test_an_event_from_the_future_is_dead_lettered_and_never_moves_the_watermark(tmp_path):
    runs = Runs(tmp_path, windowing.Window(SPAN_MS, 0, 0.2, max_future_ms=5 * MINUTE_MS))
    first = _minutes(BASE_MS, 25, 20, "a")
    future = ad_click_event("from-2027", NOW + YEAR_MS, random.Random(2))
    # After the first event of the span left pending, so the next run re-reads it.
    _write(runs.log_dir, [_line(e) for e in first[:450]] + [_line(future)] + [_line(e) for e in first[450:]])
    run = runs.run(NOW)
    # The real watermark (25 minutes in) closes spans 0 and 1; the future event would have closed span 2 too.
    base_span = BASE_MS // SPAN_MS
    assert sorted(run.result.decision.emitted_spans) == [base_span, base_span + 1]
    assert run.committed.max_event_time_ms == first[-1]["event_time"]
    [dead] = runs.dead_letters()
    assert dead["reason"].startswith(windowing.FROM_THE_FUTURE) and json.loads(dead["line"])["event_id"] == "from-2027"
    assert run.result.dead_letter_kinds == {windowing.FROM_THE_FUTURE: 1}

    # More events; the clock jumps past the future event, which would now look valid. It was dead-lettered
    # when first read, so it is neither dead-lettered again nor emitted.
    second = _minutes(BASE_MS + 25 * MINUTE_MS, 20, 20, "b", seed=3)
    _write(runs.log_dir, [_line(e) for e in second])
    runs.run(NOW + 2 * YEAR_MS)
    published = runs.examples()
    assert "from-2027" not in published and len(runs.dead_letters()) == 1
    expected = {e["event_id"] for e in first + second if e["event_time"] < (base_span + 4) * SPAN_MS}
    assert set(published) == expected


def test_a_log_whose_committed_state_holds_a_future_event_recovers_by_itself(tmp_path):
    """What older code committed: the future event pending, the watermark a year ahead, no cutoffs."""
    runs = Runs(tmp_path, windowing.Window(SPAN_MS, 0, 0.2, max_future_ms=5 * MINUTE_MS))
    events = _minutes(BASE_MS, 5, 20, "a")
    future = ad_click_event("from-2027", NOW + YEAR_MS, random.Random(2))
    _write(runs.log_dir, [_line(e) for e in events[:50]] + [_line(future)] + [_line(e) for e in events[50:]])
    segment = sorted(n for n in os.listdir(runs.log_dir) if n.endswith(".jsonl"))[0]
    lines = open(os.path.join(runs.log_dir, segment), "rb").read()
    future_at = lines.index(b'"from-2027"')
    future_at = lines.rindex(b"\n", 0, future_at) + 1
    # The old run emitted span 0 half-full (events[:50]); everything after the future line was skipped or pending.
    runs.state = windowing.CommittedState(end=Position(segment, len(lines)), resume=Position(segment, future_at),
                                          last_span=BASE_MS // SPAN_MS - 1, max_event_time_ms=future["event_time"])
    _write(runs.log_dir, [_line(e) for e in _minutes(BASE_MS + 5 * MINUTE_MS, 15, 20, "b", seed=4)])
    run = runs.run(NOW)
    assert run.result.decision.emitted_spans == {BASE_MS // SPAN_MS}  # the span the real watermark closed
    assert [json.loads(d["line"])["event_id"] for d in runs.dead_letters()] == ["from-2027"]
    assert run.committed.resume > Position(segment, future_at)  # no longer stuck on the future line
    assert run.committed.max_event_time_ms < NOW


def test_a_late_event_far_behind_the_watermark_is_dead_lettered_as_too_late(tmp_path):
    runs = Runs(tmp_path, windowing.Window(SPAN_MS, 0, 0.2, max_lateness_ms=15 * MINUTE_MS))
    _write(runs.log_dir, [_line(e) for e in _minutes(BASE_MS, 25, 10, "a")])
    runs.run(NOW)
    watermark = runs.state.max_event_time_ms
    rng = random.Random(5)
    late_ok = ad_click_event("late-ok", watermark - 14 * MINUTE_MS, rng)
    too_late = ad_click_event("too-late", watermark - 16 * MINUTE_MS, rng)
    _write(runs.log_dir, [_line(late_ok), _line(too_late)] + [_line(e) for e in _minutes(BASE_MS + 25 * MINUTE_MS, 10, 10, "b")])
    run = runs.run(NOW)
    published = runs.examples()
    assert "late-ok" in published and "too-late" not in published
    [dead] = runs.dead_letters()
    assert dead["reason"].startswith(windowing.TOO_LATE) and json.loads(dead["line"])["event_id"] == "too-late"
    assert run.result.dead_letter_kinds == {windowing.TOO_LATE: 1}


def test_a_retried_event_id_is_published_once_and_counted_as_a_duplicate(tmp_path):
    runs = Runs(tmp_path, windowing.Window(SPAN_MS, 0, 0.2))
    events = _minutes(BASE_MS, 25, 10, "a")
    retried = events[30]
    # The same event twice in one run (a producer retry), and again in the next run's read.
    _write(runs.log_dir, [_line(e) for e in events[:40]] + [_line(retried)] + [_line(e) for e in events[40:]])
    first = runs.run(NOW)
    later = _minutes(BASE_MS + 25 * MINUTE_MS, 10, 10, "b")
    _write(runs.log_dir, [_line(retried)] + [_line(e) for e in later])
    second = runs.run(NOW)
    published = runs.examples()
    assert retried["event_id"] in published
    assert set(published) == {e["event_id"] for e in events + later if e["event_time"] < second.committed.max_event_time_ms // SPAN_MS * SPAN_MS}
    dups = runs.duplicates()
    assert len(dups) == 2 and len({(d["segment"], d["offset"]) for d in dups}) == 2
    counted = sum(s.duplicates for s in first.result.spans.values()) + sum(s.duplicates for s in second.result.spans.values())
    assert counted == 2
    # The copy that won is the first one written: the duplicates are the later positions.
    segment = sorted(n for n in os.listdir(runs.log_dir) if n.endswith(".jsonl"))[0]
    log = open(os.path.join(runs.log_dir, segment), "rb").read()
    first_copy = log.index(_line(retried))
    assert all(d["offset"] > first_copy for d in dups)


def test_without_the_horizon_a_retry_in_a_later_run_is_not_caught(tmp_path):
    """The horizon is what makes the second run's check: with none, only one run's reads are compared."""
    runs = Runs(tmp_path, windowing.Window(SPAN_MS, 0, 0.2), horizon=0)
    events = _minutes(BASE_MS, 25, 10, "a")
    _write(runs.log_dir, [_line(e) for e in events])
    runs.run(NOW)
    _write(runs.log_dir, [_line(events[3])] + [_line(e) for e in _minutes(BASE_MS + 25 * MINUTE_MS, 10, 10, "b")])
    runs.run(NOW)
    with pytest.raises(AssertionError, match=f"{events[3]['event_id']} published twice"):
        runs.examples()


def test_an_overlong_line_is_a_dead_letter_with_its_first_bytes_and_its_neighbours_are_read(tmp_path):
    runs = Runs(tmp_path, windowing.Window(SPAN_MS, 0, 0.2))
    events = _minutes(BASE_MS, 15, 10, "a")
    huge = json.dumps(dict(ad_click_event("huge", BASE_MS + 1, random.Random(7)), pad="z" * (3 << 20))).encode()
    _write(runs.log_dir, [_line(e) for e in events[:20]] + [huge] + [_line(e) for e in events[20:]])
    runs.run(NOW)
    [dead] = runs.dead_letters()
    assert dead["reason"] == f"line of {len(huge)} bytes exceeds max_line_bytes={1 << 20}"
    assert huge.startswith(dead["line"].encode()) and len(dead["line"]) <= 1024
    assert set(runs.examples()) == {e["event_id"] for e in events if e["event_time"] < BASE_MS + SPAN_MS}


@pytest.mark.parametrize("window, message", [
    (dict(max_future_seconds=-1), "window.max_future_seconds must be >= 0 or None"),
    (dict(max_lateness_seconds=-5), "window.max_lateness_seconds must be >= 0 or None"),
    (dict(dedup_horizon_runs=-1), "window.dedup_horizon_runs must be >= 0 or None"),
    (dict(dedup_horizon_runs=9), r"window.dedup_horizon_runs \(9\) is more than retention.keep_cycles \(3\)"),
])
def test_bad_time_bound_and_dedup_settings_stop_with_the_setting_named(window, message):
    from pipelines.config import ConfigError, WindowConfig, default_config

    with pytest.raises(ConfigError, match=message):
        default_config("home").replace(window=WindowConfig(**window)).validate()


def test_the_window_settings_become_the_runtime_bounds():
    from pipelines.config import WindowConfig

    assert WindowConfig().runtime() == windowing.Window(600_000, 30_000, 0.2, max_future_ms=300_000,
                                                          max_lateness_ms=None)
    assert WindowConfig(max_future_seconds=None, max_lateness_seconds=60).runtime().max_lateness_ms == 60_000


def test_lines_first_judged_now_keep_this_runs_cutoff_so_a_dead_letter_is_not_written_twice():
    """Lines read before any cutoff (older code, or the bound off) are judged by the first run with one;
    the state it commits must say so, or a re-read would judge them again (and dead-letter them again)."""
    seg = "segment-000000000000.jsonl"
    legacy = windowing.CommittedState(end=Position(seg, 1000), resume=Position(seg, 100), last_span=5,
                                      max_event_time_ms=NOW + YEAR_MS)
    window = windowing.Window(SPAN_MS, 0, 0.2, max_future_ms=5 * MINUTE_MS)
    bounds = windowing.TimeBounds.for_run(window, legacy, NOW)
    future_line = Position(seg, 500)
    assert legacy.first_read_cutoff(future_line) == (True, None)
    assert bounds.future(future_line, NOW + YEAR_MS) == windowing.DEAD_LETTER
    assert bounds.trusted_max_event_time_ms is None  # the legacy watermark is not trusted
    # This run read on to 2000 and left a pending line at 120: everything from 120 on may be re-read.
    committed = windowing.CommittedState(end=Position(seg, 2000), resume=Position(seg, 120), last_span=6,
                                         max_event_time_ms=NOW - MINUTE_MS,
                                         cutoffs=bounds.next_cutoffs(Position(seg, 2000), Position(seg, 120)))
    assert committed.first_read_cutoff(future_line) == (True, bounds.cutoff_ms)
    later = windowing.TimeBounds.for_run(window, committed, NOW + 2 * YEAR_MS)
    assert later.future(future_line, NOW + YEAR_MS) == windowing.SKIP  # dead-lettered once, by the run above
    assert later.cutoff_ms == NOW + 2 * YEAR_MS + 5 * MINUTE_MS
    # And a clock that steps back never lowers the cutoff.
    assert windowing.TimeBounds.for_run(window, committed, NOW - YEAR_MS).cutoff_ms == bounds.cutoff_ms


def test_kafka_record_timestamps_are_bounded_like_payload_times():
    """A Kafka source takes event time from record timestamps: a producer's clock a year ahead is refused the same way."""
    from components.kafka_log import PartitionOffset

    window = windowing.Window(SPAN_MS, 0, 0.2, max_future_ms=5 * MINUTE_MS)
    bounds = windowing.TimeBounds.for_run(window, windowing.CommittedState(), NOW)
    parser = ingest.RecordParser(ad_click_schema(), window, event_time_from_record=True, bounds=bounds)
    event = _line(ad_click_event("k", BASE_MS, random.Random(3)))
    records = [(0, event, NOW - MINUTE_MS), (1, event, NOW + YEAR_MS), (2, event, NOW + MINUTE_MS)]
    valid, invalid, hashes, regardless = parser.parse(records, 0, lambda lane, offset: PartitionOffset(lane, offset))
    assert [(v[0], v[1]) for v in valid] == [(0, NOW - MINUTE_MS), (2, NOW + MINUTE_MS)]
    assert [(o, r.split(":")[0]) for o, _, r in invalid] == [(1, windowing.FROM_THE_FUTURE)]
    assert regardless == {1} and len(hashes) == 2
