"""A Kafka topic as an event source: per-partition offsets, read planning, range reads; and as a sink.

The positions of a topic are per-partition offsets. A :class:`KafkaOffsets`
says, for each partition, the next offset to read (everything before it was
read), and is what ingestion commits on its ``Examples`` artifacts in ML
Metadata, as the file log commits a (segment, byte offset). Nothing is ever
committed to Kafka: consumers use ``assign()`` at explicit offsets, never
``subscribe()``, with ``enable.auto.commit=false``, so a consumer group holds
no state that could disagree with ML Metadata, and a replay from any
committed point is a matter of reading from its offsets.

Planning does not ask the broker where a partition ends. End offsets
(``ListOffsets``) and ``offsets_for_times`` are not trusted: brokers that
speak the Kafka protocol without being Apache Kafka get them wrong (Tansu
reports a high watermark of 1 and a time lookup of 0). A plan instead reads
each partition from its start until it is caught up (the client reports the
end of the partition after an empty fetch, or nothing arrives for
``poll_timeout_s``) or a per-cycle cap is reached, and records the exact
offset after the last record it saw. Whatever was seen is therefore really
there, and a record that arrives later is simply read by the next run.

The sink (`KafkaLineWriter`, at the end) appends lines as records, one line
a record, and waits for each record's delivery report, as `driftline serve`'s
impressions log does when it goes to a topic.

confluent-kafka is imported inside the functions that talk to a broker, so
positions and plans (and the windowing code that stores them) load without it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from components.event_log import EventLogError

# Settings driftline owns: overriding any of them would break exactly-once reads.
RESERVED_SETTINGS = ("bootstrap.servers", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset",
                     "enable.partition.eof")
# librdkafka requires a group id even for assign(); no group is ever joined and nothing is committed under it.
DEFAULT_GROUP_ID = "driftline-no-commits"
_BATCH = 1000
_POLL_SLICE_S = 0.2

_log = logging.getLogger("driftline.kafka")


class KafkaSourceError(EventLogError):
    """The topic cannot be read as configured or as committed; the message says what to fix."""


@dataclasses.dataclass(frozen=True, order=True)
class PartitionOffset:
    """Where one record sits: its partition and offset."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"p{self.partition}@{self.offset}"


@dataclasses.dataclass(frozen=True)
class KafkaOffsets:
    """Per partition of one topic, the next offset to read: everything before it has been read."""

    topic: str
    offsets: Tuple[Tuple[int, int], ...]  # (partition, offset), sorted by partition

    @classmethod
    def of(cls, topic: str, offsets: Mapping[int, int]) -> "KafkaOffsets":
        return cls(topic, tuple(sorted((int(p), int(o)) for p, o in offsets.items())))

    def as_dict(self) -> Dict[int, int]:
        return dict(self.offsets)

    def get(self, partition: int, default: Optional[int] = None) -> Optional[int]:
        return self.as_dict().get(partition, default)

    def covers(self, position: PartitionOffset) -> bool:
        """True when the record at `position` lies before this frontier (was read)."""
        for p, o in self.offsets:
            if p == position.partition:
                return position.offset < o
        return False

    def with_pending(self, pending: Optional["KafkaOffsets"]) -> "KafkaOffsets":
        """These offsets, moved back to the first pending record of each partition that has one."""
        if pending is None:
            return self
        merged = self.as_dict()
        for p, o in pending.offsets:
            merged[p] = min(o, merged.get(p, o))
        return KafkaOffsets.of(self.topic, merged)

    def to_json_value(self) -> Dict[str, Any]:
        return {"topic": self.topic, "offsets": {str(p): o for p, o in self.offsets}}

    def to_json(self) -> str:
        return json.dumps(self.to_json_value(), sort_keys=True)

    @classmethod
    def from_json_value(cls, value: Mapping[str, Any]) -> "KafkaOffsets":
        return cls.of(str(value["topic"]), {int(p): int(o) for p, o in value["offsets"].items()})

    def __str__(self) -> str:
        return f"{self.topic}[{' '.join(f'{p}:{o}' for p, o in self.offsets)}]"


