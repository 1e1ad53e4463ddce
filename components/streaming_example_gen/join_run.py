"""One join run: read both streams from the committed resume positions, join, write the emitted spans.

`join.join_step` decides; this module reads and writes. Nothing is committed here: the executor publishes
the returned state on the `Examples` artifacts in ML Metadata, or nothing at all, so a run killed at any
point is redone from the previous committed state. Files have deterministic names and are written
through a temp file and a rename, so a redone run rewrites them whole.

The join reads its records in the executor's process (not in a Beam graph): it holds only the impressions
of open windows and the undecided outcomes, and reads each stream one unit at a time. Each stream is read
through StreamingExampleGen's source interface (sources.py): an event log one chunk at a time, a Kafka
topic one planned offset range at a time, with the same planning, the same errors and the same secrets
handling as a single-stream Kafka source.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from components import event_log, kafka_log
from components.mlmd_vocabulary import ARM_COUNTS_PROPERTY, COMMITTED_STATE_PROPERTY
from components.online_evaluator import arm_counts
from components.streaming_example_gen import ingest, join, sources, windowing
from components.streaming_example_gen.example_codec import ExampleEncoder
from components.streaming_example_gen.join_config import JoinConfig, JoinStreamConfig

UNIT_NAME = "join"


STREAMS = ("impressions", "outcomes")


def stream_source(stream: JoinStreamConfig, name: str, chunk_bytes: int):
    """The source (sources.py) that reads one join stream: `name` is "impressions" or "outcomes"."""
    if stream.is_kafka:
        return sources.KafkaSource(stream.kafka, where=f"join.{name}.kafka")
    return sources.EventLogSource(stream.log_dir, chunk_bytes, stream.schema.max_line_bytes)


def named_error(name: str, source, e: event_log.EventLogError) -> event_log.EventLogError:
    """The same error (KafkaSourceError is an EventLogError), saying which stream of the join it concerns; the
    Kafka client's messages name a single source's settings (source.kafka.topic), a join's are join.<name>.kafka."""
    text = str(e).replace("source.kafka.", f"join.{name}.kafka.") if source.kind == "kafka" else str(e)
    return type(e)(f"join.{name} ({source.describe()}): {text}")


def read_stream(source, name: str, end: Optional[windowing.Frontier], resume: Optional[windowing.Frontier],
                passed_sizes=()) -> tuple:
    """(an iterator of (position, line, record timestamp ms or None) from `resume` to the stream's end as planned
    now, the plan: its `start` and `end` frontiers).

    `end`, `resume`: the stream's committed frontiers; `passed_sizes`: the committed sizes of event-log segments
    read to their end (one that grew stops the read). A topic's records are read in two passes, those a
    published run read (before `end`) first, then the new ones, so the earlier reading of a record wins a
    duplicate, as in a log (join.join_step decides a duplicate by reading order).
    """
    try:
        plan = source.plan(windowing.CommittedState(end=end, resume=resume,
                                                    segment_sizes=tuple(tuple(x) for x in passed_sizes)))
    except event_log.EventLogError as e:
        raise named_error(name, source, e) from e
    units = list(plan.units)
    if isinstance(plan, kafka_log.KafkaReadPlan) and isinstance(end, kafka_log.KafkaOffsets):
        old, new = [], []
        for rng in units:
            cut = min(max(end.get(rng.partition, rng.start), rng.start), rng.stop)
            # The committed end is one past a record a published run read, so a read of [start, cut) ends on one.
            if rng.start < cut:
                old.append(kafka_log.KafkaRange(rng.topic, rng.partition, rng.start, cut))
            if cut < rng.stop:
                new.append(kafka_log.KafkaRange(rng.topic, rng.partition, cut, rng.stop))
        units = old + new

    def records() -> Iterator[join.Record]:
        try:
            for unit in units:
                lane = source.lane(unit)
                for offset, payload, record_time_ms in source.read(unit):
                    yield source.position(lane, offset), payload, record_time_ms
        except event_log.EventLogError as e:
            raise named_error(name, source, e) from e
    return records(), plan


@dataclasses.dataclass
class JoinRun:
    previous: join.JoinState
    result: join.JoinResult
    imp_start: windowing.Frontier
    out_start: windowing.Frontier
    wall_seconds: float

    @property
    def committed(self) -> join.JoinState:
        return self.result.state

    @property
    def start_position(self) -> str:
        """Where this run started reading, both streams (JSON): with the span, what names a published span."""
        return join.JoinState(imp_resume=self.imp_start, out_resume=self.out_start).to_json()


def run_join(config: JoinConfig, window: windowing.Window, state: join.JoinState, output_root: str,
             dedup_span_uris: Sequence[str] = (), chunk_bytes: int = 8 << 20, write: bool = True,
             now_ms: Optional[int] = None) -> JoinRun:
    """Reads, joins and writes every emitted span under `output_root/span-<n>`; returns what to publish.

    `dedup_span_uris`: recently emitted spans, whose impression ids (their `event_ids/`) tell a late
    outcome from an orphan. `write=False` writes nothing: the controller's question whether a run would
    emit a span (pipelines/controller.py), answered by the same rules the run applies. `now_ms`: the clock
    the future bound is taken from (default: this machine's).
    """
    started = time.monotonic()
    imps, imp_plan = read_stream(stream_source(config.impressions, "impressions", chunk_bytes), "impressions",
                                 state.imp_end, state.imp_resume, state.imp_segment_sizes)
    outs, out_plan = read_stream(stream_source(config.outcomes, "outcomes", chunk_bytes), "outcomes",
                                 state.out_end, state.out_resume, state.out_segment_sizes)
    result = join.join_step(config, window, state, imps, outs, imp_plan.end, out_plan.end,
                            emitted_ids=ingest.read_event_ids(dedup_span_uris),
                            now_ms=int(time.time() * 1000) if now_ms is None else now_ms)
    # Event logs only: a topic has no segments (its plan checks that records read before are still there).
    result.state = dataclasses.replace(result.state, imp_segment_sizes=getattr(imp_plan, "segment_sizes", ()),
                                       out_segment_sizes=getattr(out_plan, "segment_sizes", ()))
    imp_start, out_start = imp_plan.start, out_plan.start
    if result.emits and write:
        write_spans(result, config.examples_schema, output_root)
    return JoinRun(state, result, imp_start, out_start, time.monotonic() - started)


