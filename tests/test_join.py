"""The join rules (components/streaming_example_gen/join.py), on records built in memory."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from components.config_base import ConfigError
from components.event_log import Position
from components.streaming_example_gen import join, windowing
from components.streaming_example_gen.ingest import id_hash
from components.streaming_example_gen.join_config import JoinStreamConfig
from join_helpers import join_config

SPAN_MS = 60_000
WINDOW = windowing.Window(span_ms=SPAN_MS, allowed_lateness_ms=0, eval_fraction=0.2)
W = 10_000  # the attribution window of join_config()


class Log:
    """An in-memory stream whose positions grow like an event log's (one segment)."""

    def __init__(self):
        self.records = []

    def add(self, **event) -> Position:
        p = Position("00000000.jsonl", len(self.records) * 100)
        self.records.append((p, json.dumps(event).encode()))
        return p

    @property
    def end(self) -> Position:
        return Position("00000000.jsonl", len(self.records) * 100)

    def since(self, start):
        return [r for r in self.records if start is None or not r[0] < start]


def imp(log, iid, ts):
    return log.add(impression_id=iid, ts=ts, ad_id="a")


def out(log, iid, ts, oid=None, kind="click", value=None):
    event = dict(outcome_id=oid or f"{iid}-{ts}", impression_id=iid, ts=ts, outcome_type=kind)
    if value is not None:
        event["value"] = value
    return log.add(**event)


def step(cfg, state, imps, outs, emitted_ids=None):
    return join.join_step(cfg, WINDOW, state, imps.since(state.imp_resume), outs.since(state.out_resume),
                          imps.end, outs.end, emitted_ids)


def labels(result):
    return {e.impression_id: e.label for e in result.examples}


def test_window_edges_exactly_at_the_end_counts_one_ms_after_does_not():
    cfg = join_config()
    imps, outs = Log(), Log()
    imp(imps, "at_end", 1_000)
    imp(imps, "after_end", 2_000)
    imp(imps, "at_start", 3_000)
    out(outs, "at_end", 1_000 + W)
    out(outs, "after_end", 2_000 + W + 1)
    out(outs, "at_start", 3_000)
    # Both watermarks far past span 0 + window: span 0 is emitted.
    imp(imps, "later", SPAN_MS + W + 5_000)
    out(outs, "later", SPAN_MS + W + 5_000, kind="view")
    r = step(cfg, join.JoinState(), imps, outs)
    assert r.emitted_spans == (0,)
    assert labels(r) == {"at_end": 1, "after_end": 0, "at_start": 1}
    assert [d.kind for d in r.dead_letters if d.kind != join.NOT_COUNTED] == [join.OUTSIDE_WINDOW]


def test_span_closes_only_when_the_last_window_in_it_has_closed_under_both_watermarks():
    cfg = join_config()
    imps, outs = Log(), Log()
    imp(imps, "x", SPAN_MS - 1)  # the last ms of span 0: its window ends at SPAN_MS - 1 + W
    imp(imps, "y", SPAN_MS + W - 1)
    out(outs, "y", SPAN_MS + W - 1)
    r = step(cfg, join.JoinState(), imps, outs)
    assert r.join_watermark_ms == SPAN_MS + W - 1 and not r.emits  # watermark == window end: still open
    out(outs, "y", SPAN_MS + W, oid="tick", kind="view")
    imp(imps, "z", SPAN_MS + W)
    r = step(cfg, join.JoinState(), imps, outs)
    assert r.emitted_spans == (0,) and labels(r) == {"x": 0}


def test_a_stalled_outcome_stream_holds_the_join_back():
    cfg = join_config()
    imps, outs = Log(), Log()
    out(outs, "a", 500)
    imp(imps, "a", 400)
    for i in range(10):  # impressions run far ahead; outcomes stop at 500
        imp(imps, f"i{i}", 5 * SPAN_MS + i)
    r = step(cfg, join.JoinState(), imps, outs)
    assert r.join_watermark_ms == 500 and not r.emits and r.pending_impressions == 11
    assert r.held_back_by == "outcomes" and r.impressions_watermark_ms == 5 * SPAN_MS + 9
    out(outs, "i0", 5 * SPAN_MS + 2_000)  # the outcome stream catches up
    r = step(cfg, join.JoinState(), imps, outs)
    assert r.emitted_spans == (0,) and labels(r) == {"a": 1}


