"""Event-time windowing and the exactly-once bookkeeping of ingestion.

Plain functions and dataclasses, no TFX and no Beam, so the rules that make
ingestion exactly-once are tested directly.

The committed state of a stream is what the last *published* run recorded on
its ``Examples`` artifacts in ML Metadata:

* ``end``: everything before this position was read by a published run;
* ``resume``: the earliest position holding an event that was read but not
  yet emitted because its span had not closed (``end`` when there is none);
* ``last_span``: the newest span emitted;
* ``max_event_time_ms``: the newest event time seen, which drives the watermark;
* ``segment_sizes`` (event log only): the sizes of the newest segments that the
  run read to their end; the next plan stops if one of them has grown
  (:func:`components.event_log.check_passed_segments`).

A run re-reads from ``resume`` and decides each event's fate from the state
and its own position alone, which is why a crashed run can simply be redone:

* a position before ``end`` whose span is at or before ``last_span`` was
  emitted by an earlier run, and is skipped;
* otherwise a span at or before ``last_span`` has already been emitted, so the
  event is *late*: it goes into the first span this run emits;
* otherwise, if its span is closed (its end is at or before the watermark,
  the newest event time minus the allowed lateness), it is emitted in it;
* otherwise it stays *pending* and the next run reads it again.

Invalid lines are dead-lettered by the first published run that reads them,
that is, only at positions at or after ``end``.

A position is whatever the source uses: a (segment, byte offset) of the
event log, or per-partition offsets of a Kafka topic. ``end`` and ``resume``
are frontiers (:class:`components.event_log.Position`,
:class:`components.kafka_log.KafkaOffsets`) that answer two questions, all
these rules need: does a frontier cover a record's position, and where to
resume given the first pending record(s).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, FrozenSet, Iterable, Optional, Sequence, Tuple, Union

from components.event_log import Position
from components.kafka_log import KafkaOffsets, PartitionOffset

# What a committed state records (`end`, `resume`), and where one record sits.
Frontier = Union[Position, KafkaOffsets]
RecordPosition = Union[Position, PartitionOffset]


def frontier_from_json_value(value: Any) -> Optional[Frontier]:
    """Decodes a frontier: a [segment, offset] pair of the event log, or {"topic", "offsets"} of Kafka."""
    if value is None:
        return None
    if isinstance(value, dict):
        return KafkaOffsets.from_json_value(value)
    return Position(str(value[0]), int(value[1]))

TRAIN = "train"
EVAL = "eval"
SPLITS = (TRAIN, EVAL)

# The fate of one event in one run.
SKIP = "skip"
LATE = "late"
ON_TIME = "on_time"
PENDING = "pending"


@dataclasses.dataclass(frozen=True)
class Window:
    span_ms: int
    allowed_lateness_ms: int
    eval_fraction: float

    def span_of(self, event_time_ms: int) -> int:
        return event_time_ms // self.span_ms

    def span_bounds(self, span: int) -> tuple:
        return span * self.span_ms, (span + 1) * self.span_ms

    def closed_through(self, max_event_time_ms: Optional[int]) -> Optional[int]:
        """The newest span whose window lies wholly behind the watermark."""
        if max_event_time_ms is None:
            return None
        watermark = max_event_time_ms - self.allowed_lateness_ms
        return watermark // self.span_ms - 1

    def split_of(self, span: int, event_time_ms: int) -> str:
        """`eval` for the latest `eval_fraction` of the span's window in event time.

        Late events carry older event times than the span they land in, so
        they always train: evaluation data stays later than training data.
        """
        start = span * self.span_ms
        cut = start + int(round(self.span_ms * (1.0 - self.eval_fraction)))
        return EVAL if event_time_ms >= cut else TRAIN


@dataclasses.dataclass(frozen=True)
class CommittedState:
    end: Optional[Frontier] = None
    resume: Optional[Frontier] = None
    last_span: Optional[int] = None
    max_event_time_ms: Optional[int] = None
    # (segment, size) of passed event-log segments (ReadPlan.segment_sizes); empty for Kafka.
    segment_sizes: Tuple[Tuple[str, int], ...] = ()

    @property
    def is_initial(self) -> bool:
        return self.end is None

    def to_json(self) -> str:
        d = {
            "end": None if self.end is None else self.end.to_json_value(),
            "resume": None if self.resume is None else self.resume.to_json_value(),
            "last_span": self.last_span,
            "max_event_time_ms": self.max_event_time_ms,
        }
        if self.segment_sizes:  # absent when empty: a Kafka state reads as before
            d["segment_sizes"] = [[name, size] for name, size in self.segment_sizes]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: Optional[str]) -> "CommittedState":
        if not text:
            return cls()
        d = json.loads(text)
        pos = frontier_from_json_value
        return cls(end=pos(d.get("end")), resume=pos(d.get("resume")),
                   last_span=d.get("last_span"), max_event_time_ms=d.get("max_event_time_ms"),
                   # States committed before segment sizes were recorded have none.
                   segment_sizes=segment_sizes_from_json_value(d.get("segment_sizes")))


def segment_sizes_from_json_value(value: Any) -> Tuple[Tuple[str, int], ...]:
    return tuple((str(name), int(size)) for name, size in value or ())


def fate_depends_on_position(state: CommittedState, span: int) -> bool:
    """True when `classify` needs the event's position: its span was emitted (skipped if read, else late)."""
    return state.last_span is not None and span <= state.last_span


