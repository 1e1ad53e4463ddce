"""The Beam graph of one ingest run: event log → span-numbered TFRecords.

Two stages, so that nothing is written before the run knows what it emits:

1. ``ParseChunk`` reads each chunk of the log, validates lines against the
   event schema and encodes valid events as tf.Example bytes (the split of an
   event depends only on its own event time, so it is known here).
2. A global combine finds the newest event time and the candidate spans, and
   ``windowing.decide`` turns them into the run's decision, a side input to
3. ``WriteChunk``, which writes each chunk's share of every emitted span and
   its dead letters as files with deterministic names (a retried bundle
   rewrites the same file), then reports counts.

Nothing here is local-only: files go through ``tf.io.gfile`` and the results
come back as a JSON file, so the graph runs unchanged on Dataflow.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam

from components.event_log import Chunk, Position, ReadPlan, read_chunk
from components.event_schema import EventSchema, InvalidEvent
from components.streaming_example_gen import windowing
from components.streaming_example_gen.example_codec import ExampleEncoder

DEAD_LETTER_DIR = "dead_letter"
SUMMARY_FILE = "ingest_summary.json"


def span_dir(output_root: str, span: int, flat: bool = False) -> str:
    """Where one span's files go: `<root>/span-<n>`, or `<root>` itself when a run emits one span
    into the one artifact URI its orchestrator chose (`flat`, as on Vertex AI Pipelines)."""
    return output_root if flat else os.path.join(output_root, f"span-{span}")


def example_file(output_root: str, span: int, split: str, chunk_index: int, flat: bool = False) -> str:
    # Split-<name> is the layout every stock TFX component reads.
    return os.path.join(span_dir(output_root, span, flat), f"Split-{split}", f"data-{chunk_index:06d}.tfrecord.gz")


def dead_letter_file(output_root: str, span: int, chunk_index: int, flat: bool = False) -> str:
    return os.path.join(span_dir(output_root, span, flat), DEAD_LETTER_DIR, f"dead_letter-{chunk_index:06d}.jsonl")


@dataclasses.dataclass(frozen=True)
class ParsedChunk:
    """One chunk, parsed. Lists of tuples keep the element cheap to encode."""

    chunk: Chunk
    # (offset, event_time_ms, span, split, serialized tf.Example)
    valid: List[Tuple[int, int, int, str, bytes]]
    # (offset, raw line, reason)
    invalid: List[Tuple[int, bytes, str]]


class ParseChunk(beam.DoFn):
    def __init__(self, log_dir: str, schema_json: str, window: windowing.Window):
        self._log_dir = log_dir
        self._schema_json = schema_json
        self._window = window

    def setup(self):
        self._schema = EventSchema.from_json(self._schema_json)
        self._encoder = ExampleEncoder(self._schema)
        self._time_field = self._schema.event_time_field

    def process(self, chunk: Chunk) -> Iterator[ParsedChunk]:
        valid, invalid = [], []
        span_of, split_of = self._window.span_of, self._window.split_of
        for offset, line in read_chunk(self._log_dir, chunk):
            try:
                event = self._schema.parse(line)
            except InvalidEvent as e:
                invalid.append((offset, line, str(e)))
                continue
            t = event[self._time_field]
            span = span_of(t)
            valid.append((offset, t, span, split_of(span, t), self._encoder.encode(event)))
        yield ParsedChunk(chunk, valid, invalid)


def _chunk_facts(parsed: ParsedChunk, last_span: Optional[int]) -> Tuple[Optional[int], frozenset]:
    times = [v[1] for v in parsed.valid]
    spans = frozenset(v[2] for v in parsed.valid if last_span is None or v[2] > last_span)
    return (max(times) if times else None), spans


def _merge_facts(facts: Sequence[Tuple[Optional[int], frozenset]]) -> Tuple[Optional[int], frozenset]:
    times = [t for t, _ in facts if t is not None]
    spans = frozenset().union(*[s for _, s in facts]) if facts else frozenset()
    return (max(times) if times else None), spans


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


def _write_tfrecords(records: Sequence[bytes]):
    def write(path: str) -> None:
        import tensorflow as tf

        with tf.io.TFRecordWriter(path, options=tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
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


def dead_letter_row(segment: str, offset: int, line: bytes, reason: str) -> Dict[str, Any]:
    row: Dict[str, Any] = {"segment": segment, "offset": offset, "reason": reason}
    try:
        row["line"] = line.decode("utf-8")
    except UnicodeDecodeError:
        # Nothing is lost: undecodable bytes are kept exactly.
        row["line_base64"] = base64.b64encode(line).decode("ascii")
    return row


class WriteChunk(beam.DoFn):
    def __init__(self, output_root: str, state_json: str, flat: bool = False):
        self._output_root = output_root
        self._state_json = state_json
        self._flat = flat

    def setup(self):
        self._state = windowing.CommittedState.from_json(self._state_json)

    def process(self, parsed: ParsedChunk, decision: windowing.RunDecision) -> Iterator[Dict[str, Any]]:
        chunk, state = parsed.chunk, self._state
        result: Dict[str, Any] = {"chunk": chunk.index, "spans": {}, "dead_letters": 0, "first_pending": None}
        if not decision.emits:
            # Nothing is published by this run: write nothing, the next run re-reads.
            yield result
            return
        first_span = decision.first_span
        records: Dict[Tuple[int, str], List[bytes]] = {}
        stats: Dict[int, windowing.SpanStats] = {}
        first_pending: Optional[int] = None
        for offset, t, span, split, example in parsed.valid:
            fate = windowing.classify(state, Position(chunk.segment, offset), span, decision.closed_through)
            if fate == windowing.SKIP:
                continue
            if fate == windowing.PENDING:
                if first_pending is None or offset < first_pending:
                    first_pending = offset
                continue
            late = fate == windowing.LATE
            dest_span, dest_split = (first_span, windowing.TRAIN) if late else (span, split)
            records.setdefault((dest_span, dest_split), []).append(example)
            stats.setdefault(dest_span, windowing.SpanStats()).add(t, dest_split, late)
        tmp_root = os.path.join(self._output_root, "_tmp")
        for (span, split), examples in sorted(records.items()):
            _write_atomically(example_file(self._output_root, span, split, chunk.index, self._flat),
                              _write_tfrecords(examples), tmp_root)
        dead = [dead_letter_row(chunk.segment, offset, line, reason)
                for offset, line, reason in parsed.invalid
                if windowing.is_new_line(state, Position(chunk.segment, offset))]
        if dead:
            _write_atomically(dead_letter_file(self._output_root, first_span, chunk.index, self._flat),
                              _write_dead_letters(dead), tmp_root)
        result["spans"] = {str(s): st.to_dict() for s, st in stats.items()}
        result["dead_letters"] = len(dead)
        if first_pending is not None:
            result["first_pending"] = [chunk.segment, first_pending]
        yield result


@dataclasses.dataclass
class IngestResult:
    decision: windowing.RunDecision
    spans: Dict[int, windowing.SpanStats]
    dead_letters: int
    first_pending: Optional[Position]
    chunks: int

    def to_json(self) -> str:
        return json.dumps({
            "decision": json.loads(self.decision.to_json()),
            "spans": {str(s): st.to_dict() for s, st in self.spans.items()},
            "dead_letters": self.dead_letters,
            "first_pending": None if self.first_pending is None else [self.first_pending.segment,
                                                                       self.first_pending.offset],
            "chunks": self.chunks,
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
            first_pending=None if d["first_pending"] is None else Position(*d["first_pending"]),
            chunks=d["chunks"],
        )


def _summarize(chunk_results: List[Dict[str, Any]], decision: windowing.RunDecision) -> IngestResult:
    spans: Dict[int, windowing.SpanStats] = {}
    pending: List[Position] = []
    for r in chunk_results:
        for s, st in r["spans"].items():
            spans[int(s)] = spans.get(int(s), windowing.SpanStats()).merge(windowing.SpanStats(**st))
        if r["first_pending"] is not None:
            pending.append(Position(*r["first_pending"]))
    return IngestResult(decision=decision, spans=spans, dead_letters=sum(r["dead_letters"] for r in chunk_results),
                        first_pending=min(pending) if pending else None, chunks=len(chunk_results))


def _write_summary(result: IngestResult, path: str) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write(result.to_json())


def build_ingest(pipeline: beam.Pipeline, *, log_dir: str, chunks: Sequence[Chunk], schema: EventSchema,
                 window: windowing.Window, state: windowing.CommittedState, output_root: str,
                 summary_path: str, max_spans: Optional[int] = None, flat: bool = False) -> None:
    """Adds the ingest graph to `pipeline`; running it writes the spans and `summary_path`.

    `max_spans` caps the spans one run emits (see `windowing.decide`); `flat`
    writes the one emitted span at `output_root` itself (needs `max_spans=1`).
    """
    if flat and max_spans != 1:
        raise ValueError("flat output holds exactly one span: it needs max_spans=1")
    last_span = state.last_span
    parsed = (pipeline
              | "Chunks" >> beam.Create(list(chunks))
              # Spread chunks over workers before the expensive parse.
              | "Reshuffle" >> beam.Reshuffle()
              | "Parse" >> beam.ParDo(ParseChunk(log_dir, schema.to_json(), window)))
    decision = (parsed
                | "Facts" >> beam.Map(_chunk_facts, last_span)
                | "MergeFacts" >> beam.CombineGlobally(_merge_facts)
                | "Decide" >> beam.Map(lambda f: windowing.decide(window, state, f[0], f[1], max_spans)))
    results = (parsed
               | "Write" >> beam.ParDo(WriteChunk(output_root, state.to_json(), flat),
                                     beam.pvalue.AsSingleton(decision))
               | "Collect" >> beam.combiners.ToList())
    _ = (results
         | "Summarize" >> beam.Map(_summarize, beam.pvalue.AsSingleton(decision))
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


@dataclasses.dataclass
class IngestRun:
    """Everything one run decided and wrote, ready to become artifacts."""

    plan: ReadPlan
    previous: windowing.CommittedState
    committed: windowing.CommittedState
    result: Optional[IngestResult]
    wall_seconds: float


def run_ingest(make_pipeline, *, log_dir: str, schema: EventSchema, window: windowing.Window,
               state: windowing.CommittedState, output_root: str, work_dir: str,
               chunk_bytes: int, max_spans: Optional[int] = None, flat: bool = False) -> IngestRun:
    """Plans the read, runs the Beam graph, and returns what to publish.

    `make_pipeline` returns a fresh `beam.Pipeline` (the executor's, with the
    component's Beam arguments). Nothing is committed here: the caller
    publishes the returned state with the artifacts, or nothing at all.
    `max_spans` and `flat` are `build_ingest`'s.
    """
    import time

    from components.event_log import plan_read

    started = time.monotonic()
    plan = plan_read(log_dir, state.resume, chunk_bytes=chunk_bytes)
    if not plan.chunks:
        return IngestRun(plan, state, state, None, time.monotonic() - started)
    summary_path = os.path.join(work_dir, SUMMARY_FILE)
    with make_pipeline() as pipeline:
        build_ingest(pipeline, log_dir=log_dir, chunks=plan.chunks, schema=schema, window=window,
                     state=state, output_root=output_root, summary_path=summary_path,
                     max_spans=max_spans, flat=flat)
    result = read_summary(summary_path)
    if result.chunks != len(plan.chunks):
        # Every chunk yields exactly one result, so a shortfall means the runner
        # dropped elements. Committing `plan.end` would skip those events forever.
        raise RuntimeError(
            f"ingest got results for {result.chunks} of {len(plan.chunks)} chunks of {log_dir!r}: the Beam runner "
            "lost elements, so nothing is committed and the next run reads the same events again. Seen with "
            "DirectRunner direct_running_mode=multi_processing and several workers; use the default in_memory mode.")
    committed = windowing.next_state(state, result.decision, plan.end, result.first_pending)
    return IngestRun(plan, state, committed, result, time.monotonic() - started)