def test_outcome_before_its_impression_in_the_log_is_attributed():
    cfg = join_config()
    imps, outs = Log(), Log()
    out(outs, "a", 1_500)
    out(outs, "tick", 2 * SPAN_MS, kind="view")
    imp(imps, "tick0", 2 * SPAN_MS - 5)
    r1 = step(cfg, join.JoinState(), Log(), outs)  # impressions not there yet: nothing to emit, no commit
    assert not r1.emits
    imp(imps, "a", 1_000)  # logged after its outcome
    r = step(cfg, join.JoinState(), imps, outs)
    assert r.emitted_spans == (0,) and labels(r)["a"] == 1


def test_outcome_earlier_in_event_time_than_its_impression_is_a_dead_letter():
    cfg = join_config()
    imps, outs = Log(), Log()
    imp(imps, "a", 1_000)
    out(outs, "a", 999)
    imp(imps, "t", 2 * SPAN_MS)
    out(outs, "t", 2 * SPAN_MS, kind="view")
    r = step(cfg, join.JoinState(), imps, outs)
    assert labels(r) == {"a": 0}
    assert [d.kind for d in r.dead_letters] == [join.BEFORE_IMPRESSION, join.NOT_COUNTED]


def test_duplicate_outcomes_count_once_also_with_the_value_rule():
    cfg = join_config(label_rule="value", value_field="value", counted_types=("click", "conversion"))
    imps, outs = Log(), Log()
    imp(imps, "a", 1_000)
    out(outs, "a", 2_000, oid="c1", kind="conversion", value=5.0)
    out(outs, "a", 2_500, oid="c1", kind="conversion", value=5.0)  # a producer's retry
    out(outs, "a", 3_000, oid="c2", kind="click")  # no value: adds 0
    out(outs, "a", 4_000, oid="c3", kind="conversion", value=2.5)
    imp(imps, "t", 2 * SPAN_MS)
    out(outs, "t", 2 * SPAN_MS, kind="click")
    r = step(cfg, join.JoinState(), imps, outs)
    assert labels(r) == {"a": 7.5}
    assert [d.kind for d in r.dead_letters] == [join.DUPLICATE_OUTCOME]


def test_late_and_orphan_outcomes_are_dead_letters_decided_once_across_runs():
    cfg = join_config(orphan_bound_seconds=300)
    imps, outs = Log(), Log()
    imp(imps, "a", 1_000)
    imp(imps, "t1", SPAN_MS + W + 1)
    out(outs, "t1", SPAN_MS + W + 1, kind="view")
    r1 = step(cfg, join.JoinState(), imps, outs)
    assert r1.emitted_spans == (0,) and labels(r1) == {"a": 0}
    emitted = np.unique(np.asarray([id_hash("a")], dtype="<u8"))
    s1 = r1.state
    out(outs, "a", 2_000)  # within the window in event time, but after the span was emitted
    out(outs, "ghost", SPAN_MS + W + 2)  # its impression never appears
    imp(imps, "t2", 3 * SPAN_MS)
    out(outs, "t2", 3 * SPAN_MS, kind="view")
    r2 = step(cfg, s1, imps, outs, emitted)
    assert r2.emitted_spans == (1,) and labels(r2) == {"t1": 0}
    kinds = sorted(d.kind for d in r2.dead_letters)
    assert kinds == sorted([join.LATE_OUTCOME, join.NOT_COUNTED])  # the ghost waits for its bound
    assert r2.pending_outcomes == 1
    # Re-running from s1 (a crash before publishing) decides the same; from s2, nothing twice.
    assert [d.reason for d in step(cfg, s1, imps, outs, emitted).dead_letters] == [d.reason for d in r2.dead_letters]
    imp(imps, "t3", SPAN_MS + W + 2 + 300_000)  # the impression watermark is not yet past the bound
    out(outs, "t3", 10 * SPAN_MS, kind="view")
    assert join.ORPHAN_OUTCOME not in [d.kind for d in step(cfg, r2.state, imps, outs, emitted).dead_letters]
    imp(imps, "t4", 10 * SPAN_MS)
    r3 = step(cfg, r2.state, imps, outs, emitted)
    assert sorted(d.kind for d in r3.dead_letters) == sorted([join.ORPHAN_OUTCOME, join.NOT_COUNTED])
    assert r3.state.out_resume == outs.end and r3.state.pending_outcomes == ()


