"""The join rules: impressions and the outcomes that follow them → labelled examples, exactly once.

Plain functions and dataclasses, no TFX and no Beam, so every rule is tested directly (tests/test_join.py).

Time. Each stream has its watermark, its newest event time minus the allowed lateness; the join's
watermark is the smaller of the two, so a stalled stream holds the join back. An impression at time t
has the attribution window [t, t + W] (both ends included). Its window is closed once the join watermark
is past t + W. Examples are emitted span by span, a span being the impression's span: span s is emitted
once every impression in it has a closed window, i.e. when the join watermark reaches (s + 1) * span + W.

Outcomes. An outcome names its impression by the configured key. Read with its impression pending:

* of a type that does not count, or earlier than its impression, or later than the window: a dead letter
  with that reason;
* a second outcome with the same outcome id for the same impression: a duplicate, counted once;
* otherwise it is attributed when its impression's span is emitted.

Read with its impression not pending: if the impression was emitted in a recent span (`emitted_ids`),
the outcome came after the window closed, a *late* dead letter; else it waits for its impression (an
outcome can arrive before its impression) until the impression watermark passes its event time plus the
orphan bound, and is then an *orphan* dead letter. Every dead letter of a run is counted in the first
span the run emits.

Exactly once. Nothing is kept in memory between runs: the committed `JoinState` (on the `Examples`
artifacts in ML Metadata) holds, per stream, where the last published run stopped reading (`*_end`) and
where to re-read from (`*_resume`: the first pending impression, the first undecided outcome), and the
positions of the outcomes read but not yet decided (`pending_outcomes`; every other outcome before `out_end`
was decided by a published run). A run re-reads from
the resume positions and decides everything from the state and positions alone, so a crashed run is
simply redone. Only pending impressions (those in spans not yet emitted, inside an open window) and
undecided outcomes are held: memory is bounded by the open windows, not by the stream.

Positions are each stream's own: an event log's (segment, byte offset), or a Kafka topic's per-partition
offsets (`kafka_log.PartitionOffset` for a record; `kafka_log.KafkaOffsets`, a per-partition vector, for
`*_end` and `*_resume`), the frontiers of windowing.py: a frontier says whether it covers a record, and
the resume vector is the end moved back, per partition, to the first record still needed there. The rules
never compare positions across partitions, except to order a run's reading: records a published run read
(before `*_end`) come first, so the earlier reading wins a duplicate, as in a log.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from components.event_log import Position
from components.event_schema import EventSchema, InvalidEvent
from components.kafka_log import KafkaOffsets, PartitionOffset
from components.streaming_example_gen import windowing
from components.streaming_example_gen.join_config import JoinConfig

# Dead-letter reasons; a reason starts with its kind, the counts are by kind.
MALFORMED_IMPRESSION = "malformed impression"
MALFORMED_OUTCOME = "malformed outcome"
LATE_IMPRESSION = "late impression"
DUPLICATE_IMPRESSION = "duplicate impression"
NOT_COUNTED = "outcome type not counted"
BEFORE_IMPRESSION = "outcome before its impression"
OUTSIDE_WINDOW = "outcome outside the attribution window"
DUPLICATE_OUTCOME = "duplicate outcome"
LATE_OUTCOME = "late outcome"
ORPHAN_OUTCOME = "orphan outcome"
FUTURE_IMPRESSION = "impression from the future"
FUTURE_OUTCOME = "outcome from the future"
KINDS = (MALFORMED_IMPRESSION, MALFORMED_OUTCOME, LATE_IMPRESSION, DUPLICATE_IMPRESSION, NOT_COUNTED,
         BEFORE_IMPRESSION, OUTSIDE_WINDOW, DUPLICATE_OUTCOME, LATE_OUTCOME, ORPHAN_OUTCOME, FUTURE_IMPRESSION,
         FUTURE_OUTCOME)

# (position, raw line) of one stream, in reading order; a Kafka record may add its timestamp (ms or None),
# the event time of a stream configured with kafka.event_time='record_timestamp'.
Record = Tuple[Any, ...]
Frontier = windowing.Frontier
RecordPosition = windowing.RecordPosition

_pos = windowing.frontier_from_json_value


def _val(p: Optional[Frontier]) -> Any:
    return None if p is None else p.to_json_value()


def _record_val(p: RecordPosition) -> list:
    """A record's position as JSON: [segment, offset] (a string first), or [partition, offset] (an int first)."""
    return [p.partition, p.offset] if isinstance(p, PartitionOffset) else p.to_json_value()