def write_spans(result: join.JoinResult, imp_schema, output_root: str) -> None:
    """Each emitted span's splits and impression ids; the run's dead letters in its first span."""
    encoder = ExampleEncoder(imp_schema)
    tmp_root = os.path.join(output_root, "_tmp")
    by_span: Dict[int, Dict[str, List[join.Example]]] = {s: {split: [] for split in windowing.SPLITS}
                                                         for s in result.emitted_spans}
    for example in result.examples:
        by_span[example.span][example.split].append(example)
    for span, splits in by_span.items():
        for split, examples in splits.items():
            # An empty file where a split got nothing: stock components glob Split-<name>/* and fail on no match.
            ingest._write_atomically(ingest.example_file(output_root, span, split, UNIT_NAME),
                                     ingest._write_tfrecords(encoder.encode_many([e.event for e in examples])),
                                     tmp_root)
        ids = np.asarray([ingest.id_hash(e.impression_id) for rows in splits.values() for e in rows], dtype="<u8")
        ingest._write_atomically(ingest.event_ids_file(output_root, span, UNIT_NAME),
                                 ingest._write_bytes(ids.tobytes()), tmp_root)
    first = min(result.emitted_spans)
    if result.dead_letters:
        ingest._write_atomically(ingest.dead_letter_file(output_root, first, UNIT_NAME),
                                 ingest._write_dead_letters([d.to_row() for d in result.dead_letters]), tmp_root)
    ingest.remove_tmp(output_root)


def span_properties(run: JoinRun, window: windowing.Window, span: int, config: JoinConfig,
                    reward_field: Optional[str] = None) -> Dict[str, object]:
    """The custom properties of one emitted span's `Examples` artifact (the dead letters count in the first).

    `reward_field` (online evaluation on): also each arm's shown impressions and successes per challenger, and
    their guardrail measures (`arm_counts`, components/online_evaluator/arm_counts.py), what the controller
    feeds the comparison."""
    result = run.result
    examples = [e for e in result.examples if e.span == span]
    first = span == min(result.emitted_spans)
    counts = result.dead_letter_counts() if first else {}
    times = [e.event[config.impressions.schema.event_time_field] for e in examples]
    outcome_times = [t for e in examples for t in e.outcome_times_ms]
    start_ms, end_ms = window.span_bounds(span)
    online = {} if reward_field is None else {
        ARM_COUNTS_PROPERTY: arm_counts.span_json((e.event for e in examples), reward_field)}
    return {
        **online,
        COMMITTED_STATE_PROPERTY: run.committed.to_json(),
        "start_position": run.start_position,
        "event_count": len(examples),
        "train_count": sum(e.split == windowing.TRAIN for e in examples),
        "eval_count": sum(e.split == windowing.EVAL for e in examples),
        "positive_count": sum(e.label > 0 for e in examples),
        "attributed_count": sum(e.outcomes for e in examples),
        "dead_letter_count": len(result.dead_letters) if first else 0,
        "late_outcome_count": counts.get(join.LATE_OUTCOME, 0),
        "orphan_outcome_count": counts.get(join.ORPHAN_OUTCOME, 0),
        "outside_window_count": counts.get(join.OUTSIDE_WINDOW, 0),
        "future_event_count": counts.get(join.FUTURE_IMPRESSION, 0) + counts.get(join.FUTURE_OUTCOME, 0),
        "duplicate_outcome_count": counts.get(join.DUPLICATE_OUTCOME, 0),
        "dead_letter_kinds": json.dumps(counts, sort_keys=True),
        # Click-to-serving freshness (pipelines/lineage_queries.click_freshness) runs from these times to the
        # push of the first model trained on the span: 21 quantiles (0 %, 5 %, ... 100 %) keep it bounded.
        "outcome_time_quantiles_ms": json.dumps(outcome_time_quantiles(outcome_times)),
        "min_event_time_ms": min(times) if times else -1,
        "max_event_time_ms": max(times) if times else -1,
        "span_start_ms": start_ms,
        "span_end_ms": end_ms,
        "watermark_ms": result.join_watermark_ms if result.join_watermark_ms is not None else -1,
        "impressions_watermark_ms": _ms(result.impressions_watermark_ms),
        "outcomes_watermark_ms": _ms(result.outcomes_watermark_ms),
        "pending_impressions": result.pending_impressions,
        "pending_outcomes": result.pending_outcomes,
        "ingest_wall_seconds": round(run.wall_seconds, 3),
    }


OUTCOME_QUANTILES = 20  # intervals: the quantiles 0 %, 5 %, ..., 100 %


def outcome_time_quantiles(times_ms: Sequence[int]) -> List[int]:
    """The event times of a span's attributed outcomes at 0 %, 5 %, ..., 100 % (nearest rank); [] for none."""
    if not len(times_ms):
        return []
    ordered = np.sort(np.asarray(times_ms, dtype=np.int64))
    ranks = np.round(np.linspace(0, len(ordered) - 1, OUTCOME_QUANTILES + 1)).astype(int)
    return [int(ordered[r]) for r in ranks]


def _ms(value: Optional[int]) -> int:
    return -1 if value is None else value
