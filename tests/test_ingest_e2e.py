"""End to end: StreamingExampleGen → stock StatisticsGen → stock SchemaGen, twice, on a growing log.

The pipeline is the real one (`create_ingest_pipeline(config, with_statistics=True)`
run by TFX's LocalDagRunner through `pipelines.local_runner.run_ingest`, Beam
DirectRunner, SQLite ML Metadata under tmp_path). Expectations are derived
from what the test wrote to the log and from the windowing rules of
DESIGN.md, not from the component's own arithmetic:

run 1: 40 minutes of events (5 % out of order by up to 2 minutes), 6 malformed
  lines and a half-written last line. span = 10 min, allowed lateness = 1 min,
  so the watermark is ~38:59 and spans 0-2 close; span 3 stays pending.
run 2: the half line is finished, 30 more minutes, 25 very late events (event
  times in spans 0-2, already emitted), 4 malformed lines. The watermark is
  ~68:59, so spans 3-5 are emitted, the late events in span 3's train split;
  span 6 stays pending.
"""
from __future__ import annotations

import json
import os

import pytest

import ingest_helpers as H
from components.event_log import EventLogWriter

SPAN_S = 600
LATENESS_S = 60
EVAL_FRACTION = 0.2
SPAN_MS = SPAN_S * 1000
S0 = H.BASE_MS // SPAN_MS  # absolute number of the first span
PIPELINE = "e2e"


def _config(tmp_path):
    from pipelines.config import DriftlineConfig, SourceConfig, WindowConfig

    return DriftlineConfig(
        pipeline_name=PIPELINE, home=str(tmp_path / "home"),
        # Small chunks and segments: several chunks per run, lines straddling chunk ends, segment rotation.
        source=SourceConfig(log_dir=str(tmp_path / "events"), chunk_bytes=256 << 10),
        window=WindowConfig(span_seconds=SPAN_S, allowed_lateness_seconds=LATENESS_S, eval_fraction=EVAL_FRACTION))


def _first_position(lines, valid, predicate):
    """Position of the first line in log order holding a valid event whose time satisfies `predicate`."""
    for ln in lines:
        eid = H.event_id_of(ln.line)
        if eid in valid and predicate(valid[eid]):
            return [ln.segment, ln.offset]
    return None


def _passed_segment_sizes(log_dir):
    """[name, size] of every segment but the newest: read to their end, they must never grow (at most 64)."""
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(".jsonl"))
    return [[n, os.path.getsize(os.path.join(log_dir, n))] for n in names[:-1]][-64:]


def _live(store, type_name):
    from ml_metadata.proto import metadata_store_pb2

    return [a for a in store.get_artifacts_by_type(type_name) if a.state == metadata_store_pb2.Artifact.LIVE]


def _input_artifact_ids(store, artifact_id):
    """Ids of the input artifacts of the execution that produced `artifact_id`."""
    from ml_metadata.proto import metadata_store_pb2

    [producer] = H.executions_of(store, artifact_id, metadata_store_pb2.Event.OUTPUT)
    return sorted(e.artifact_id for e in store.get_events_by_execution_ids([producer.id])
                  if e.type == metadata_store_pb2.Event.INPUT)