def _record_pos(value: Any) -> RecordPosition:
    if isinstance(value[0], int):
        return PartitionOffset(int(value[0]), int(value[1]))
    return Position(str(value[0]), int(value[1]))


def resume_frontier(read_end: Frontier, needed: Iterable[RecordPosition]) -> Frontier:
    """Where the next run re-reads from: `read_end`, moved back to the first record still `needed` (per
    partition of a Kafka topic: a partition with none resumes at its end)."""
    needed = list(needed)
    if isinstance(read_end, KafkaOffsets):
        first: Dict[int, int] = {}
        for p in needed:
            first[p.partition] = min(p.offset, first.get(p.partition, p.offset))
        return read_end.with_pending(KafkaOffsets.of(read_end.topic, first) if first else None)
    return min(needed, default=read_end)


@dataclasses.dataclass(frozen=True)
class JoinState:
    """What a published join run committed; the initial state has no positions."""

    imp_end: Optional[Frontier] = None
    imp_resume: Optional[Frontier] = None
    out_end: Optional[Frontier] = None
    out_resume: Optional[Frontier] = None
    imp_max_event_time_ms: Optional[int] = None
    out_max_event_time_ms: Optional[int] = None
    last_span: Optional[int] = None
    # Positions of the outcomes before out_end not yet decided (waiting for their impression's window or
    # their impression), sorted; the first is out_resume. As few as the open windows hold.
    pending_outcomes: Tuple[RecordPosition, ...] = ()
    # (segment, size) of each log's segments read to their end (event_log.ReadPlan.segment_sizes): the next
    # read stops with an EventLogError if one has grown (a producer appending without the writer's lock).
    imp_segment_sizes: Tuple[Tuple[str, int], ...] = ()
    out_segment_sizes: Tuple[Tuple[str, int], ...] = ()
    # The future bound (clock + window.max_future_ms) of each published run whose impressions read reaches
    # past imp_resume, oldest first (windowing.CommittedState.cutoffs): a re-read pending impression is
    # judged by the run that first read it, so one dead-lettered as from the future is not taken later.
    imp_cutoffs: Tuple[Tuple[Frontier, Optional[int]], ...] = ()
    # The newest future bound a published run used on the outcomes; a later run never uses a smaller one.
    # Outcomes need no history: one read before is re-read only while undecided, so it was accepted.
    out_cutoff_ms: Optional[int] = None

    def imp_bounds_state(self) -> windowing.CommittedState:
        """The impressions stream's read history in the single-stream form `windowing.TimeBounds` takes."""
        return windowing.CommittedState(end=self.imp_end, resume=self.imp_resume, cutoffs=self.imp_cutoffs)

    def to_json(self) -> str:
        return json.dumps({
            "kind": "join", "imp_end": _val(self.imp_end), "imp_resume": _val(self.imp_resume),
            "out_end": _val(self.out_end), "out_resume": _val(self.out_resume),
            "imp_max_event_time_ms": self.imp_max_event_time_ms, "out_max_event_time_ms": self.out_max_event_time_ms,
            "last_span": self.last_span, "pending_outcomes": [_record_val(p) for p in self.pending_outcomes],
            "imp_segment_sizes": [list(x) for x in self.imp_segment_sizes],
            "out_segment_sizes": [list(x) for x in self.out_segment_sizes],
            "imp_cutoffs": [[end.to_json_value(), cutoff] for end, cutoff in self.imp_cutoffs],
            "out_cutoff_ms": self.out_cutoff_ms}, sort_keys=True)

    @classmethod
    def from_json(cls, text: Optional[str]) -> "JoinState":
        if not text:
            return cls()
        d = json.loads(text)
        if d.get("kind") != "join":
            raise ValueError("the committed state was written by a single-stream StreamingExampleGen, not by a join: "
                             "a join needs its own pipeline node (a new node id or pipeline name)")
        return cls(_pos(d["imp_end"]), _pos(d["imp_resume"]), _pos(d["out_end"]), _pos(d["out_resume"]),
                   d["imp_max_event_time_ms"], d["out_max_event_time_ms"], d["last_span"],
                   tuple(_record_pos(p) for p in d["pending_outcomes"]),
                   tuple((str(n), int(z)) for n, z in d.get("imp_segment_sizes", ())),
                   tuple((str(n), int(z)) for n, z in d.get("out_segment_sizes", ())),
                   # States committed before the future bound have no cutoffs: their lines are judged now.
                   tuple((_pos(end), cutoff) for end, cutoff in d.get("imp_cutoffs", ())),
                   d.get("out_cutoff_ms"))


