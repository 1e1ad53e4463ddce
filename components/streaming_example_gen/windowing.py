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

Event time is bounded, so one producer's clock cannot move the watermark:

* an event more than ``max_future_ms`` ahead of the ingest machine's clock
  is dead-lettered as *from the future*. Whether a line was from the future
  is decided once, by the published run that first read it: each committed
  state keeps the cutoff (clock + ``max_future_ms``) of the runs whose read
  may still be re-read (``cutoffs``), so a re-read pending line is judged
  against the cutoff it was first judged by, and a line dead-lettered then is
  skipped now, however the clock moved. Cutoffs never decrease. A line read
  before any cutoff was recorded (older code, or the bound switched off) is
  judged now, so a log that already holds such an event recovers by itself,
  and a committed watermark beyond the cutoff is not trusted;
* an event that would be *late* and is older than the committed watermark
  by more than ``max_lateness_ms`` is dead-lettered as *too late*.

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
DEAD_LETTER = "dead_letter"
SKIP = "skip"
LATE = "late"
ON_TIME = "on_time"
PENDING = "pending"


@dataclasses.dataclass(frozen=True)
class Window:
    span_ms: int
    allowed_lateness_ms: int
    eval_fraction: float
    # None switches the bound off (see the module docstring).
    max_future_ms: Optional[int] = None
    max_lateness_ms: Optional[int] = None

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
    # (end, future cutoff) of each published run whose read reaches past `resume`, oldest first: the
    # first entry whose end covers a line is the run that first read it. A cutoff of None: read with no
    # future bound (also what a state written before cutoffs existed means for everything before `end`).
    cutoffs: Tuple[Tuple[Frontier, Optional[int]], ...] = ()
    # (segment, size) of passed event-log segments (ReadPlan.segment_sizes); empty for Kafka.
    segment_sizes: Tuple[Tuple[str, int], ...] = ()

    @property
    def is_initial(self) -> bool:
        return self.end is None

    @property
    def future_cutoff_ms(self) -> Optional[int]:
        """The newest cutoff a published run used; a later run never uses a smaller one."""
        known = [c for _, c in self.cutoffs if c is not None]
        return max(known) if known else None

    def first_read_cutoff(self, position: RecordPosition) -> Tuple[bool, Optional[int]]:
        """(whether a published run read the line at `position`, the future cutoff it was judged by)."""
        if self.end is None or not self.end.covers(position):
            return False, None
        for end, cutoff in self.cutoffs:
            if end.covers(position):
                return True, cutoff
        return True, None

    def to_json(self) -> str:
        d = {
            "end": None if self.end is None else self.end.to_json_value(),
            "resume": None if self.resume is None else self.resume.to_json_value(),
            "last_span": self.last_span,
            "max_event_time_ms": self.max_event_time_ms,
        }
        if self.cutoffs:
            d["cutoffs"] = [[end.to_json_value(), cutoff] for end, cutoff in self.cutoffs]
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
                   cutoffs=tuple((pos(end), cutoff) for end, cutoff in d.get("cutoffs", ())),
                   # States committed before segment sizes were recorded have none.
                   segment_sizes=segment_sizes_from_json_value(d.get("segment_sizes")))


def segment_sizes_from_json_value(value: Any) -> Tuple[Tuple[str, int], ...]:
    return tuple((str(name), int(size)) for name, size in value or ())


# Why a line is dead-lettered for its event time: `ingest` counts these reasons apart.
FROM_THE_FUTURE = "from the future"
TOO_LATE = "too late"