@dataclasses.dataclass(frozen=True)
class KafkaRange:
    """Offsets [start, stop) of one partition: the unit of reading (a restriction of the splittable read)."""

    topic: str
    partition: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        # Names files: fixed width keeps them sorted in offset order.
        return f"p{self.partition:05d}-{self.start:020d}"


@dataclasses.dataclass(frozen=True)
class KafkaReadPlan:
    start: KafkaOffsets
    end: KafkaOffsets
    ranges: Tuple[KafkaRange, ...]
    # Records seen while planning, per partition (offsets may have gaps: compaction, transaction markers).
    records: Tuple[Tuple[int, int], ...]

    @property
    def total_records(self) -> int:
        return sum(n for _, n in self.records)

    @property
    def units(self) -> Tuple[KafkaRange, ...]:
        return self.ranges

    def describe(self) -> str:
        return f"{self.total_records} records of {len(self.ranges)} partition(s)"


@dataclasses.dataclass(frozen=True)
class Record:
    offset: int
    value: bytes
    # The record's timestamp (CreateTime or LogAppendTime); None when the broker gave none.
    timestamp_ms: Optional[int]


def resolve_secrets(secret_env: Optional[Mapping[str, str]] = None, secret_files: Optional[Mapping[str, str]] = None,
                    environ: Optional[Mapping[str, str]] = None, where: str = "source.kafka") -> Dict[str, str]:
    """The values of the secret settings: setting -> value, read from the environment and from files, now.

    Called only when a consumer is about to connect, in the process that
    connects (the controller, a Beam worker), so a value is never part of
    the configuration that ML Metadata or a compiled spec records. A
    variable that is not set, or a file that cannot be read, is a
    KafkaSourceError that names it and the setting, never the value. `where`: the settings' path in the
    config, for the messages (a join stream's is join.impressions.kafka or join.outcomes.kafka).
    """
    environ = os.environ if environ is None else environ
    resolved: Dict[str, str] = {}
    for setting, name in sorted((secret_env or {}).items()):
        value = environ.get(name)
        if not value:
            raise KafkaSourceError(
                f"{where}.secret_env takes {setting!r} from the environment variable {name!r}, which is "
                f"{'empty' if value == '' else 'not set'} in this process (pid {os.getpid()} on "
                f"{socket.gethostname()}). Set it wherever driftline connects to Kafka: the controller or "
                "`driftline run`, and every Beam worker.")
        resolved[setting] = value
    for setting, path in sorted((secret_files or {}).items()):
        try:
            # A mounted secret is a local file by nature (a Kubernetes or Docker secret volume).
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise KafkaSourceError(
                f"{where}.secret_files takes {setting!r} from the file {path!r}, which cannot be read here "
                f"({type(e).__name__}: {getattr(e, 'strerror', None) or 'not UTF-8 text'}). Mount it at that path "
                "wherever driftline connects to Kafka, readable by the user it runs as.") from None
        value = value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value
        if not value:
            raise KafkaSourceError(f"{where}.secret_files takes {setting!r} from the file {path!r}, which is "
                                   "empty: write the value into it")
        resolved[setting] = value
    return resolved


def consumer_settings(bootstrap_servers: str, client_config: Optional[Mapping[str, Any]] = None,
                      secret_env: Optional[Mapping[str, str]] = None,
                      secret_files: Optional[Mapping[str, str]] = None,
                      where: str = "source.kafka") -> Dict[str, Any]:
    """librdkafka settings of every driftline consumer: explicit offsets, no commits, errors not resets.

    Secret settings are resolved here, at connect time (`resolve_secrets`):
    the returned dict holds them, so it is handed to the client and never stored.
    """
    settings: Dict[str, Any] = {"group.id": DEFAULT_GROUP_ID}
    settings.update(client_config or {})
    settings.update(resolve_secrets(secret_env, secret_files, where=where))
    settings.update({
        "bootstrap.servers": bootstrap_servers,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # A committed offset the broker no longer has (retention, a re-created
        # topic) is an error to report, never a silent jump to either end.
        "auto.offset.reset": "error",
        "enable.partition.eof": True,
    })
    return settings