def watermark(max_event_time_ms: Optional[int], allowed_lateness_ms: int) -> Optional[int]:
    return None if max_event_time_ms is None else max_event_time_ms - allowed_lateness_ms


def join_watermark(imp_max_ms: Optional[int], out_max_ms: Optional[int], allowed_lateness_ms: int) -> Optional[int]:
    """The smaller of the two streams' watermarks; None until both streams have an event."""
    marks = [watermark(m, allowed_lateness_ms) for m in (imp_max_ms, out_max_ms)]
    return None if None in marks else min(marks)


def window_closed(impression_time_ms: int, window_ms: int, join_wm: Optional[int]) -> bool:
    """Whether the attribution window [t, t + W] lies wholly behind the join watermark."""
    return join_wm is not None and join_wm > impression_time_ms + window_ms


def span_closed(window: windowing.Window, span: int, window_ms: int, join_wm: Optional[int]) -> bool:
    """Whether every impression of `span` has a closed window (the last one is at (span + 1) * span_ms - 1)."""
    return window_closed((span + 1) * window.span_ms - 1, window_ms, join_wm)


@dataclasses.dataclass
class DeadLetter:
    stream: str  # "impressions" or "outcomes"
    position: RecordPosition
    line: bytes
    reason: str
    topic: Optional[str] = None  # the stream's Kafka topic; None for an event log

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if self.reason.startswith(k))

    def to_row(self) -> Dict[str, Any]:
        from components.streaming_example_gen.ingest import dead_letter_row

        p = self.position
        where = ({"stream": self.stream, "topic": self.topic, "partition": p.partition, "offset": p.offset}
                 if isinstance(p, PartitionOffset) else {"stream": self.stream, "segment": p.segment, "offset": p.offset})
        return dead_letter_row(where, self.line, self.reason)


