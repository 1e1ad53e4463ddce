"""Where ingestion reads from: the event log or a Kafka topic, behind one small interface.

A source plans a read from the committed state (``plan(state)``: start and
end frontiers and the units to read), reads a unit into raw records
``(offset, payload bytes, record timestamp ms or None)``, and says how a
record's place in a unit becomes a position the windowing rules compare
(``lane`` + offset: a segment or a partition). Everything else (parsing,
dead letters, windowing, exactly-once bookkeeping, writing) is shared in
``ingest.py`` and ``windowing.py``.

Sources are small picklable objects: the Beam DoFns carry them to workers.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

from components import event_log, kafka_log
from components.event_schema import EventSchema
from components.streaming_example_gen import ingest, windowing
from components.streaming_example_gen.config import KafkaConfig, SourceConfig

RawRecord = Tuple[int, bytes, Optional[int]]

# Exec property holding the KafkaConfig JSON; absent or empty for the event log.
KAFKA_SOURCE_KEY = "kafka_source"


def _switched_source(state: windowing.CommittedState, expected: type) -> bool:
    frontiers = [f for f in (state.end, state.resume) if f is not None]
    return any(not isinstance(f, expected) for f in frontiers)


def _switch_message(committed_by: str, now: str) -> str:
    return (f"the committed state in ML Metadata was written by {committed_by}, but this pipeline is now configured "
            f"to read {now}. A pipeline keeps its source for its whole life: configure the old source again, or "
            "start a new pipeline (a new pipeline_name) for the new one.")


class EventLogSource:
    """The append-only folder of JSON Lines segments (components/event_log.py)."""

    kind = "event_log"
    event_time_from_record = False

    def __init__(self, log_dir: str, chunk_bytes: int, max_line_bytes: int = event_log.DEFAULT_MAX_LINE_BYTES):
        self.log_dir = log_dir
        self.chunk_bytes = chunk_bytes
        # A longer line is read as an OverlongLine (a prefix and its length), never whole.
        self.max_line_bytes = max_line_bytes

    def describe(self) -> str:
        return f"event log {self.log_dir}"

    def preflight(self) -> None:
        event_log.list_segments(self.log_dir)

    def plan(self, state: windowing.CommittedState) -> event_log.ReadPlan:
        if _switched_source(state, event_log.Position):
            raise event_log.EventLogError(_switch_message("a Kafka source", self.describe()))
        return event_log.plan_read(self.log_dir, state.resume, chunk_bytes=self.chunk_bytes,
                                   passed_sizes=state.segment_sizes)

    def read(self, chunk: event_log.Chunk) -> Iterator[RawRecord]:
        for offset, line in event_log.read_chunk(self.log_dir, chunk, self.max_line_bytes):
            yield offset, line, None

    def expand_read(self, pipeline: beam.Pipeline, units: Sequence[event_log.Chunk], schema_json: str,
                    window: windowing.Window, bounds: Optional[windowing.TimeBounds] = None):
        return (pipeline
                | "Chunks" >> beam.Create(list(units))
                # Spread chunks over workers before the expensive parse.
                | "Reshuffle" >> beam.Reshuffle()
                | "Parse" >> beam.ParDo(ingest.ParseChunk(self, schema_json, window, bounds)))

    @staticmethod
    def lane(chunk: event_log.Chunk) -> str:
        return chunk.segment

    @staticmethod
    def position(lane: str, offset: int) -> event_log.Position:
        return event_log.Position(lane, offset)

    @staticmethod
    def unit_name(chunk: event_log.Chunk) -> str:
        return chunk.name

    @staticmethod
    def unit_key(chunk: event_log.Chunk) -> int:
        return chunk.index

    @staticmethod
    def dead_letter_where(chunk: event_log.Chunk, offset: int) -> Dict[str, Any]:
        return {"segment": chunk.segment, "offset": offset}

    @staticmethod
    def pending_frontier(pending: Sequence[Tuple[str, int]]) -> Optional[event_log.Position]:
        return min(event_log.Position(s, o) for s, o in pending) if pending else None

    def check_complete(self, plan: event_log.ReadPlan, unit_keys: List[int]) -> None:
        if sorted(unit_keys) != [c.index for c in plan.chunks]:
            # Every chunk yields exactly one result, so a shortfall means the
            # runner dropped elements.
            raise ingest.RunnerLostElements(
                f"ingest got results for {len(unit_keys)} of {len(plan.chunks)} chunks of {self.log_dir!r}: the Beam "
                "runner lost elements, so nothing is committed and the next run reads the same events again. Beam "
                "2.59's runner-side data plane lost elements this way under DirectRunner multi_processing until "
                "components/beam_data_plane.py fixed it; the default in_memory mode never showed it.")


class KafkaSource:
    """One Kafka topic, read by offset range per partition (components/kafka_log.py)."""

    kind = "kafka"

    def __init__(self, config: KafkaConfig, where: str = "source.kafka"):
        self.config = config
        self.event_time_from_record = config.event_time == "record_timestamp"
        # The config's path in messages: a join stream's is join.impressions.kafka or join.outcomes.kafka.
        self.where = where

    @property
    def settings(self) -> Dict[str, Any]:
        # Resolved on every connect, in the connecting process: secrets never travel in the config.
        return kafka_log.consumer_settings(self.config.bootstrap_servers, self.config.client_config,
                                           self.config.secret_env, self.config.secret_files, where=self.where)

    def describe(self) -> str:
        return f"Kafka topic {self.config.topic!r} at {self.config.bootstrap_servers}"

    def preflight(self) -> None:
        kafka_log.select_partitions(kafka_log.list_partitions(self.settings, self.config.topic),
                                     self.config.partitions, self.config.topic)

    def plan(self, state: windowing.CommittedState) -> kafka_log.KafkaReadPlan:
        if _switched_source(state, kafka_log.KafkaOffsets):
            raise kafka_log.KafkaSourceError(_switch_message("an event-log source", self.describe()))
        c = self.config
        return kafka_log.plan_read(self.settings, c.topic, resume=state.resume, end=state.end,
                                   partitions=c.partitions, poll_timeout_s=c.poll_timeout_s,
                                   max_records_per_partition=c.max_records_per_partition)

    def read(self, rng: kafka_log.KafkaRange) -> Iterator[RawRecord]:
        for r in kafka_log.read_range(self.settings, rng, idle_timeout_s=self.config.read_timeout_s):
            yield r.offset, r.value, r.timestamp_ms

    def expand_read(self, pipeline: beam.Pipeline, units: Sequence[kafka_log.KafkaRange], schema_json: str,
                    window: windowing.Window, bounds: Optional[windowing.TimeBounds] = None):
        # No reshuffle: the splittable DoFn's own expansion splits and distributes the ranges.
        return (pipeline
                | "Ranges" >> beam.Create(list(units))
                | "ReadKafka" >> beam.ParDo(ReadKafkaRange(self, schema_json, window, bounds)))

    @staticmethod
    def lane(rng: kafka_log.KafkaRange) -> int:
        return rng.partition

    @staticmethod
    def position(lane: int, offset: int) -> kafka_log.PartitionOffset:
        return kafka_log.PartitionOffset(lane, offset)

    @staticmethod
    def unit_name(rng: kafka_log.KafkaRange) -> str:
        return rng.name

    @staticmethod
    def unit_key(rng: kafka_log.KafkaRange) -> List[int]:
        return [rng.partition, rng.start, rng.stop]

    @staticmethod
    def dead_letter_where(rng: kafka_log.KafkaRange, offset: int) -> Dict[str, Any]:
        return {"topic": rng.topic, "partition": rng.partition, "offset": offset}

    def pending_frontier(self, pending: Sequence[Tuple[int, int]]) -> Optional[kafka_log.KafkaOffsets]:
        if not pending:
            return None
        first: Dict[int, int] = {}
        for p, o in pending:
            first[p] = min(o, first.get(p, o))
        return kafka_log.KafkaOffsets.of(self.config.topic, first)

    def check_complete(self, plan: kafka_log.KafkaReadPlan, unit_keys: List[List[int]]) -> None:
        """The ranges the read reported must tile every planned range exactly: none lost, none twice."""
        by_partition: Dict[int, List[Tuple[int, int]]] = {}
        for p, start, stop in unit_keys:
            by_partition.setdefault(p, []).append((start, stop))
        problems = []
        for rng in plan.ranges:
            pieces = sorted(by_partition.pop(rng.partition, []))
            at = rng.start
            for start, stop in pieces:
                if start != at or stop <= start:
                    break
                at = stop
            else:
                if at == rng.stop:
                    continue
            problems.append(f"partition {rng.partition}: planned [{rng.start}, {rng.stop}), read {pieces}")
        problems += [f"partition {p}: read {sorted(v)} but nothing was planned" for p, v in by_partition.items()]
        if problems:
            raise RuntimeError(
                f"the read of {self.describe()} does not cover the plan exactly ({'; '.join(problems)}): the Beam "
                "runner lost or repeated part of a range, so nothing is committed and the next run reads the same "
                "offsets again.")


class ReadKafkaRange(beam.DoFn, beam.transforms.core.RestrictionProvider):
    """A splittable DoFn: reads offsets [start, stop) of one partition and parses them.

    The restriction is an OffsetRange over Kafka offsets, initially split
    into `records_per_split` offsets. Offsets may have gaps (compaction,
    transaction markers), so the reader claims each record's offset as it
    arrives, and a record past the restriction ends the read. The plan saw
    a record at the original range's last offset, so a read always meets a
    record at or after the end of its restriction. Each processed
    restriction yields one ParsedChunk named after the offsets it covers;
    `KafkaSource.check_complete` verifies they tile the plan.
    """

    def __init__(self, source: KafkaSource, schema_json: str, window: windowing.Window,
                 bounds: Optional[windowing.TimeBounds] = None):
        self._source = source
        self._schema_json = schema_json
        self._window = window
        self._bounds = bounds

    # -- RestrictionProvider ---------------------------------------------------------------------
    def initial_restriction(self, rng: kafka_log.KafkaRange) -> OffsetRange:
        return OffsetRange(rng.start, rng.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, rng: kafka_log.KafkaRange, restriction: OffsetRange) -> int:
        return restriction.size()

    def split(self, rng: kafka_log.KafkaRange, restriction: OffsetRange):
        yield from restriction.split(self._source.config.records_per_split)

    # -- DoFn ---------------------------------------------------------------------------------------
    def setup(self):
        self._parser = ingest.RecordParser(EventSchema.from_json(self._schema_json), self._window,
                                           self._source.event_time_from_record, self._bounds)
        self._settings = self._source.settings

    def process(self, rng: kafka_log.KafkaRange, tracker=beam.DoFn.RestrictionParam()):
        restriction = tracker.current_restriction()
        if restriction.start < restriction.stop:
            parsed = self._parser.parse(self._claimed(rng, restriction, tracker), rng.partition,
                                        self._source.position)
        else:
            parsed = ([], [], [], frozenset())
        done = tracker.current_restriction()
        yield ingest.ParsedChunk(kafka_log.KafkaRange(rng.topic, rng.partition, done.start, done.stop), *parsed)

    def _claimed(self, rng: kafka_log.KafkaRange, restriction: OffsetRange, tracker) -> Iterator[RawRecord]:
        records = kafka_log.read_partition(self._settings, rng.topic, rng.partition, restriction.start,
                                           expect_through=rng.stop - 1,
                                           idle_timeout_s=self._source.config.read_timeout_s)
        try:
            for record in records:
                if record.offset < restriction.start:
                    continue
                if not tracker.try_claim(record.offset):
                    return
                yield record.offset, record.value, record.timestamp_ms
                # The restriction may have shrunk (a dynamic split): re-read its end.
                if record.offset >= tracker.current_restriction().stop - 1:
                    return
        finally:
            records.close()  # closes the consumer now, not at garbage collection


def from_config(source: SourceConfig):
    if source.kind == "kafka":
        return KafkaSource(source.kafka)
    return EventLogSource(source.log_dir, source.chunk_bytes, source.schema.max_line_bytes)


def from_exec_properties(exec_properties: Dict[str, Any]):
    kafka_json = exec_properties.get(KAFKA_SOURCE_KEY)
    if kafka_json:
        return KafkaSource(KafkaConfig.from_json(kafka_json))
    # The schema's line bound, so the reader never holds more of a line than the parser would accept.
    return EventLogSource(exec_properties["log_dir"], exec_properties["chunk_bytes"],
                          EventSchema.from_json(exec_properties["event_schema"]).max_line_bytes)