def test_pending_impressions_survive_as_a_resume_position_not_in_memory():
    cfg = join_config()
    imps, outs = Log(), Log()
    imp(imps, "a", 1_000)
    imp(imps, "b", SPAN_MS + 1_000)
    p_c = imp(imps, "c", 2 * SPAN_MS + 1_000)
    out(outs, "c", 2 * SPAN_MS + 2_000)
    out(outs, "b", SPAN_MS + 1_500)
    out(outs, "x", 2 * SPAN_MS + W + 500, kind="view")
    imp(imps, "d", 2 * SPAN_MS + W + 500)
    r = step(cfg, join.JoinState(), imps, outs)
    assert r.emitted_spans == (0, 1) and labels(r) == {"a": 0, "b": 1}
    s = join.JoinState.from_json(r.state.to_json())
    assert s == r.state and s.imp_resume == p_c and s.out_resume == outs.records[0][0]
    # Only c's outcome waits; b's (attributed) and x's (not counted) after it are skipped on the re-read.
    assert s.pending_outcomes == (outs.records[0][0],)
    out(outs, "y", 4 * SPAN_MS, kind="view")
    imp(imps, "e", 4 * SPAN_MS)
    r2 = step(cfg, s, imps, outs)
    assert r2.emitted_spans == (2,) and labels(r2) == {"c": 1, "d": 0}
    assert [d.kind for d in r2.dead_letters] == [join.NOT_COUNTED]  # only the new "view"; "x" was decided


def test_duplicate_and_late_impressions_and_malformed_lines_are_dead_letters():
    cfg = join_config()
    imps, outs = Log(), Log()
    imp(imps, "a", 1_000)
    imp(imps, "a", 1_001)
    imps.records.append((imps.end, b"{not json"))
    outs.records.append((outs.end, b'{"impression_id": 3}'))
    imp(imps, "t", SPAN_MS + W + 1)
    out(outs, "t", SPAN_MS + W + 1, kind="view")
    r = step(cfg, join.JoinState(), imps, outs)
    assert labels(r) == {"a": 0}
    imp(imps, "late", 500)
    imp(imps, "t2", 3 * SPAN_MS)
    out(outs, "t2", 3 * SPAN_MS, kind="view")
    r2 = step(cfg, r.state, imps, outs)
    assert [d.kind for d in r.dead_letters] == [join.DUPLICATE_IMPRESSION, join.MALFORMED_IMPRESSION,
                                                 join.MALFORMED_OUTCOME, join.NOT_COUNTED]
    assert join.LATE_IMPRESSION in [d.kind for d in r2.dead_letters]
    assert join.DUPLICATE_IMPRESSION not in [d.kind for d in r2.dead_letters]