@dataclasses.dataclass
class Example:
    """One labelled impression: the impression as served with the label set."""

    impression_id: Any
    span: int
    split: str
    event: Dict[str, Any]
    label: float
    outcomes: int  # counted outcomes attributed to it
    # The event times of those outcomes: click-to-serving freshness is measured from them.
    outcome_times_ms: List[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class JoinResult:
    state: JoinState  # what to commit with the emitted spans
    emitted_spans: Tuple[int, ...]
    examples: List[Example]
    dead_letters: List[DeadLetter]
    join_watermark_ms: Optional[int]
    pending_impressions: int
    pending_outcomes: int
    # Each stream's watermark (None before its first event): the smaller one holds the join back.
    impressions_watermark_ms: Optional[int] = None
    outcomes_watermark_ms: Optional[int] = None

    @property
    def held_back_by(self) -> Optional[str]:
        """The stream whose watermark is the join's ("impressions" or "outcomes"), None when they agree."""
        imp, out = self.impressions_watermark_ms, self.outcomes_watermark_ms
        if imp == out:
            return None
        if imp is None or (out is not None and imp < out):
            return "impressions"
        return "outcomes"

    @property
    def emits(self) -> bool:
        return bool(self.emitted_spans)

    def dead_letter_counts(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for d in self.dead_letters:
            counts[d.kind] = counts.get(d.kind, 0) + 1
        return counts


@dataclasses.dataclass
class _Pending:
    position: RecordPosition
    time_ms: int
    span: int
    event: Dict[str, Any]
    outcome_ids: set = dataclasses.field(default_factory=set)
    label: float = 0.0
    counted: int = 0
    outcome_times_ms: List[int] = dataclasses.field(default_factory=list)


def _parse(schema: EventSchema, line: bytes, record_time_ms: Optional[int] = None,
           time_from_record: bool = False) -> Dict[str, Any]:
    """The typed event; with `time_from_record` (a topic read with kafka.event_time='record_timestamp') its
    event time is the record's timestamp, as StreamingExampleGen's RecordParser takes it."""
    try:
        if time_from_record:
            if record_time_ms is None:
                from components.streaming_example_gen.ingest import NO_RECORD_TIMESTAMP

                raise InvalidEvent(NO_RECORD_TIMESTAMP)
            return schema.parse(line, record_time_ms)
        return schema.parse(line)
    except InvalidEvent:
        raise
    except Exception as e:  # noqa: BLE001 - no line may stop the join: whatever it raises, it is a dead letter
        raise InvalidEvent(f"could not be parsed: {e.__class__.__name__}: {str(e)[:120]}") from None


def join_step(config: JoinConfig, window: windowing.Window, state: JoinState,
              impressions: Iterable[Record], outcomes: Iterable[Record],
              imp_read_end: Frontier, out_read_end: Frontier,
              emitted_ids: Optional[np.ndarray] = None, now_ms: Optional[int] = None) -> JoinResult:
    """One join run over the records read since the resume positions (up to `*_read_end`).

    `impressions`, `outcomes`: (position, line[, record timestamp ms]) from `state.imp_resume` /
    `state.out_resume` on, in reading order: a log's order; for a topic, the records a published run read
    (before `*_end`) first, then the new ones, each part by partition and offset (join_run.read_stream).
    `emitted_ids`: the sorted `ingest.id_hash` of the impressions of recently emitted spans, to tell a late
    outcome from one whose impression has not come (yet). `now_ms`: the run's clock; with
    `window.max_future_ms` set, an event later than now_ms + max_future_ms is a dead letter *from the future*
    and moves no watermark (one producer with a wrong clock would otherwise close every open window, and
    label its impressions 0 before their clicks came). Returns what to publish; if it emits no span,
    nothing is published and the next run redoes this one with more data.
    """
    from components.streaming_example_gen.ingest import id_hash

    imp_schema, out_schema = config.impressions.schema, config.outcomes.schema
    W = config.attribution_window_ms
    last_span = state.last_span
    dead: List[DeadLetter] = []
    pending: Dict[Any, _Pending] = {}
    imp_max = state.imp_max_event_time_ms
    bounded = window.max_future_ms is not None
    if bounded and now_ms is None:
        raise ValueError("join_step needs now_ms (the run's clock) when window.max_future_ms is set")
    imp_bounds = windowing.TimeBounds.for_run(window, state.imp_bounds_state(), now_ms) if bounded else None
    out_cutoff = None
    if bounded:
        out_cutoff = now_ms + window.max_future_ms
        if state.out_cutoff_ms is not None:
            out_cutoff = max(out_cutoff, state.out_cutoff_ms)

    def new_line(end: Optional[Frontier], p: RecordPosition) -> bool:
        return end is None or not end.covers(p)

    def stream_of(stream) -> Tuple[Optional[str], bool]:
        """(the topic dead letters name, whether event time is the record's timestamp) of a stream."""
        if not stream.is_kafka:
            return None, False
        return stream.kafka.topic, stream.kafka.event_time == "record_timestamp"

    imp_topic, imp_from_record = stream_of(config.impressions)
    out_topic, out_from_record = stream_of(config.outcomes)

    def imp_dead(p, line, reason):
        dead.append(DeadLetter("impressions", p, line, reason, imp_topic))

    def out_dead(p, line, reason):
        dead.append(DeadLetter("outcomes", p, line, reason, out_topic))

    for p, line, *ts in impressions:
        new = new_line(state.imp_end, p)
        try:
            event = _parse(imp_schema, line, ts[0] if ts else None, imp_from_record)
        except InvalidEvent as e:
            if new:
                imp_dead(p, line, f"{MALFORMED_IMPRESSION}: {e}")
            continue
        t = event[imp_schema.event_time_field]
        verdict = imp_bounds.future(p, t) if imp_bounds is not None else None
        if verdict == windowing.SKIP:
            continue  # dead-lettered as from the future by the run that first read it
        if verdict == windowing.DEAD_LETTER:
            # New, or read before with no bound and still pending (so never decided): decided now, once.
            imp_dead(p, line, f"{FUTURE_IMPRESSION}: event time {t} is past this "
                     f"run's bound {imp_bounds.cutoff_ms} (clock + window.max_future_seconds)")
            continue
        span = window.span_of(t)
        imp_max = t if imp_max is None else max(imp_max, t)
        if config.max_position is not None and event[config.position_field] >= config.max_position:
            continue  # scored but not shown: no example (it still moves the impressions' watermark)
        if last_span is not None and span <= last_span:
            # Read before: emitted with its span. New: its span was emitted already.
            if new:
                imp_dead(p, line, f"{LATE_IMPRESSION}: event time {t} is in span {span}, emitted already")
            continue
        key = event[imp_schema.id_field]
        if key in pending:
            if new:
                imp_dead(p, line, f"{DUPLICATE_IMPRESSION}: id {key!r} was logged at {pending[key].position}")
            continue
        pending[key] = _Pending(p, t, span, event)

    # Outcomes read, not yet decided: (position, line, event).
    out_max = state.out_max_event_time_ms
    undecided: List[Tuple[RecordPosition, bytes, Dict[str, Any]]] = []
    pending_before = set(state.pending_outcomes)
    for p, line, *ts in outcomes:
        new = new_line(state.out_end, p)
        if not new and p not in pending_before:
            continue  # decided by a published run (or a malformed line, dead-lettered when first read)
        try:
            event = _parse(out_schema, line, ts[0] if ts else None, out_from_record)
        except InvalidEvent as e:
            if new:
                out_dead(p, line, f"{MALFORMED_OUTCOME}: {e}")
            continue
        t = event[out_schema.event_time_field]
        if new and out_cutoff is not None and t > out_cutoff:
            out_dead(p, line, f"{FUTURE_OUTCOME}: event time {t} is past this run's "
                     f"bound {out_cutoff} (clock + window.max_future_seconds)")
            continue
        out_max = t if out_max is None else max(out_max, t)
        undecided.append((p, line, event))

    join_wm = join_watermark(imp_max, out_max, window.allowed_lateness_ms)
    emitted = tuple(sorted({i.span for i in pending.values() if span_closed(window, i.span, W, join_wm)}))
    emitted_set = set(emitted)
    imp_wm = watermark(imp_max, window.allowed_lateness_ms)
    counted_types = set(config.counted_types)
    emitted_ids = emitted_ids if emitted_ids is not None else np.zeros(0, dtype="<u8")

    def was_emitted(key: Any) -> bool:
        if not len(emitted_ids):
            return False
        h = np.uint64(id_hash(key))
        i = int(np.searchsorted(emitted_ids, h))
        return i < len(emitted_ids) and emitted_ids[i] == h

    still: List[RecordPosition] = []
    for p, line, event in undecided:
        key, t = event[config.key], event[out_schema.event_time_field]
        kind = event[config.outcome_type_field]
        imp = pending.get(key)
        reason = None
        if kind not in counted_types:
            reason = f"{NOT_COUNTED}: type {kind!r} is not in join.counted_types {sorted(counted_types)}"
        elif imp is not None:
            if t < imp.time_ms:
                reason = f"{BEFORE_IMPRESSION}: event time {t} < the impression's {imp.time_ms}"
            elif t > imp.time_ms + W:
                reason = (f"{OUTSIDE_WINDOW}: event time {t} is {t - imp.time_ms} ms after the impression, "
                          f"the window is {W} ms")
            else:
                outcome_id = event[out_schema.id_field]
                if outcome_id in imp.outcome_ids:
                    reason = f"{DUPLICATE_OUTCOME}: outcome id {outcome_id!r} was counted for impression {key!r}"
                else:
                    imp.outcome_ids.add(outcome_id)
                    imp.counted += 1
                    imp.outcome_times_ms.append(t)
                    imp.label = 1.0 if config.label_rule == "any" else imp.label + float(event[config.value_field] or 0)
                    if imp.span not in emitted_set:
                        still.append(p)
                    continue
        elif was_emitted(key):
            reason = f"{LATE_OUTCOME}: impression {key!r} was emitted before the outcome arrived"
        elif imp_wm is not None and imp_wm > t + config.orphan_bound_ms:
            reason = (f"{ORPHAN_OUTCOME}: no impression {key!r} by the impression watermark {imp_wm}, "
                      f"{config.orphan_bound_ms} ms past the outcome's event time {t}")
        if reason is None:
            still.append(p)
        else:
            out_dead(p, line, reason)

    examples = []
    for key, imp in pending.items():
        if imp.span in emitted_set:
            event = dict(imp.event)
            label = imp.label if config.label_rule == "value" else int(imp.label)
            event[imp_schema.label_field] = label
            examples.append(Example(key, imp.span, window.split_of(imp.span, imp.time_ms), event, label, imp.counted,
                                    imp.outcome_times_ms))
    left = [i for i in pending.values() if i.span not in emitted_set]
    imp_resume = resume_frontier(imp_read_end, (i.position for i in left))
    out_resume = resume_frontier(out_read_end, still)
    new_state = JoinState(imp_end=imp_read_end, imp_resume=imp_resume, out_end=out_read_end, out_resume=out_resume,
                          imp_max_event_time_ms=imp_max, out_max_event_time_ms=out_max,
                          last_span=max(emitted) if emitted else last_span,
                          pending_outcomes=tuple(sorted(still)), imp_segment_sizes=state.imp_segment_sizes,
                          out_segment_sizes=state.out_segment_sizes,
                          imp_cutoffs=(imp_bounds.next_cutoffs(imp_read_end, imp_resume)
                                       if imp_bounds is not None and imp_read_end is not None and imp_resume is not None
                                       else ()),
                          out_cutoff_ms=out_cutoff)
    return JoinResult(new_state, emitted, examples, dead, join_wm, len(left), len(still),
                      imp_wm, watermark(out_max, window.allowed_lateness_ms))
