"""StreamingExampleGen's settings: where events come from (an event log or Kafka) and how they are windowed.

Composed into DriftlineConfig by pipelines/config.py, which re-exports these names.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Dict, Optional, Tuple

from components.config_base import ConfigError
from components.event_schema import EventSchema, ad_click_schema


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """How events are cut into event-time spans."""

    span_seconds: int = 600
    # The watermark trails the newest event time by this much, so a span is
    # emitted only once events this late can no longer fall into it. Later
    # ones are not dropped: they go into the next emitted span as late events.
    # Freshness (a span's newest event to its model serving) includes this
    # wait, and driftline's target is a minute: 30 s leaves the cycle the rest.
    allowed_lateness_seconds: int = 30
    # The last part of each span, in event time, becomes the eval split, so
    # evaluation data is always later than the training data of that span.
    eval_fraction: float = 0.2
    # An event this far ahead of the ingest machine's clock is dead-lettered as "from the future" and
    # never moves the watermark: one producer with a wrong clock would otherwise close every span early.
    # None switches the bound off.
    max_future_seconds: Optional[int] = 300
    # A late event older than the watermark by more than this is dead-lettered as "too late". Off by
    # default (None), so that a historical replay, whose events all lie far behind, still works.
    max_lateness_seconds: Optional[int] = None
    # A valid event whose id was already emitted in this ingest run or in the spans the newest N runs
    # published is a duplicate (a producer's retry): counted and kept out of the examples. None: as many
    # runs as the trainer's replay window has spans (trainer.replay_spans, at least 1); 0: only within one run.
    dedup_horizon_runs: Optional[int] = None

    def validate(self) -> None:
        if self.span_seconds < 1:
            raise ConfigError(f"window.span_seconds must be >= 1, got {self.span_seconds}")
        if self.allowed_lateness_seconds < 0:
            raise ConfigError(f"window.allowed_lateness_seconds must be >= 0, got {self.allowed_lateness_seconds}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"window.eval_fraction must be strictly between 0 and 1, got {self.eval_fraction}")
        if self.max_future_seconds is not None and self.max_future_seconds < 0:
            raise ConfigError(f"window.max_future_seconds must be >= 0 or None (no bound), got "
                              f"{self.max_future_seconds}")
        if self.max_lateness_seconds is not None and self.max_lateness_seconds < 0:
            raise ConfigError(f"window.max_lateness_seconds must be >= 0 or None (no bound), got "
                              f"{self.max_lateness_seconds}")
        if self.dedup_horizon_runs is not None and self.dedup_horizon_runs < 0:
            raise ConfigError(f"window.dedup_horizon_runs must be >= 0 or None (the replay window), got "
                              f"{self.dedup_horizon_runs}")

    def runtime(self):
        """The plain windowing rules these settings give (components/streaming_example_gen/windowing.py)."""
        from components.streaming_example_gen.windowing import Window

        seconds = lambda v: None if v is None else v * 1000  # noqa: E731
        return Window(self.span_ms, self.allowed_lateness_ms, self.eval_fraction,
                      max_future_ms=seconds(self.max_future_seconds),
                      max_lateness_ms=seconds(self.max_lateness_seconds))

    @property
    def span_ms(self) -> int:
        return self.span_seconds * 1000

    @property
    def allowed_lateness_ms(self) -> int:
        return self.allowed_lateness_seconds * 1000


SOURCE_KINDS = ("event_log", "kafka")
KAFKA_EVENT_TIMES = ("payload", "record_timestamp")
# librdkafka settings driftline sets itself (components/kafka_log.py): offsets
# live in ML Metadata, so nothing may commit to Kafka or silently reset.
KAFKA_RESERVED_SETTINGS = ("bootstrap.servers", "enable.auto.commit", "enable.auto.offset.store",
                           "auto.offset.reset", "enable.partition.eof")
# librdkafka settings that hold a secret. client_config travels as an execution
# property into ML Metadata and into a compiled Vertex spec, in plain text, so
# these (and any setting whose name says password, secret, token or credential)
# must come through KafkaConfig.secret_env or secret_files instead.
KAFKA_SECRET_SETTINGS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                         "sasl.oauthbearer.client.secret")
_SECRET_WORDS = re.compile(r"pass(word|wd)|secret|token|credential", re.IGNORECASE)
# Names that match a secret word but hold none: where to fetch a token, not the token.
_NOT_SECRET_SETTINGS = ("sasl.oauthbearer.token.endpoint.url",)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def looks_like_secret(setting: str) -> bool:
    """Whether a librdkafka setting name is one that holds a secret (see KAFKA_SECRET_SETTINGS)."""
    name = setting.strip().lower()
    return name in KAFKA_SECRET_SETTINGS or (name not in _NOT_SECRET_SETTINGS and bool(_SECRET_WORDS.search(name)))


@dataclasses.dataclass(frozen=True)
class KafkaConfig:
    """A Kafka topic as the source. Offsets are committed in ML Metadata, never to Kafka."""

    bootstrap_servers: str = ""
    topic: str = ""
    # None: every partition of the topic, including ones added later.
    partitions: Optional[Tuple[int, ...]] = None
    # Where an event's time comes from: the payload's event-time field, or
    # the record's timestamp (which then replaces that field).
    event_time: str = "payload"
    # Planning reads until the client reports the end of every partition or
    # nothing arrives for this long; broker-reported end offsets are not used.
    poll_timeout_s: float = 2.0
    # Per cycle, at most this many records past the committed offset are read
    # from one partition; the rest waits for the next cycle.
    max_records_per_partition: int = 1_000_000
    # Offsets per initial split of the splittable read: the unit of parallel reading.
    records_per_split: int = 100_000
    # Read timeout of the range reads: records the plan saw must arrive within it.
    read_timeout_s: float = 30.0
    # Extra librdkafka consumer settings (security.protocol, sasl.mechanism,
    # sasl.username, ssl.ca.location, ...). Recorded in ML Metadata as an
    # execution property and in a compiled Vertex spec: no secrets here
    # (validation refuses a setting named like one, see looks_like_secret).
    client_config: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Secret settings, read only when a consumer connects, never stored:
    # setting -> name of the environment variable that holds its value
    # (e.g. {"sasl.password": "KAFKA_SASL_PASSWORD"}) ...
    secret_env: Dict[str, str] = dataclasses.field(default_factory=dict)
    # ... or setting -> path of a local file that holds it (a mounted secret;
    # one trailing newline is dropped). Only the names and paths are recorded.
    secret_files: Dict[str, str] = dataclasses.field(default_factory=dict)

    def validate(self, where: str = "source.kafka") -> None:
        """`where`: the setting's path in messages (a join stream's is join.impressions.kafka, ...)."""
        if not self.bootstrap_servers:
            raise ConfigError(f"{where}.bootstrap_servers is empty: set it to the brokers, e.g. 'host1:9092,host2:9092'")
        if not self.topic:
            raise ConfigError(f"{where}.topic is empty: set it to the topic the producers write events to")
        if self.partitions is not None and (not self.partitions or any(
                isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in self.partitions)):
            raise ConfigError(f"{where}.partitions must be None (all partitions) or a non-empty tuple of "
                              f"partition numbers >= 0, got {self.partitions!r}")
        if self.event_time not in KAFKA_EVENT_TIMES:
            raise ConfigError(f"{where}.event_time must be one of {KAFKA_EVENT_TIMES}, got {self.event_time!r}")
        if not self.poll_timeout_s > 0 or not self.read_timeout_s > 0:
            raise ConfigError(f"{where}.poll_timeout_s and {where}.read_timeout_s must be > 0")
        if self.read_timeout_s < self.poll_timeout_s:
            raise ConfigError(f"{where}.read_timeout_s ({self.read_timeout_s:g}) must be >= poll_timeout_s "
                              f"({self.poll_timeout_s:g}): a range read waits for records the plan already saw")
        if self.max_records_per_partition < 1 or self.records_per_split < 1:
            raise ConfigError(f"{where}.max_records_per_partition and {where}.records_per_split must be >= 1")
        reserved = sorted((set(self.client_config) | set(self.secret_env) | set(self.secret_files))
                          & set(KAFKA_RESERVED_SETTINGS))
        if reserved:
            raise ConfigError(f"{where}.client_config sets {reserved}, which driftline owns: offsets are "
                              "committed in ML Metadata, so consumers never commit to Kafka nor reset offsets. "
                              f"Remove them (bootstrap.servers goes in {where}.bootstrap_servers).")
        secrets = sorted(k for k in self.client_config if looks_like_secret(k))
        if secrets:
            example = secrets[0]
            env = re.sub(r"[^A-Za-z0-9]+", "_", f"kafka_{example}").upper()
            # The value is never echoed: this message may itself end up in a log.
            raise ConfigError(
                f"{where}.client_config sets {secrets}, which hold secrets: client_config is stored in plain "
                f"text in ML Metadata and in a compiled Vertex spec. Move them out of client_config into "
                f"{where}.secret_env (setting -> environment variable, e.g. "
                f"secret_env={{{example!r}: {env!r}}}) or {where}.secret_files (setting -> file path); "
                "their values are read only when a consumer connects.")
        both = sorted((set(self.secret_env) & set(self.secret_files))
                      | ((set(self.secret_env) | set(self.secret_files)) & set(self.client_config)))
        if both:
            raise ConfigError(f"{where} settings {both} are given twice (client_config, secret_env, "
                              "secret_files): give each setting in one of them")
        for setting, name in self.secret_env.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise ConfigError(f"{where}.secret_env[{setting!r}] must be the name of an environment "
                                  "variable (letters, digits, _), not the secret itself")
        for setting, path in self.secret_files.items():
            if not isinstance(path, str) or not path:
                raise ConfigError(f"{where}.secret_files[{setting!r}] must be the path of a file that holds "
                                  "the value")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["partitions"] = None if self.partitions is None else list(self.partitions)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "KafkaConfig":
        d = json.loads(text)
        if d.get("partitions") is not None:
            d["partitions"] = tuple(d["partitions"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Where events come from and what they look like."""

    log_dir: str = ""
    schema: EventSchema = dataclasses.field(default_factory=ad_click_schema)
    # Unit of parallel reading; also bounds the memory one Beam worker needs.
    chunk_bytes: int = 8 << 20
    # "event_log" reads log_dir; "kafka" reads the topic in `kafka`.
    kind: str = "event_log"
    kafka: Optional[KafkaConfig] = None

    def validate(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"source.kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind == "kafka":
            if self.kafka is None:
                raise ConfigError("source.kind is 'kafka' but source.kafka is not set: set "
                                  "source.kafka=KafkaConfig(bootstrap_servers=..., topic=...)")
            if self.log_dir:
                raise ConfigError("source.kind is 'kafka' but source.log_dir is set too: a pipeline reads one "
                                  "source; drop log_dir (or set kind='event_log' and drop kafka)")
            self.kafka.validate()
        else:
            if self.kafka is not None:
                raise ConfigError("source.kafka is set but source.kind is 'event_log': set source.kind='kafka' to "
                                  "read the topic, or drop source.kafka")
            if not self.log_dir:
                raise ConfigError("source.log_dir is empty: set it to the event log folder "
                                  "(for the built-in stream, the folder given to 'driftline simulate --log')")
        if self.chunk_bytes < 4096:
            raise ConfigError(f"source.chunk_bytes must be >= 4096, got {self.chunk_bytes}")
        self.schema.validate()

    def describe(self) -> str:
        if self.kind == "kafka" and self.kafka is not None:
            return f"Kafka topic {self.kafka.topic!r} at {self.kafka.bootstrap_servers}"
        return f"event log {self.log_dir}"