def classify(state: CommittedState, position: Optional[RecordPosition], span: int,
             closed_through: Optional[int]) -> str:
    """The fate of a valid event read at `position` with event-time `span`.

    `position` may be None where `fate_depends_on_position` says it is not read.
    """
    if fate_depends_on_position(state, span):
        if position is None:
            raise ValueError(f"span {span} was emitted already: its event's position decides skip or late")
        if state.end is not None and state.end.covers(position):
            return SKIP
        return LATE
    if closed_through is not None and span <= closed_through:
        return ON_TIME
    return PENDING


def is_new_line(state: CommittedState, position: RecordPosition) -> bool:
    """True when no published run has read this line yet (it may be dead-lettered now)."""
    return state.end is None or not state.end.covers(position)


@dataclasses.dataclass(frozen=True)
class RunDecision:
    """What a run emits, decided from the whole read before anything is written."""

    closed_through: Optional[int]
    emitted_spans: FrozenSet[int]
    max_event_time_ms: Optional[int]

    @property
    def first_span(self) -> Optional[int]:
        """Where late events and dead letters of this run go."""
        return min(self.emitted_spans) if self.emitted_spans else None

    @property
    def emits(self) -> bool:
        return bool(self.emitted_spans)

    def to_json(self) -> str:
        return json.dumps({"closed_through": self.closed_through, "emitted_spans": sorted(self.emitted_spans),
                           "max_event_time_ms": self.max_event_time_ms})


def decide(window: Window, state: CommittedState, run_max_event_time_ms: Optional[int],
           candidate_spans: Iterable[int], max_spans: Optional[int] = None) -> RunDecision:
    """Which spans a run emits.

    `candidate_spans` are the spans newer than `state.last_span` that hold at
    least one event in this read. A run emits every such span that has
    closed; late events alone do not open a span, they wait for the next one.

    `max_spans` caps a run at its oldest closed spans (Vertex AI Pipelines
    takes one artifact per output). The cap moves `closed_through` back to
    the newest emitted span, so the events of later closed spans are pending:
    the committed `resume` points at them and the next run emits them.
    """
    if max_spans is not None and max_spans < 1:
        raise ValueError(f"max_spans must be >= 1 or None, got {max_spans}")
    times = [t for t in (state.max_event_time_ms, run_max_event_time_ms) if t is not None]
    max_time = max(times) if times else None
    closed = window.closed_through(max_time)
    emitted = sorted(s for s in candidate_spans
                     if closed is not None and s <= closed
                     and (state.last_span is None or s > state.last_span))
    if max_spans is not None and len(emitted) > max_spans:
        emitted = emitted[:max_spans]
        closed = emitted[-1]
    return RunDecision(closed_through=closed, emitted_spans=frozenset(emitted), max_event_time_ms=max_time)


def next_state(state: CommittedState, decision: RunDecision, read_end: Frontier,
               first_pending: Optional[Frontier],
               segment_sizes: Sequence[Tuple[str, int]] = ()) -> CommittedState:
    """The state a run commits when it publishes its spans.

    `first_pending` is a frontier at the earliest record left pending (per
    partition, for Kafka), or None when nothing is. `segment_sizes` are the
    event-log plan's sizes of passed segments (none for Kafka).
    """
    if not decision.emits:
        return state
    return CommittedState(
        end=read_end,
        resume=read_end.with_pending(first_pending),
        last_span=max(decision.emitted_spans),
        max_event_time_ms=decision.max_event_time_ms,
        segment_sizes=tuple((str(n), int(s)) for n, s in segment_sizes),
    )


@dataclasses.dataclass
class SpanStats:
    """Counts and event-time range of one emitted span, mergeable across chunks."""

    events: int = 0
    late: int = 0
    train: int = 0
    eval: int = 0
    min_event_time_ms: Optional[int] = None
    max_event_time_ms: Optional[int] = None

    def add(self, event_time_ms: int, split: str, late: bool) -> None:
        self.add_many((event_time_ms,), split, late)

    def add_many(self, event_times_ms: Sequence[int], split: str, late: bool) -> None:
        """Counts events of one split and lateness, and widens the event-time range to cover them."""
        if not event_times_ms:
            return
        n = len(event_times_ms)
        self.events += n
        self.late += n if late else 0
        if split == EVAL:
            self.eval += n
        else:
            self.train += n
        low, high = min(event_times_ms), max(event_times_ms)
        if self.min_event_time_ms is None or low < self.min_event_time_ms:
            self.min_event_time_ms = low
        if self.max_event_time_ms is None or high > self.max_event_time_ms:
            self.max_event_time_ms = high

    def merge(self, other: "SpanStats") -> "SpanStats":
        mins = [t for t in (self.min_event_time_ms, other.min_event_time_ms) if t is not None]
        maxs = [t for t in (self.max_event_time_ms, other.max_event_time_ms) if t is not None]
        return SpanStats(self.events + other.events, self.late + other.late, self.train + other.train,
                         self.eval + other.eval, min(mins) if mins else None, max(maxs) if maxs else None)

    def to_dict(self) -> Dict[str, Optional[int]]:
        return dataclasses.asdict(self)