def _check_span(ps, *, expected_ids, late_ids, first_of_run, dead_letters_expected, log_lines_by_pos):
    """Every per-artifact assertion: TFX properties, custom properties, data, splits, dead letters."""
    a = ps.artifact
    start, end = ps.span * SPAN_MS, (ps.span + 1) * SPAN_MS
    cut = start + int(round(SPAN_MS * (1 - EVAL_FRACTION)))
    where = f"span {ps.span} ({ps.uri})"

    # TFX's own properties, the ones stock components and span resolvers read.
    assert a.properties["span"].int_value == ps.span
    assert a.properties["version"].int_value == 0, where
    assert json.loads(a.properties["split_names"].string_value) == ["train", "eval"], where
    assert H.str_prop(a, "payload_format") == "FORMAT_TF_EXAMPLE", where
    assert os.path.isdir(os.path.join(ps.uri, "Split-train")) and os.path.isdir(os.path.join(ps.uri, "Split-eval")), \
        f"{where}: stock components glob Split-train/* and Split-eval/*"

    # The data, read back from the TFRecords by event_id.
    train, evals = ps.examples["train"], ps.examples["eval"]
    ids = [e for e, _ in train + evals]
    assert len(ids) == len(set(ids)), f"{where}: duplicate event_ids"
    missing, extra = expected_ids - set(ids), set(ids) - expected_ids
    assert not missing and not extra, f"{where}: {len(missing)} missing (e.g. {sorted(missing)[:3]}), " \
                                      f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})"
    assert not (late_ids & {e for e, _ in evals}), f"{where}: a late event is in eval"
    on_time_train = [t for e, t in train if e not in late_ids]
    assert all(start <= t < cut for t in on_time_train), f"{where}: on-time train event outside [start, cut)"
    assert all(cut <= t < end for _, t in evals), f"{where}: eval event outside [cut, end)"
    assert all(t < start for e, t in train if e in late_ids), f"{where}: a late event is not older than its span"
    assert evals and on_time_train and min(t for _, t in evals) > max(on_time_train), \
        f"{where}: eval must be later in event time than all on-time training data"

    # Custom properties agree with the data.
    n_late = len(late_ids & set(ids))
    assert H.int_prop(a, "event_count") == len(ids) == H.int_prop(a, "train_count") + H.int_prop(a, "eval_count"), where
    assert H.int_prop(a, "train_count") == len(train) and H.int_prop(a, "eval_count") == len(evals), where
    assert H.int_prop(a, "late_count") == n_late, where
    times = [t for _, t in train + evals]
    assert H.int_prop(a, "min_event_time_ms") == min(times) and H.int_prop(a, "max_event_time_ms") == max(times), where
    assert H.int_prop(a, "span_start_ms") == start and H.int_prop(a, "span_end_ms") == end, where
    assert max(times) < end, where
    if n_late:
        assert min(times) < start, where
    else:
        assert min(times) >= start, where

    # Dead letters live only in the first span of a run, one row per malformed line, positions exact.
    assert H.int_prop(a, "dead_letter_count") == (len(dead_letters_expected) if first_of_run else 0), where
    if first_of_run:
        assert H.str_prop(a, "dead_letter_uri") == os.path.join(ps.uri, "dead_letter"), where
        got = sorted((r["segment"], r["offset"], H.dead_letter_bytes(r)) for r in ps.dead_letters)
        want = sorted((ln.segment, ln.offset, ln.line) for ln in log_lines_by_pos if ln.line in dead_letters_expected)
        assert got == want and len(want) == len(dead_letters_expected), f"{where}: dead letters differ"
        assert all(r["reason"] for r in ps.dead_letters), where
        assert any("line_base64" in r for r in ps.dead_letters) == any(
            not _is_utf8(x) for x in dead_letters_expected), where
    else:
        assert H.str_prop(a, "dead_letter_uri") == "" and not ps.dead_letters, where


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.e2e
def test_two_runs_with_stock_statistics_and_schema(tmp_path):
    from ml_metadata.proto import metadata_store_pb2
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2
    from pipelines.local_runner import run_ingest

    config = _config(tmp_path)
    log = H.SyntheticLog(config.source.log_dir, seed=20260101, max_segment_bytes=1 << 20)

    # ---- run 1 ------------------------------------------------------------------------------------------------
    r1 = log.append(H.BASE_MS, minutes=40, per_minute=300, late_fraction=0.05, late_range_ms=(1_000, 120_000),
                    malformed=6, partial_tail=True, not_before_ms=H.BASE_MS)
    assert r1.out_of_order_ids, "the generator should write out-of-order events"
    valid1 = dict(log.valid)  # the half-written line is not in it yet
    lines1, end1 = H.scan_log(config.source.log_dir)
    assert len(set(ln.segment for ln in lines1)) >= 2, "the log should rotate segments"
    clock1 = H.clock_ms()
    run_ingest(config, with_statistics=True)
    clock1 = (clock1, H.clock_ms())

    store = H.open_store(config.metadata_path)
    spans1 = H.published_spans(config.metadata_path, PIPELINE)
    assert [p.span for p in spans1] == [S0, S0 + 1, S0 + 2], "run 1 closes spans 0-2 only"
    max1 = max(valid1.values())
    pending_from1 = _first_position(lines1, valid1, lambda t: t // SPAN_MS > S0 + 2)
    committed1 = {"end": [end1.segment, end1.offset], "resume": pending_from1, "last_span": S0 + 2,
                  "max_event_time_ms": max1}
    committed1["segment_sizes"] = _passed_segment_sizes(config.source.log_dir)
    for i, ps in enumerate(spans1):
        expected = {e for e, t in valid1.items() if t // SPAN_MS == ps.span}
        _check_span(ps, expected_ids=expected, late_ids=set(), first_of_run=(i == 0),
                    dead_letters_expected=set(r1.malformed), log_lines_by_pos=lines1)
        assert json.loads(H.str_prop(ps.artifact, "start_position")) == [lines1[0].segment, 0]
        assert json.loads(H.str_prop(ps.artifact, "end_position")) == [end1.segment, end1.offset]
        assert H.committed_without_cutoffs(H.str_prop(ps.artifact, "committed_state"), [[end1.segment, end1.offset]], clock1) == committed1
        assert H.int_prop(ps.artifact, "watermark_ms") == max1 - LATENESS_S * 1000

    stats1, schemas1 = _live(store, "ExampleStatistics"), _live(store, "Schema")
    assert len(stats1) == 1 and len(schemas1) == 1, (stats1, schemas1)
    # latest_created(n=1) hands StatisticsGen the newest span of the run; SchemaGen reads those statistics.
    assert _input_artifact_ids(store, stats1[0].id) == [spans1[-1].artifact.id]
    assert _input_artifact_ids(store, schemas1[0].id) == [stats1[0].id]

    # ---- run 2 ------------------------------------------------------------------------------------------------
    finished_partial = log._partial[0]
    very_late = [("late", H.BASE_MS + 5 * H.MINUTE_MS + k * 61_000) for k in range(25)]  # spans 0-2
    r2 = log.append(H.BASE_MS + 40 * H.MINUTE_MS, minutes=30, per_minute=300, late_fraction=0.05,
                    late_range_ms=(1_000, 120_000), malformed=4, extra_events=very_late)
    late_ids = {e for e in r2.valid_ids if e.startswith("late-")}
    assert len(late_ids) == 25 and all(log.valid[e] // SPAN_MS <= S0 + 2 for e in late_ids)
    assert finished_partial in r2.valid_ids and log.valid[finished_partial] // SPAN_MS == S0 + 3
    # A producer's retry: the exact line of an event run 1 already published. The driver hands run 2 the
    # event ids of the spans in the dedup horizon, so it is counted and not published again.
    retried = next(ln for ln in lines1 if H.event_id_of(ln.line) in valid1)
    with EventLogWriter(config.source.log_dir) as writer:
        writer.write_lines([retried.line])
    lines2, end2 = H.scan_log(config.source.log_dir)
    clock2 = H.clock_ms()
    run_ingest(config, with_statistics=True)
    clock2 = (clock2, H.clock_ms())

    spans_all = H.published_spans(config.metadata_path, PIPELINE)
    assert [p.artifact.id for p in spans_all[:3]] == [p.artifact.id for p in spans1], "run 1's artifacts stand"
    spans2 = spans_all[3:]
    assert [p.span for p in spans2] == [S0 + 3, S0 + 4, S0 + 5], "run 2 emits spans 3-5, after run 1's last"
    assert len({p.span for p in spans_all}) == len(spans_all), "a span was emitted twice"
    max2 = max(log.valid.values())
    pending_from2 = _first_position(lines2, log.valid, lambda t: t // SPAN_MS > S0 + 5)
    committed2 = {"end": [end2.segment, end2.offset], "resume": pending_from2, "last_span": S0 + 5,
                  "max_event_time_ms": max2}
    committed2["segment_sizes"] = _passed_segment_sizes(config.source.log_dir)
    for i, ps in enumerate(spans2):
        expected = {e for e, t in log.valid.items() if t // SPAN_MS == ps.span}
        if i == 0:
            expected |= late_ids  # late events go to the first span the run emits, into train
        _check_span(ps, expected_ids=expected, late_ids=late_ids, first_of_run=(i == 0),
                    dead_letters_expected=set(r2.malformed), log_lines_by_pos=lines2)
        start2 = json.loads(H.str_prop(ps.artifact, "start_position"))
        # Run 2 re-reads from where run 1's pending events begin: at or before run 1's end.
        assert start2 == pending_from1 and tuple(start2) <= (end1.segment, end1.offset)
        assert json.loads(H.str_prop(ps.artifact, "end_position")) == [end2.segment, end2.offset]
        # Run 1's read ended before run 2's first pending event: only run 2's cutoff is kept.
        assert H.committed_without_cutoffs(H.str_prop(ps.artifact, "committed_state"), [[end2.segment, end2.offset]], clock2) == committed2
    assert H.int_prop(spans2[0].artifact, "late_count") == 25
    assert [H.int_prop(ps.artifact, "duplicate_count") for ps in spans_all] == [0, 0, 0, 1, 0, 0]

    # Across both runs: every valid event of a closed span in exactly one span; span 6 is still pending.
    seen = [e for p in spans_all for e in p.all_ids]
    assert len(seen) == len(set(seen))
    assert set(seen) == {e for e, t in log.valid.items() if t // SPAN_MS <= S0 + 5}
    dead_rows = [r for p in spans_all for r in p.dead_letters]
    assert sorted(H.dead_letter_bytes(r) for r in dead_rows) == sorted(log.malformed)

    # Stock StatisticsGen and SchemaGen ran again, on run 2's newest span, and read our files.
    stats, schemas = _live(store, "ExampleStatistics"), _live(store, "Schema")
    assert len(stats) == 2 and len(schemas) == 2, (stats, schemas)
    assert _input_artifact_ids(store, stats[1].id) == [spans2[-1].artifact.id]
    assert _input_artifact_ids(store, schemas[1].id) == [stats[1].id]
    for stat, ps in ((stats[0], spans1[-1]), (stats[1], spans2[-1])):
        for split in ("train", "eval"):
            stats_list = statistics_pb2.DatasetFeatureStatisticsList()
            with open(os.path.join(stat.uri, f"Split-{split}", "FeatureStats.pb"), "rb") as f:
                stats_list.ParseFromString(f.read())
            assert stats_list.datasets[0].num_examples == H.int_prop(ps.artifact, f"{split}_count"), (split, ps.span)
    schema = schema_pb2.Schema()
    from google.protobuf import text_format
    with open(os.path.join(schemas[1].uri, "schema.pbtxt")) as f:
        text_format.Parse(f.read(), schema)
    features = {f.name: f.type for f in schema.feature}
    assert features["event_id"] == schema_pb2.BYTES and features["event_time"] == schema_pb2.INT
    assert features["price"] == schema_pb2.FLOAT and features["clicked"] == schema_pb2.INT

    # Two StreamingExampleGen executions, both COMPLETE; every LIVE Examples artifact is a published span.
    examples_all = H.examples_artifacts(store, PIPELINE)
    assert all("committed_state" in a.custom_properties for a in examples_all
               if a.state == metadata_store_pb2.Artifact.LIVE)
    producers = {x.id: x for p in spans_all for x in H.executions_of(store, p.artifact.id,
                                                                      metadata_store_pb2.Event.OUTPUT)}
    assert len(producers) == 2
    assert all(x.last_known_state == metadata_store_pb2.Execution.COMPLETE for x in producers.values())