def _consumer(settings: Mapping[str, Any]):
    from confluent_kafka import Consumer

    try:
        return Consumer(dict(settings), logger=_log)
    except Exception as e:  # KafkaException on bad settings: name them
        raise KafkaSourceError(f"cannot create a Kafka consumer with source.kafka settings: {e}. "
                               "Check source.kafka.client_config (librdkafka property names).") from e


def list_partitions(settings: Mapping[str, Any], topic: str, timeout_s: float = 10.0) -> List[int]:
    """The partitions of `topic`; raises KafkaSourceError when the broker or the topic cannot be found."""
    from confluent_kafka import KafkaException

    consumer = _consumer(settings)
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as e:
            raise KafkaSourceError(
                f"cannot reach Kafka at {settings['bootstrap.servers']!r} within {timeout_s:g} s: {e}. Check "
                "source.kafka.bootstrap_servers and that the brokers are up.") from e
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            why = info.error if info is not None and info.error is not None else "no such topic"
            raise KafkaSourceError(
                f"Kafka topic {topic!r} cannot be read at {settings['bootstrap.servers']!r}: {why}. Create it, or "
                f"set source.kafka.topic to an existing topic (the broker lists {sorted(metadata.topics)[:20]}).")
        return sorted(info.partitions)
    finally:
        consumer.close()


def select_partitions(available: Sequence[int], configured: Optional[Sequence[int]], topic: str) -> List[int]:
    if configured is None:
        return list(available)
    missing = sorted(set(configured) - set(available))
    if missing:
        raise KafkaSourceError(f"source.kafka.partitions names partition(s) {missing} that topic {topic!r} does not "
                               f"have (it has {list(available)}); fix the list or leave it unset to read them all")
    return sorted(set(configured))


def _check_topic(frontier: Optional[KafkaOffsets], topic: str, what: str) -> None:
    if frontier is not None and frontier.topic != topic:
        raise KafkaSourceError(
            f"the {what} offsets in ML Metadata belong to topic {frontier.topic!r}, but source.kafka.topic is "
            f"{topic!r}. A pipeline reads one topic for its whole life: set the topic back, or start a new "
            "pipeline (a new pipeline_name) for the new topic.")