@dataclasses.dataclass(frozen=True)
class TimeBounds:
    """The event-time bounds of one run: built once from the state, the window and the run's clock."""

    state: CommittedState
    window: Window
    # The newest event time this run accepts (None: no future bound).
    cutoff_ms: Optional[int]

    @classmethod
    def for_run(cls, window: Window, state: CommittedState, now_ms: int) -> "TimeBounds":
        cutoff = None
        if window.max_future_ms is not None:
            cutoff = now_ms + window.max_future_ms
            if state.future_cutoff_ms is not None:
                cutoff = max(cutoff, state.future_cutoff_ms)
        return cls(state, window, cutoff)

    @property
    def lowest_cutoff_ms(self) -> Optional[int]:
        """No event at or before this time is from the future by any run's cutoff: the fast path."""
        if self.cutoff_ms is None and not self.state.cutoffs:
            return None
        known = [c for _, c in self.state.cutoffs if c is not None] + (
            [self.cutoff_ms] if self.cutoff_ms is not None else [])
        return min(known) if known else None

    def future(self, position: RecordPosition, event_time_ms: int) -> Optional[str]:
        """None for an event within bounds; else DEAD_LETTER (this run dead-letters it) or SKIP (one did)."""
        low = self.lowest_cutoff_ms
        if low is None or event_time_ms <= low:
            return None
        read, cutoff = self.state.first_read_cutoff(position)
        if read and cutoff is not None:
            # Judged by the run that first read it: dead-lettered then, or valid then and now.
            return SKIP if event_time_ms > cutoff else None
        if self.cutoff_ms is not None and event_time_ms > self.cutoff_ms:
            return DEAD_LETTER
        return None

    @property
    def too_late_before_ms(self) -> Optional[int]:
        """A late event older than this is dead-lettered (None: no bound, or no watermark yet)."""
        if self.window.max_lateness_ms is None or self.trusted_max_event_time_ms is None:
            return None
        return self.trusted_max_event_time_ms - self.window.allowed_lateness_ms - self.window.max_lateness_ms

    @property
    def trusted_max_event_time_ms(self) -> Optional[int]:
        """The committed newest event time, unless it lies beyond the cutoff (committed before the bound)."""
        t = self.state.max_event_time_ms
        if t is not None and self.cutoff_ms is not None and t > self.cutoff_ms:
            return None
        return t

    def next_cutoffs(self, read_end: Frontier, resume: Frontier) -> Tuple[Tuple[Frontier, Optional[int]], ...]:
        """The cutoffs a run that read up to `read_end` commits, dropping runs nothing after `resume` was read by."""
        history = list(self.state.cutoffs)
        if self.state.end is not None and not history:
            # Everything before the old end was read with no bound (a state older than cutoffs).
            history.append((self.state.end, None))
        # Lines read with no bound that this run re-read were judged by this run's cutoff: from now on
        # that is the cutoff they were first judged by, so a line dead-lettered now is not again later.
        history = [(end, self.cutoff_ms if cutoff is None else cutoff) for end, cutoff in history]
        history.append((read_end, self.cutoff_ms))
        return tuple((end, cutoff) for end, cutoff in history if _reaches_past(end, resume))


def _reaches_past(end: Frontier, resume: Frontier) -> bool:
    """Whether a read that ended at `end` covered any record at or after `resume`."""
    if isinstance(end, Position):
        return end > resume
    resume_offsets = resume.as_dict()
    return any(o > resume_offsets.get(p, 0) for p, o in end.offsets)


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
           candidate_spans: Iterable[int], max_spans: Optional[int] = None,
           bounds: Optional[TimeBounds] = None) -> RunDecision:
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
    # `run_max_event_time_ms` is over events within `bounds`; a committed maximum beyond them is not trusted.
    committed_max = state.max_event_time_ms if bounds is None else bounds.trusted_max_event_time_ms
    times = [t for t in (committed_max, run_max_event_time_ms) if t is not None]
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
               first_pending: Optional[Frontier], bounds: Optional[TimeBounds] = None,
               segment_sizes: Sequence[Tuple[str, int]] = ()) -> CommittedState:
    """The state a run commits when it publishes its spans.

    `first_pending` is a frontier at the earliest record left pending (per
    partition, for Kafka), or None when nothing is. `bounds` are the run's
    time bounds, whose cutoff the state keeps while its lines may be re-read.
    `segment_sizes` are the event-log plan's sizes of passed segments (none for Kafka).
    """
    if not decision.emits:
        return state
    resume = read_end.with_pending(first_pending)
    return CommittedState(
        end=read_end,
        resume=resume,
        last_span=max(decision.emitted_spans),
        max_event_time_ms=decision.max_event_time_ms,
        cutoffs=bounds.next_cutoffs(read_end, resume) if bounds is not None else (),
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
    # Events kept out of the span because their event id was already emitted (within the horizon).
    duplicates: int = 0

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
                         self.eval + other.eval, min(mins) if mins else None, max(maxs) if maxs else None,
                         self.duplicates + other.duplicates)

    def to_dict(self) -> Dict[str, Optional[int]]:
        return dataclasses.asdict(self)
