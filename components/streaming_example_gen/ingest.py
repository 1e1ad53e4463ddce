"""The Beam graph of one ingest run: event log or Kafka topic → span-numbered TFRecords.

The source (``sources.py``) plans a read as units (chunks of log segments,
offset ranges of Kafka partitions) and reads each unit into records; all
that follows is the same code for every source. Two stages, so that nothing
is written before the run knows what it emits:

1. Each unit is read (``ParseChunk`` for the log, a splittable DoFn for
   Kafka), its records validated against the event schema by one
   ``RecordParser`` and valid events encoded as tf.Example bytes, a unit at a time (the split
   of an event depends only on its own event time, so it is known here).
   Events from the future and events far too late become dead letters there
   too (``windowing.TimeBounds``).
2. A global combine finds the newest event time, the candidate spans and the
   event ids read more than once, and ``windowing.decide`` turns them into
   the run's decision, a side input to
3. ``WriteChunk``, which writes each chunk's share of every emitted span and
   its dead letters as files with deterministic names (a retried bundle
   rewrites the same file), then reports counts.

Exactly once per event id: an event whose id was already emitted, in this
run (the first position wins) or in one of the spans the newest runs published
(the dedup horizon: their ids, which every span keeps as ``event_ids/`` in its
own payload), is
a duplicate: counted in the span it would have joined, listed in that span's
``duplicates/`` file, and kept out of the examples.

Nothing here is local-only: files go through ``tf.io.gfile`` and the results
come back as a JSON file, so the graph runs unchanged on Dataflow.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import uuid
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from components.beam_data_plane import make_runner_data_plane_lossless
from components.event_schema import EventSchema, InvalidEvent
from components.streaming_example_gen import windowing
from components.streaming_example_gen.example_codec import ExampleEncoder

DEAD_LETTER_DIR = "dead_letter"
EVENT_IDS_DIR = "event_ids"
DUPLICATES_DIR = "duplicates"
SUMMARY_FILE = "ingest_summary.json"


def span_dir(output_root: str, span: int, flat: bool = False) -> str:
    """Where one span's files go: `<root>/span-<n>`, or `<root>` itself when a run emits one span
    into the one artifact URI its orchestrator chose (`flat`, as on Vertex AI Pipelines)."""
    return output_root if flat else os.path.join(output_root, f"span-{span}")


def example_file(output_root: str, span: int, split: str, unit_name: str, flat: bool = False) -> str:
    # Split-<name> is the layout every stock TFX component reads.
    return os.path.join(span_dir(output_root, span, flat), f"Split-{split}", f"data-{unit_name}.tfrecord.gz")


def dead_letter_file(output_root: str, span: int, unit_name: str, flat: bool = False) -> str:
    return os.path.join(span_dir(output_root, span, flat), DEAD_LETTER_DIR, f"dead_letter-{unit_name}.jsonl")


def event_ids_file(output_root: str, span: int, unit_name: str, flat: bool = False) -> str:
    return os.path.join(span_dir(output_root, span, flat), EVENT_IDS_DIR, f"ids-{unit_name}.u64")


def duplicates_file(output_root: str, span: int, unit_name: str, flat: bool = False) -> str:
    return os.path.join(span_dir(output_root, span, flat), DUPLICATES_DIR, f"duplicates-{unit_name}.jsonl")


def id_hash(event_id: Any) -> int:
    """A stable 64-bit hash of an event id (int ids as their decimal text): what the dedup compares.

    Collisions are negligible at these sizes (about 1 in 10^8 for a million ids against a million).
    """
    return int.from_bytes(hashlib.blake2b(str(event_id).encode("utf-8"), digest_size=8).digest(), "little")


def read_event_ids(span_uris: Sequence[str]) -> np.ndarray:
    """The sorted, unique id hashes emitted in these spans (their `event_ids/` files)."""
    import tensorflow as tf

    parts = []
    for uri in span_uris:
        for path in tf.io.gfile.glob(os.path.join(uri, EVENT_IDS_DIR, "*.u64")):
            with tf.io.gfile.GFile(path, "rb") as f:
                parts.append(np.frombuffer(f.read(), dtype="<u8"))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype="<u8")


@dataclasses.dataclass(frozen=True)
class ParsedChunk:
    """One unit of a source (a log chunk, a Kafka offset range), parsed. Lists of tuples keep it cheap to encode."""

    chunk: Any  # event_log.Chunk or kafka_log.KafkaRange: what was actually read
    # (offset, event_time_ms, span, split, serialized tf.Example)
    valid: List[Tuple[int, int, int, str, bytes]]
    # (offset, raw payload, reason)
    invalid: List[Tuple[int, bytes, str]]
    # `id_hash` of each valid event's id, in the order of `valid` (uint64).
    id_hashes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype="<u8"))
    # Offsets of invalid records to dead-letter even where a published run read them already: from the
    # future by this run's clock, first read before any cutoff was recorded (windowing.TimeBounds).
    dead_letter_regardless: FrozenSet[int] = frozenset()


NO_RECORD_TIMESTAMP = "the record has no timestamp, and the source takes event time from record timestamps"


class RecordParser:
    """Validates raw records against the event schema and encodes the valid ones; the same for every source."""

    def __init__(self, schema: EventSchema, window: windowing.Window, event_time_from_record: bool = False,
                 bounds: Optional[windowing.TimeBounds] = None):
        self._schema = schema
        self._encoder = ExampleEncoder(schema)
        self._window = window
        self._from_record = event_time_from_record
        self._id_field = schema.id_field
        self._bounds = bounds

    def event(self, payload: bytes, record_time_ms: Optional[int]) -> Dict[str, Any]:
        """The typed event of one record, its event time from the payload or the record; raises InvalidEvent."""
        try:
            if not self._from_record:
                return self._schema.parse(payload)
            if record_time_ms is None:
                raise InvalidEvent(NO_RECORD_TIMESTAMP)
            return self._schema.parse(payload, record_time_ms)
        except InvalidEvent:
            raise
        except Exception as e:  # noqa: BLE001 - no record may stop ingestion: whatever it raises, it is a dead letter
            raise InvalidEvent(f"could not be parsed: {e.__class__.__name__}: {str(e)[:120]}") from None

    def parse(self, records: Iterable[Tuple[int, bytes, Optional[int]]], lane: Any = None,
              position: Optional[Callable[[Any, int], Any]] = None) -> Tuple[list, list, list, FrozenSet[int]]:
        """(offset, payload, record timestamp ms or None) records of one lane → (valid, invalid, id hashes of
        valid, offsets to dead-letter regardless) as in ParsedChunk. With time bounds, `position(lane, offset)`
        places a record in the source."""
        placed, events, invalid, hashes, regardless = [], [], [], [], set()
        event_of, time_field, id_field = self.event, self._schema.event_time_field, self._id_field
        span_of, split_of = self._window.span_of, self._window.split_of
        bounds = self._bounds
        low = bounds.lowest_cutoff_ms if bounds is not None else None
        too_late_before = bounds.too_late_before_ms if bounds is not None else None
        for offset, payload, record_time_ms in records:
            try:
                event = event_of(payload, record_time_ms)
            except InvalidEvent as e:
                # An over-long log line arrives as its first bytes (event_log.OverlongLine): all a dead letter keeps.
                invalid.append((offset, payload, str(e)))
                continue
            t = event[time_field]
            span = span_of(t)
            # Both checks are rare: the comparisons keep the common event off the slow path.
            if (low is not None and t > low) or (too_late_before is not None and t < too_late_before):
                verdict = time_verdict(bounds, position(lane, offset), t, span)
                if verdict is windowing.SKIP:
                    continue  # dead-lettered by the published run that first read it
                if verdict is not None:
                    reason, always = verdict
                    invalid.append((offset, payload, reason))
                    if always:
                        regardless.add(offset)
                    continue
            placed.append((offset, t, span, split_of(span, t)))
            events.append(event)
            hashes.append(id_hash(event[id_field]))
        # All of a unit's events at once: serializing is most of ingest, and is in C++ in bulk.
        valid = [(*where, example) for where, example in zip(placed, self._encoder.encode_many(events))]
        return valid, invalid, np.asarray(hashes, dtype="<u8"), frozenset(regardless)


def time_verdict(bounds: windowing.TimeBounds, position: Any, t: int, span: int):
    """None (within bounds), SKIP, or (dead-letter reason, whether to dead-letter it even if read before)."""
    future = bounds.future(position, t)
    if future == windowing.SKIP:
        return windowing.SKIP
    if future == windowing.DEAD_LETTER:
        return (f"{windowing.FROM_THE_FUTURE}: event time {t} is more than {bounds.window.max_future_ms} ms "
                f"ahead of ingestion's clock (cutoff {bounds.cutoff_ms})"), True
    too_late_before = bounds.too_late_before_ms
    state = bounds.state
    # Only an event that would be late (its span was emitted, its line is new) can be too late.
    if (too_late_before is not None and t < too_late_before and windowing.fate_depends_on_position(state, span)
            and windowing.is_new_line(state, position)):
        return (f"{windowing.TOO_LATE}: event time {t} is more than {bounds.window.max_lateness_ms} ms "
                f"behind the watermark {too_late_before + bounds.window.max_lateness_ms}"), False
    return None


class ParseChunk(beam.DoFn):
    """Reads and parses one unit of a source whose units need no splitting (the event log's chunks)."""

    def __init__(self, source, schema_json: str, window: windowing.Window,
                 bounds: Optional[windowing.TimeBounds] = None):
        self._source = source
        self._schema_json = schema_json
        self._window = window
        self._bounds = bounds

    def setup(self):
        self._parser = RecordParser(EventSchema.from_json(self._schema_json), self._window,
                                    self._source.event_time_from_record, self._bounds)

    def process(self, chunk) -> Iterator[ParsedChunk]:
        source = self._source
        yield ParsedChunk(chunk, *self._parser.parse(source.read(chunk), source.lane(chunk), source.position))


# (newest event time, candidate spans, {unit key: the sorted unique id hashes of the events this run may
#  write from that unit}, id hashes read more than once within one unit). Arrays, not dicts of ints: all
#  of a run's ids pass through the global combine, and numpy keeps that a copy of bytes.
Facts = Tuple[Optional[int], frozenset, Dict[Any, np.ndarray], np.ndarray]
_NO_IDS = np.zeros(0, dtype="<u8")


def _unit_order(source, unit) -> Any:
    """A key that orders a source's units as their records are ordered (log chunks, Kafka ranges)."""
    key = source.unit_key(unit)
    return tuple(key) if isinstance(key, list) else key


def _chunk_facts(parsed: ParsedChunk, state: windowing.CommittedState, source) -> Facts:
    last_span = state.last_span
    times = [v[1] for v in parsed.valid]
    spans = frozenset(v[2] for v in parsed.valid if last_span is None or v[2] > last_span)
    hashes = np.asarray(parsed.id_hashes, dtype="<u8")
    if last_span is not None and len(hashes):
        # Events an earlier run emitted (an emitted span, a line read before) are skipped, not candidates.
        lane, position = source.lane(parsed.chunk), source.position
        keep = [not (windowing.fate_depends_on_position(state, row[2])
                     and not windowing.is_new_line(state, position(lane, row[0]))) for row in parsed.valid]
        hashes = hashes[np.asarray(keep, dtype=bool)]
    unique, counts = np.unique(hashes, return_counts=True)
    return ((max(times) if times else None), spans, {_unit_order(source, parsed.chunk): unique},
            unique[counts > 1])


def _merge_facts(facts: Sequence[Facts]) -> Facts:
    times = [f[0] for f in facts if f[0] is not None]
    spans = frozenset().union(*[f[1] for f in facts]) if facts else frozenset()
    ids: Dict[Any, np.ndarray] = {}
    for f in facts:
        ids.update(f[2])
    repeated = np.concatenate([f[3] for f in facts]) if facts else _NO_IDS
    return (max(times) if times else None), spans, ids, repeated


def _run_duplicates(facts: Facts) -> Dict[int, Any]:
    """{id hash: the unit whose first copy keeps it} for every id this run read more than once.

    The first position wins: the earliest unit holding the id, and the first offset within it
    (which `WriteChunk` finds as it reads its unit in order).
    """
    units = facts[2]
    if not units:
        return {}
    every, counts = np.unique(np.concatenate(list(units.values())), return_counts=True)
    left = np.union1d(every[counts > 1], facts[3])
    winners: Dict[int, Any] = {}
    for key in sorted(units):
        if not len(left):
            break
        here = np.isin(left, units[key], assume_unique=True)
        winners.update((h, key) for h in left[here].tolist())
        left = left[~here]
    return winners


def _write_atomically(path: str, write_fn, tmp_root: str) -> None:
    """Writes through a temp file outside the split folders, then renames.

    A reader globbing `Split-*/*` never sees a half-written file, even when a
    Beam worker dies mid-write and its bundle is retried.
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path))
    tf.io.gfile.makedirs(tmp_root)
    tmp = os.path.join(tmp_root, f"{os.path.basename(path)}.{uuid.uuid4().hex}")
    write_fn(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)


# gzip's fastest level: compressing at the default level 6 cost 0.65 s per 100,000 examples, a
# quarter of the DoFns' time, for files 27% smaller (measured 2026-12-02); retention deletes
# them after a few cycles, so ingest CPU per event matters more than their size.
TFRECORD_GZIP_LEVEL = 1


def _write_tfrecords(records: Sequence[bytes]):
    def write(path: str) -> None:
        import tensorflow as tf

        options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=TFRECORD_GZIP_LEVEL)
        with tf.io.TFRecordWriter(path, options=options) as writer:
            for record in records:
                writer.write(record)
    return write


def _write_dead_letters(rows: Sequence[Dict[str, Any]]):
    def write(path: str) -> None:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
    return write


def dead_letter_row(where: Dict[str, Any], line: bytes, reason: str) -> Dict[str, Any]:
    """`where` locates the record in its source: segment and offset, or topic, partition and offset."""
    row: Dict[str, Any] = dict(where, reason=reason)
    try:
        row["line"] = line.decode("utf-8")
    except UnicodeDecodeError:
        # Nothing is lost: undecodable bytes are kept exactly.
        row["line_base64"] = base64.b64encode(line).decode("ascii")
    return row


class WriteChunk(beam.DoFn):
    """Writes one unit's share of every emitted span, its dead letters, its duplicates and its event ids."""

    def __init__(self, source, output_root: str, state_json: str, flat: bool = False,
                 emitted_ids: Optional[np.ndarray] = None):
        self._source = source
        self._output_root = output_root
        self._state_json = state_json
        self._flat = flat
        # Sorted id hashes of the spans in the dedup horizon.
        self._emitted_ids = emitted_ids if emitted_ids is not None else np.zeros(0, dtype="<u8")

    def setup(self):
        self._state = windowing.CommittedState.from_json(self._state_json)

    def process(self, parsed: ParsedChunk, decision: windowing.RunDecision,
                run_duplicates: Optional[Dict[int, Any]] = None) -> Iterator[Dict[str, Any]]:
        chunk, state, source = parsed.chunk, self._state, self._source
        lane, position, name = source.lane(chunk), source.position, source.unit_name(chunk)
        result: Dict[str, Any] = {"chunk": source.unit_key(chunk), "spans": {}, "dead_letters": 0,
                                  "first_pending": None, "dead_letter_reasons": {}}
        if not decision.emits:
            # Nothing is published by this run: write nothing, the next run re-reads.
            yield result
            return
        first_span, closed_through = decision.first_span, decision.closed_through
        # {id hash: the unit whose first copy keeps it}, for ids this run read more than once.
        run_duplicates = run_duplicates or {}
        unit = _unit_order(source, chunk)
        kept_here = set()
        hashes = np.asarray(parsed.id_hashes, dtype="<u8")
        emitted_before = (np.isin(hashes, self._emitted_ids).tolist() if len(self._emitted_ids) and len(hashes)
                          else None)
        hash_list = hashes.tolist()
        records: Dict[Tuple[int, str], List[bytes]] = {}
        ids: Dict[int, List[int]] = {}
        duplicates: Dict[int, List[Dict[str, Any]]] = {}
        # Event times by (span, split, late), counted once the loop is done: this loop runs per event.
        times: Dict[Tuple[int, str, bool], List[int]] = {}
        # The fate of a span not yet emitted does not depend on where its events sit in the source.
        fate_of_span: Dict[int, str] = {}
        first_pending: Optional[int] = None
        for i, (offset, t, span, split, example) in enumerate(parsed.valid):
            fate = fate_of_span.get(span)
            if fate is None:
                if windowing.fate_depends_on_position(state, span):
                    fate = windowing.classify(state, position(lane, offset), span, closed_through)
                else:
                    fate = fate_of_span[span] = windowing.classify(state, None, span, closed_through)
            if fate == windowing.SKIP:
                continue
            h = hash_list[i]
            # A repeated id: the first copy in the first unit holding it is the one kept (pending or not).
            repeat = False
            if h in run_duplicates:
                repeat = run_duplicates[h] != unit or h in kept_here
                kept_here.add(h)
            if fate == windowing.PENDING:
                if first_pending is None or offset < first_pending:
                    first_pending = offset
                continue
            late = fate == windowing.LATE
            dest_span, dest_split = (first_span, windowing.TRAIN) if late else (span, split)
            if repeat or (emitted_before is not None and emitted_before[i]):
                duplicates.setdefault(dest_span, []).append(dict(source.dead_letter_where(chunk, offset), id_hash=h))
                continue
            records.setdefault((dest_span, dest_split), []).append(example)
            ids.setdefault(dest_span, []).append(h)
            times.setdefault((dest_span, dest_split, late), []).append(t)
        stats: Dict[int, windowing.SpanStats] = {}
        for (dest_span, dest_split, late), span_times in sorted(times.items()):
            stats.setdefault(dest_span, windowing.SpanStats()).add_many(span_times, dest_split, late)
        tmp_root = os.path.join(self._output_root, "_tmp")
        root, flat = self._output_root, self._flat
        for (span, split), examples in sorted(records.items()):
            _write_atomically(example_file(root, span, split, name, flat), _write_tfrecords(examples), tmp_root)
        for span, span_ids in sorted(ids.items()):
            _write_atomically(event_ids_file(root, span, name, flat), _write_bytes(
                np.asarray(span_ids, dtype="<u8").tobytes()), tmp_root)
        for span, rows in sorted(duplicates.items()):
            stats.setdefault(span, windowing.SpanStats()).duplicates += len(rows)
            _write_atomically(duplicates_file(root, span, name, flat), _write_dead_letters(rows), tmp_root)
        dead = [dead_letter_row(source.dead_letter_where(chunk, offset), line, reason)
                for offset, line, reason in parsed.invalid
                if windowing.is_new_line(state, position(lane, offset)) or offset in parsed.dead_letter_regardless]
        if dead:
            _write_atomically(dead_letter_file(root, first_span, name, flat), _write_dead_letters(dead), tmp_root)
        result["spans"] = {str(s): st.to_dict() for s, st in stats.items()}
        result["dead_letters"] = len(dead)
        result["dead_letter_reasons"] = dead_letter_kinds(row["reason"] for row in dead)
        if first_pending is not None:
            result["first_pending"] = [lane, first_pending]
        yield result


def dead_letter_kinds(reasons: Iterable[str]) -> Dict[str, int]:
    """Counts of the dead letters that were refused for their event time, by kind (the rest are malformed)."""
    counts: Dict[str, int] = {}
    for reason in reasons:
        for kind in (windowing.FROM_THE_FUTURE, windowing.TOO_LATE):
            if reason.startswith(kind):
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def _write_bytes(data: bytes):
    def write(path: str) -> None:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
    return write


@dataclasses.dataclass
class IngestResult:
    decision: windowing.RunDecision
    spans: Dict[int, windowing.SpanStats]
    dead_letters: int
    # A frontier at the earliest pending record(s), or None.
    first_pending: Optional[windowing.Frontier]
    chunks: int
    # The source's key of every unit that reported a result (chunk indices, Kafka ranges).
    units: List[Any] = dataclasses.field(default_factory=list)
    # Of `dead_letters`, how many were refused for their event time: {windowing.FROM_THE_FUTURE: n, ...}.
    dead_letter_kinds: Dict[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "decision": json.loads(self.decision.to_json()),
            "spans": {str(s): st.to_dict() for s, st in self.spans.items()},
            "dead_letters": self.dead_letters,
            "first_pending": None if self.first_pending is None else self.first_pending.to_json_value(),
            "chunks": self.chunks,
            "units": self.units,
            "dead_letter_kinds": self.dead_letter_kinds,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "IngestResult":
        d = json.loads(text)
        dec = d["decision"]
        return cls(
            decision=windowing.RunDecision(dec["closed_through"], frozenset(dec["emitted_spans"]),
                                           dec["max_event_time_ms"]),
            spans={int(s): windowing.SpanStats(**st) for s, st in d["spans"].items()},
            dead_letters=d["dead_letters"],
            first_pending=windowing.frontier_from_json_value(d["first_pending"]),
            chunks=d["chunks"],
            units=d.get("units", []),
            dead_letter_kinds=d.get("dead_letter_kinds", {}),
        )


def _summarize(chunk_results: List[Dict[str, Any]], decision: windowing.RunDecision, source) -> IngestResult:
    spans: Dict[int, windowing.SpanStats] = {}
    pending: List[Tuple[Any, int]] = []
    kinds: Dict[str, int] = {}
    for r in chunk_results:
        for s, st in r["spans"].items():
            spans[int(s)] = spans.get(int(s), windowing.SpanStats()).merge(windowing.SpanStats(**st))
        if r["first_pending"] is not None:
            pending.append(tuple(r["first_pending"]))
        for kind, n in r["dead_letter_reasons"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    return IngestResult(decision=decision, spans=spans, dead_letters=sum(r["dead_letters"] for r in chunk_results),
                        first_pending=source.pending_frontier(pending), chunks=len(chunk_results),
                        units=[r["chunk"] for r in chunk_results], dead_letter_kinds=kinds)


def _write_summary(result: IngestResult, path: str) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write(result.to_json())


def build_ingest(pipeline: beam.Pipeline, *, source, units: Sequence[Any], schema: EventSchema,
                 window: windowing.Window, state: windowing.CommittedState, output_root: str,
                 summary_path: str, max_spans: Optional[int] = None, flat: bool = False,
                 bounds: Optional[windowing.TimeBounds] = None, emitted_ids: Optional[np.ndarray] = None) -> None:
    """Adds the ingest graph to `pipeline`; running it writes the spans and `summary_path`.

    `max_spans` caps the spans one run emits (see `windowing.decide`); `flat`
    writes the one emitted span at `output_root` itself (needs `max_spans=1`).
    `bounds` are the run's event-time bounds; `emitted_ids` the sorted id
    hashes of the spans in the dedup horizon.
    """
    if flat and max_spans != 1:
        raise ValueError("flat output holds exactly one span: it needs max_spans=1")
    parsed = source.expand_read(pipeline, list(units), schema.to_json(), window, bounds)
    facts = (parsed
             | "Facts" >> beam.Map(_chunk_facts, state, source)
             | "MergeFacts" >> beam.CombineGlobally(_merge_facts))
    decision = facts | "Decide" >> beam.Map(lambda f: windowing.decide(window, state, f[0], f[1], max_spans, bounds))
    run_duplicates = facts | "RunDuplicates" >> beam.Map(_run_duplicates)
    results = (parsed
               | "Write" >> beam.ParDo(WriteChunk(source, output_root, state.to_json(), flat, emitted_ids),
                                       beam.pvalue.AsSingleton(decision), beam.pvalue.AsSingleton(run_duplicates))
               | "Collect" >> beam.combiners.ToList())
    _ = (results
         | "Summarize" >> beam.Map(_summarize, beam.pvalue.AsSingleton(decision), source)
         | "WriteSummary" >> beam.Map(_write_summary, summary_path))


def read_summary(path: str) -> IngestResult:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        return IngestResult.from_json(f.read())


def ensure_every_split_has_a_file(span_uri: str, tmp_root: Optional[str] = None) -> None:
    """Writes an empty TFRecord file into a split that got no examples.

    A span whose events all fell in its first part has no eval examples;
    stock components glob `Split-<name>/*` and fail on no match, while an
    empty file reads as zero examples (and the gate calls that too little
    evidence). `tmp_root` defaults to `_tmp` beside the span folder.
    """
    import tensorflow as tf

    tmp_root = tmp_root or os.path.join(os.path.dirname(span_uri), "_tmp")
    for split in windowing.SPLITS:
        folder = os.path.join(span_uri, f"Split-{split}")
        if not tf.io.gfile.glob(os.path.join(folder, "*")):
            _write_atomically(os.path.join(folder, "data-empty.tfrecord.gz"), _write_tfrecords([]), tmp_root)


def remove_tmp(output_root: str) -> None:
    """Deletes `<output_root>/_tmp`, where files are written before their rename into place."""
    import tensorflow as tf

    tmp_root = os.path.join(output_root, "_tmp")
    if tf.io.gfile.exists(tmp_root):
        tf.io.gfile.rmtree(tmp_root)


class RunnerLostElements(RuntimeError):
    """The Beam run returned fewer chunk results than the event-log read plan has chunks.

    Every chunk yields exactly one result, so a shortfall means the runner dropped elements; committing the
    plan's end would skip the lost events forever. Seen with DirectRunner multi_processing and several
    workers (2 of 14 runs at 1M events on 2026-11-23, 3 of 10 on 2026-12-05): Beam 2.59's runner-side data
    plane cleared bytes written while its periodic flush ran, which `make_runner_data_plane_lossless`
    (components/beam_data_plane.py) fixes; this check stays as the guard against any runner that loses
    elements. A Kafka read whose ranges do not tile its plan raises a plain RuntimeError instead and
    is not rerun: its split points may differ between runs, so a rerun could leave a piece written twice.
    """


# A run that lost elements is rerun whole this many more times before the executor fails (and commits
# nothing). Output names are deterministic and written by rename, so a rerun overwrites, never duplicates.
LOST_ELEMENTS_RERUNS = 2


@dataclasses.dataclass
class IngestRun:
    """Everything one run decided and wrote, ready to become artifacts."""

    plan: Any  # event_log.ReadPlan or kafka_log.KafkaReadPlan: start, end, units, describe()
    previous: windowing.CommittedState
    committed: windowing.CommittedState
    result: Optional[IngestResult]
    wall_seconds: float
    # Whole reruns of the Beam graph after the runner lost elements (RunnerLostElements).
    reruns: int = 0


def run_ingest(make_pipeline, *, source, schema: EventSchema, window: windowing.Window,
               state: windowing.CommittedState, output_root: str, work_dir: str,
               max_spans: Optional[int] = None, flat: bool = False,
               dedup_span_uris: Sequence[str] = (), now_ms: Optional[int] = None) -> IngestRun:
    """Plans the read, runs the Beam graph, and returns what to publish.

    `source` is one of `sources.py`'s sources. `make_pipeline` returns a fresh
    `beam.Pipeline` (the executor's, with the component's Beam arguments).
    Nothing is committed here: the caller publishes the returned state with
    the artifacts, or nothing at all. `max_spans` and `flat` are `build_ingest`'s.
    `dedup_span_uris` are the emitted spans whose event ids a new event must
    not repeat; `now_ms` is the clock the future bound is taken from (now).
    """
    import time

    started = time.monotonic()
    plan = source.plan(state)
    if not plan.units:
        return IngestRun(plan, state, state, None, time.monotonic() - started)
    bounds = windowing.TimeBounds.for_run(window, state, time.time_ns() // 1_000_000 if now_ms is None else now_ms)
    emitted_ids = read_event_ids(dedup_span_uris)
    summary_path = os.path.join(work_dir, SUMMARY_FILE)

    # Beam 2.59's runner-side data plane drops elements when its periodic flush races a write (the
    # multi_processing chunk loss): make it lossless before any graph runs (components/beam_data_plane.py).
    make_runner_data_plane_lossless()

    def run_graph() -> IngestResult:
        with make_pipeline() as pipeline:
            build_ingest(pipeline, source=source, units=plan.units, schema=schema, window=window,
                         state=state, output_root=output_root, summary_path=summary_path,
                         max_spans=max_spans, flat=flat, bounds=bounds, emitted_ids=emitted_ids)
        summary = read_summary(summary_path)
        # Committing `plan.end` after a unit was lost would skip its events forever.
        source.check_complete(plan, summary.units)
        return summary

    import tenacity
    from absl import logging

    def before_rerun(retry_state: tenacity.RetryCallState) -> None:
        logging.warning("ingest: %s; rerunning the whole read (rerun %d of %d)", retry_state.outcome.exception(),
                        retry_state.attempt_number, LOST_ELEMENTS_RERUNS)

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception_type(RunnerLostElements),
                                 stop=tenacity.stop_after_attempt(1 + LOST_ELEMENTS_RERUNS),
                                 before_sleep=before_rerun, reraise=True)
    result = retrying(run_graph)
    reruns = retrying.statistics.get("attempt_number", 1) - 1
    # An event-log plan carries the sizes of the segments it passed, for the next plan's check.
    committed = windowing.next_state(state, result.decision, plan.end, result.first_pending, bounds,
                                     segment_sizes=getattr(plan, "segment_sizes", ()))
    return IngestRun(plan, state, committed, result, time.monotonic() - started, reruns)