@pytest.mark.parametrize("change, words", [
    (dict(key="nope"), "join.key"),
    (dict(label_rule="value"), "value_field"),
    (dict(counted_types=()), "counted_types"),
    (dict(attribution_window_seconds=0), "attribution_window_seconds"),
    (dict(outcome_type_field="ts"), "outcome_type_field"),
    (dict(value_field="value"), "label_rule='value'"),
])
def test_misconfigurations_name_the_fix(change, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        join_config(**change).validate()
    join_config().validate()


def test_a_required_impression_label_and_one_log_for_both_are_refused():
    cfg = join_config(imp_dir="same", out_dir="same")
    with pytest.raises(ConfigError, match="its own event log"):
        cfg.validate()
    cfg = join_config()
    schema = dataclasses.replace(cfg.impressions.schema, fields=tuple(
        dataclasses.replace(f, required=True) for f in cfg.impressions.schema.fields))
    bad = dataclasses.replace(cfg, impressions=JoinStreamConfig("i", schema))
    with pytest.raises(ConfigError, match="required=False"):
        bad.validate()


def test_a_passed_segment_that_grows_stops_the_next_read(tmp_path):
    from components.event_log import EventLogError, EventLogWriter
    from components.streaming_example_gen import join_run

    cfg = join_config(str(tmp_path / "imp"), str(tmp_path / "out"))
    with EventLogWriter(cfg.impressions.log_dir, max_segment_bytes=200) as w:
        w.write_events([{"impression_id": f"i{k}", "ts": 1_000 + k, "ad_id": "a"} for k in range(10)])
    with EventLogWriter(cfg.outcomes.log_dir, max_segment_bytes=200) as w:
        w.write_events([{"outcome_id": f"o{k}", "impression_id": f"i{k}", "ts": 1_500 + k, "outcome_type": "click"}
                        for k in range(10)])
    run = join_run.run_join(cfg, WINDOW, join.JoinState(), str(tmp_path / "spans"))
    state = join.JoinState.from_json(run.committed.to_json())
    assert state.out_segment_sizes and state.imp_segment_sizes
    first = sorted((tmp_path / "out").glob("*.jsonl"))[0]
    with open(first, "ab") as f:  # a producer appending to an old segment, without the writer's lock
        f.write(b'{"outcome_id": "x", "impression_id": "i0", "ts": 1600, "outcome_type": "click"}\n')
    with pytest.raises(EventLogError, match="grown|grew"):
        join_run.run_join(cfg, WINDOW, state, str(tmp_path / "spans"))


# -- the future bound: one producer's wrong clock must not close every open window ---------------------

BOUNDED = dataclasses.replace(WINDOW, max_future_ms=5_000)


def bounded_step(cfg, state, imps, outs, now_ms):
    return join.join_step(cfg, BOUNDED, state, imps.since(state.imp_resume), outs.since(state.out_resume),
                          imps.end, outs.end, None, now_ms=now_ms)


def test_an_impression_from_the_future_is_a_dead_letter_and_moves_no_watermark():
    cfg = join_config()
    imps, outs = Log(), Log()
    imp(imps, "a", 1_000)
    out(outs, "a", 2_000)
    imp(imps, "clock-ahead", 10 * SPAN_MS)  # a producer whose clock is hours ahead
    out(outs, "tick", 10 * SPAN_MS, kind="view")  # and one on the outcomes stream
    now = 3_000
    r = bounded_step(cfg, join.JoinState(), imps, outs, now)
    # Without the bound both watermarks would pass span 0 + W and "a" would be emitted before its window closed.
    assert not r.emits and r.pending_impressions == 1
    assert r.impressions_watermark_ms == 1_000 and r.outcomes_watermark_ms == 2_000
    assert sorted(d.kind for d in r.dead_letters) == [join.FUTURE_IMPRESSION, join.FUTURE_OUTCOME]
    assert all(str(now + 5_000) in d.reason for d in r.dead_letters)
    # Unbounded (the old behaviour): the far event closes span 0 at once.
    unbounded = step(cfg, join.JoinState(), imps, outs)
    assert unbounded.emitted_spans == (0,)


def test_a_future_impression_re_read_later_is_skipped_not_taken_however_the_clock_moved():
    cfg = join_config()
    imps, outs = Log(), Log()
    imp(imps, "a", 1_000)  # pending: its span stays open, so the next run re-reads from here
    imp(imps, "ahead", SPAN_MS + 30_000)  # 20 s past the bound of a run at 5_000
    out(outs, "a", 1_500)
    r1 = bounded_step(cfg, join.JoinState(), imps, outs, now_ms=5_000)
    assert [d.kind for d in r1.dead_letters] == [join.FUTURE_IMPRESSION] and not r1.emits
    state = join.JoinState.from_json(r1.state.to_json())  # committed and read back
    assert state.imp_cutoffs == ((imps.end, 10_000),)
    # Much later the clock has passed its time: it was decided once, by the run that first read it.
    imp(imps, "b", SPAN_MS + W + 40_000)
    out(outs, "b", SPAN_MS + W + 40_000, kind="view")
    r2 = bounded_step(cfg, state, imps, outs, now_ms=SPAN_MS + W + 40_000)
    assert r2.emitted_spans == (0,) and labels(r2) == {"a": 1}
    # "b" is the only one pending: "ahead" is neither taken nor dead-lettered again (the "view" tick is not counted).
    assert [d.kind for d in r2.dead_letters] == [join.NOT_COUNTED] and r2.pending_impressions == 1
    # The bound never goes back, on either stream.
    assert r2.state.out_cutoff_ms == SPAN_MS + W + 45_000
    r3 = bounded_step(cfg, r2.state, imps, outs, now_ms=0)
    assert r3.state.out_cutoff_ms == r2.state.out_cutoff_ms


def test_a_state_committed_before_the_bound_reads_and_judges_its_pending_impressions_now():
    cfg = join_config()
    imps, outs = Log(), Log()
    imp(imps, "a", 1_000)
    imp(imps, "ahead", 10 * SPAN_MS)
    out(outs, "a", 1_500)
    # Committed with no bound (older code): "ahead" was taken and holds the watermark far ahead.
    old = step(cfg, join.JoinState(), imps, outs)
    text = json.loads(old.state.to_json())
    del text["imp_cutoffs"], text["out_cutoff_ms"]
    state = join.JoinState.from_json(json.dumps(text))
    assert state.imp_cutoffs == () and state.out_cutoff_ms is None
    r = bounded_step(cfg, state, imps, outs, now_ms=2_000)
    # "ahead" was pending, so never decided: it is dead-lettered now, once.
    assert [d.kind for d in r.dead_letters] == [join.FUTURE_IMPRESSION]


def test_a_bounded_window_needs_the_clock():
    with pytest.raises(ValueError, match="now_ms"):
        join.join_step(join_config(), BOUNDED, join.JoinState(), [], [], Position("00000000.jsonl", 0),
                       Position("00000000.jsonl", 0))


def _with_position(cfg, **kw):
    """The helper's join with an int `position` on the impressions (what a ranking server logs)."""
    from components.event_schema import FieldSpec

    schema = cfg.impressions.schema
    schema = dataclasses.replace(schema, fields=schema.fields + (FieldSpec("position", "int"),
                                                                 FieldSpec("score", "float")))
    return dataclasses.replace(cfg, impressions=JoinStreamConfig(cfg.impressions.log_dir, schema), **kw)


def test_candidates_scored_but_not_shown_are_no_examples_and_server_fields_are_dropped(tmp_path):
    from components.event_log import EventLogWriter
    from components.streaming_example_gen import join_run

    import tensorflow as tf

    cfg = _with_position(join_config(str(tmp_path / "imp"), str(tmp_path / "out")), max_position=2,
                         drop_fields=("score",))
    cfg.validate()
    assert [f.name for f in cfg.examples_schema.fields] == ["impression_id", "ts", "ad_id", "label", "position"]
    with EventLogWriter(cfg.impressions.log_dir) as w:
        w.write_events([{"impression_id": f"r{k}", "ts": 1_000 + k, "ad_id": "a", "position": k, "score": 0.5}
                        for k in range(5)] + [{"impression_id": "tick", "ts": 2 * SPAN_MS, "ad_id": "a",
                                                "position": 0, "score": 0.1}])
    with EventLogWriter(cfg.outcomes.log_dir) as w:
        w.write_events([{"outcome_id": "o1", "impression_id": "r1", "ts": 1_500, "outcome_type": "click"},
                        {"outcome_id": "t", "impression_id": "tick", "ts": 2 * SPAN_MS, "outcome_type": "view"}])
    run = join_run.run_join(cfg, WINDOW, join.JoinState(), str(tmp_path / "spans"))
    # Positions 0 and 1 were shown (the top 2); 2-4 were scored only, and are neither examples nor dead letters.
    assert labels(run.result) == {"r0": 0, "r1": 1}
    assert [d.kind for d in run.result.dead_letters] == [join.NOT_COUNTED]
    files = sorted((tmp_path / "spans").rglob("*.gz"))
    records = [tf.train.Example.FromString(r.numpy()) for f in files
               for r in tf.data.TFRecordDataset(str(f), compression_type="GZIP")]
    assert len(records) == 2 and all("score" not in r.features.feature and "position" in r.features.feature
                                     for r in records)


@pytest.mark.parametrize("change, words", [
    (dict(drop_fields=("label",)), "join.drop_fields"),
    (dict(drop_fields=("nope",)), "join.drop_fields"),
    (dict(max_position=2, position_field="ad_id"), "join.max_position needs"),
    (dict(max_position=0), "join.max_position must be >= 1"),
])
def test_drop_fields_and_max_position_misconfigurations_name_the_fix(change, words):
    with pytest.raises(ConfigError, match=words):
        _with_position(join_config(), **change).validate()