def plan_read(settings: Mapping[str, Any], topic: str, *, resume: Optional[KafkaOffsets],
              end: Optional[KafkaOffsets], partitions: Optional[Sequence[int]] = None,
              poll_timeout_s: float = 2.0, max_records_per_partition: int = 1_000_000,
              metadata_timeout_s: float = 10.0) -> KafkaReadPlan:
    """Reads each partition from `resume` to find what is there now, and plans ranges over it.

    `resume` and `end` are the committed frontiers (None before the first
    published run). A partition with no committed offset is read from its
    beginning. Records from `end` on count against the cap; the re-read of
    records before `end` (those left pending) is never cut, or they would be
    skipped. Raises KafkaSourceError when a partition no longer holds records
    a published run read.
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    _check_topic(resume, topic, "committed resume")
    _check_topic(end, topic, "committed end")
    parts = select_partitions(list_partitions(settings, topic, metadata_timeout_s), partitions, topic)
    resume_at = resume.as_dict() if resume is not None else {}
    end_at = end.as_dict() if end is not None else {}
    first: Dict[int, int] = {}
    last: Dict[int, int] = {}
    counts: Dict[int, int] = {p: 0 for p in parts}
    new_counts: Dict[int, int] = {p: 0 for p in parts}
    active = set(parts)

    def caught_up(p: int) -> bool:
        # Records before the committed end were read by a published run and must be there again.
        need = end_at.get(p)
        return need is None or last.get(p, resume_at.get(p, need) - 1) >= need - 1

    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, p, resume_at.get(p, OFFSET_BEGINNING)) for p in parts])
        idle_since = time.monotonic()
        while active:
            messages = consumer.consume(num_messages=_BATCH, timeout=_POLL_SLICE_S)
            progressed = False
            for m in messages:
                p = m.partition()
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # An empty fetch at the partition's end: caught up for now.
                        if p in active and caught_up(p):
                            active.discard(p)
                            consumer.pause([TopicPartition(topic, p)])
                        continue
                    raise _read_error(topic, p, err, resume_at.get(p))
                if p not in active:
                    continue  # already fetched when it was paused
                o = m.offset()
                progressed = True
                first.setdefault(p, o)
                last[p] = o
                counts[p] += 1
                if o >= end_at.get(p, 0):
                    new_counts[p] += 1
                    if new_counts[p] >= max_records_per_partition:
                        active.discard(p)
                        consumer.pause([TopicPartition(topic, p)])
            now = time.monotonic()
            if progressed:
                idle_since = now
            elif now - idle_since >= poll_timeout_s:
                break
    finally:
        consumer.close()
    short = sorted(p for p in parts if not caught_up(p))
    if short:
        details = ", ".join(f"partition {p}: read up to offset {last[p] + 1 if p in last else resume_at.get(p, 0)}, "
                            f"published runs read up to {end_at[p]}" for p in short)
        raise KafkaSourceError(
            f"topic {topic!r} no longer yields records that published runs already read ({details}) within "
            f"{poll_timeout_s:g} s of silence. Either the brokers holding them are unreachable (retry later), or the "
            "topic was deleted, re-created or truncated by retention; then start a new pipeline (a new "
            "pipeline_name) to ingest the topic from its beginning.")
    ranges: List[KafkaRange] = []
    starts = dict(resume_at)
    stops = dict(end_at)
    for p in parts:
        if p not in last:
            continue
        start = resume_at.get(p, first[p])
        stop = last[p] + 1
        ranges.append(KafkaRange(topic, p, start, stop))
        starts[p] = start
        stops[p] = max(stop, end_at.get(p, stop))
    return KafkaReadPlan(start=KafkaOffsets.of(topic, starts), end=KafkaOffsets.of(topic, stops),
                         ranges=tuple(ranges), records=tuple(sorted((p, n) for p, n in counts.items() if n)))


def _read_error(topic: str, partition: int, err, offset: Optional[int]) -> KafkaSourceError:
    from confluent_kafka import KafkaError

    if err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
        return KafkaSourceError(
            f"topic {topic!r} partition {partition} no longer has offset {offset}: {err}. Records were removed by "
            "retention (or the topic re-created) before they were ingested; raise the topic's retention, and start "
            "a new pipeline (a new pipeline_name) to ingest what is left from its beginning.")
    return KafkaSourceError(f"reading topic {topic!r} partition {partition} failed: {err}")


def _timestamp_ms(message) -> Optional[int]:
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

    kind, value = message.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE or value is None or value < 0 else int(value)


def read_partition(settings: Mapping[str, Any], topic: str, partition: int, start: int, *,
                   expect_through: int, idle_timeout_s: float = 30.0) -> Iterator[Record]:
    """Yields the records of one partition from offset `start` on, in offset order, until the caller stops.

    The caller knows (from its plan) that a record at `expect_through` exists,
    and stops at or before it; if no record arrives for `idle_timeout_s`
    before that, the records are gone or unreachable and this raises.
    """
    from confluent_kafka import KafkaError, TopicPartition

    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        idle_since = time.monotonic()
        next_offset = start
        while True:
            messages = consumer.consume(num_messages=_BATCH, timeout=_POLL_SLICE_S)
            got = False
            for m in messages:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise _read_error(topic, partition, err, next_offset)
                got = True
                next_offset = m.offset() + 1
                yield Record(m.offset(), m.value() or b"", _timestamp_ms(m))
            now = time.monotonic()
            if got:
                idle_since = now
            elif now - idle_since >= idle_timeout_s:
                raise KafkaSourceError(
                    f"topic {topic!r} partition {partition}: no record at offset {next_offset} or later arrived "
                    f"within {idle_timeout_s:g} s, though this run's plan saw records up to offset {expect_through}. "
                    "The brokers became unreachable or the records were deleted; nothing is committed, and the "
                    "next run plans again.")
    finally:
        consumer.close()


def read_range(settings: Mapping[str, Any], rng: KafkaRange, idle_timeout_s: float = 30.0) -> Iterator[Record]:
    """The records of one planned range, in offset order."""
    if rng.start >= rng.stop:
        return
    for record in read_partition(settings, rng.topic, rng.partition, rng.start, expect_through=rng.stop - 1,
                                 idle_timeout_s=idle_timeout_s):
        if record.offset >= rng.stop:
            return
        yield record
        if record.offset >= rng.stop - 1:
            return


# -- the sink: lines appended to a topic ---------------------------------------------------------------------

class KafkaSinkError(EventLogError):
    """Lines could not all be delivered to the topic; `delivered` of them were (in no particular order)."""

    def __init__(self, message: str, delivered: int = 0):
        super().__init__(message)
        self.delivered = delivered


def producer_settings(bootstrap_servers: str, client_config: Optional[Mapping[str, Any]] = None,
                      secret_env: Optional[Mapping[str, str]] = None,
                      secret_files: Optional[Mapping[str, str]] = None,
                      message_timeout_ms: int = 10_000) -> Dict[str, Any]:
    """librdkafka settings of a driftline producer (the impressions sink).

    Secrets are resolved here, at connect time, as for the consumers. Every
    record gets a final delivery report within `message_timeout_ms` (librdkafka
    otherwise retries for 5 minutes), so what a writer counts as delivered or
    lost is final, never delivered later behind its back.
    """
    settings: Dict[str, Any] = {"linger.ms": 5}
    settings.update(client_config or {})
    settings.update(resolve_secrets(secret_env, secret_files))
    settings.update({"bootstrap.servers": bootstrap_servers, "message.timeout.ms": int(message_timeout_ms)})
    return settings


class KafkaLineWriter:
    """Appends lines to one topic: each line one record, the value the line's bytes, no key.

    The counterpart of the reads above: a topic these records go to is a source
    StreamingExampleGen reads like any other (`KafkaSource`). `write_lines`
    returns once every line has its delivery report: all delivered, or a
    KafkaSinkError saying how many were.
    """

    def __init__(self, settings: Mapping[str, Any], topic: str):
        from confluent_kafka import Producer

        self.topic = topic
        self.settings = dict(settings)
        try:
            self._producer = Producer(self.settings, logger=_log)
        except Exception as e:  # KafkaException on bad settings: name them
            raise KafkaSinkError(f"cannot create a Kafka producer for topic {topic!r}: {e}. Check the client "
                                 "settings (librdkafka property names).") from e

    def write_lines(self, lines: Sequence[bytes]) -> int:
        delivered, errors = [0], []

        def report(err, msg) -> None:
            if err is None:
                delivered[0] += 1
            elif len(errors) < 5:
                errors.append(str(err))

        for line in lines:
            while True:
                try:
                    self._producer.produce(self.topic, value=line, on_delivery=report)
                    break
                except BufferError:  # librdkafka's queue is full: let it send, then retry this line
                    self._producer.poll(0.05)
            self._producer.poll(0)
        # message.timeout.ms bounds every record's fate; the margin covers the last reports' callbacks.
        remaining = self._producer.flush(self.settings["message.timeout.ms"] / 1000.0 + 5.0)
        if delivered[0] != len(lines):
            raise KafkaSinkError(
                f"{len(lines) - delivered[0]} of {len(lines)} lines were not delivered to Kafka topic {self.topic!r} "
                f"at {self.settings['bootstrap.servers']!r}: {'; '.join(errors) or f'{remaining} still queued'}",
                delivered=delivered[0])
        return delivered[0]

    def close(self) -> None:
        self._producer.flush(self.settings["message.timeout.ms"] / 1000.0 + 5.0)
