"""The join of two streams: impressions (what was served) and outcomes (what happened later), keyed by impression id.

A plain dataclass like the rest of StreamingExampleGen's settings (config.py); `validate()` refuses a
misconfiguration with a message that names the fix. The rules it configures live in join.py. Each stream
is an event log or a Kafka topic, configured as StreamingExampleGen's source is (`SourceConfig.kind`,
`KafkaConfig`, secrets by environment variable or file name only).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from components.config_base import ConfigError
from components.event_schema import EventSchema
from components.streaming_example_gen.config import SOURCE_KINDS, KafkaConfig

LABEL_RULES = ("any", "value")


@dataclasses.dataclass(frozen=True)
class JoinStreamConfig:
    """One of the two streams: an event log folder or a Kafka topic, and the schema of its events.

    `JoinStreamConfig("home/impressions", schema)` is an event log;
    `JoinStreamConfig(schema=schema, kind="kafka", kafka=KafkaConfig(bootstrap_servers=..., topic=...))` a topic,
    whose committed position is a per-partition offset vector, as StreamingExampleGen's Kafka source commits.
    """

    log_dir: str = ""
    # Required; None only so that log_dir may be left out for a Kafka stream (validate() names it missing).
    schema: Optional[EventSchema] = None
    # "event_log" reads log_dir; "kafka" reads the topic in `kafka` (SourceConfig's kinds).
    kind: str = "event_log"
    kafka: Optional[KafkaConfig] = None

    @property
    def is_kafka(self) -> bool:
        return self.kind == "kafka"

    def describe(self) -> str:
        if self.is_kafka and self.kafka is not None:
            return f"Kafka topic {self.kafka.topic!r} at {self.kafka.bootstrap_servers}"
        return f"event log {self.log_dir}"

    def validate(self, name: str) -> None:
        """`name`: "impressions" or "outcomes", for the messages (join.<name>.<setting>)."""
        where = f"join.{name}"
        if self.schema is None:
            raise ConfigError(f"{where}.schema is not set: give the {name}' event schema (schema: or schema_file:)")
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"{where}.kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.is_kafka:
            if self.kafka is None:
                raise ConfigError(f"{where}.kind is 'kafka' but {where}.kafka is not set: set "
                                  f"{where}.kafka=KafkaConfig(bootstrap_servers=..., topic=...)")
            if self.log_dir:
                raise ConfigError(f"{where}.kind is 'kafka' but {where}.log_dir is set too: a stream has one "
                                  f"source; drop log_dir (or set kind='event_log' and drop kafka)")
            self.kafka.validate(where=f"{where}.kafka")
        else:
            if self.kafka is not None:
                raise ConfigError(f"{where}.kafka is set but {where}.kind is 'event_log': set {where}.kind='kafka' "
                                  f"to read the topic, or drop {where}.kafka")
            if not self.log_dir:
                raise ConfigError(f"{where}.log_dir is empty: set it to the event log folder of the {name}, or "
                                  f"set {where}.kind='kafka' and {where}.kafka to read them from a topic")
        self.schema.validate()

    def same_stream(self, other: "JoinStreamConfig") -> bool:
        """Whether both read the same log folder, or the same topic (a partition in common) at the same brokers."""
        if self.kind != other.kind:
            return False
        if not self.is_kafka:
            return self.log_dir == other.log_dir
        a, b = self.kafka, other.kafka
        if a.topic != b.topic or a.bootstrap_servers != b.bootstrap_servers:
            return False
        return a.partitions is None or b.partitions is None or bool(set(a.partitions) & set(b.partitions))


@dataclasses.dataclass(frozen=True)
class JoinConfig:
    """Impressions joined to the outcomes that arrive within the attribution window.

    An impression's id is `impressions.schema.id_field`; an outcome names its impression in `key`.
    The example of an impression is the impression as served, with `impressions.schema.label_field`
    set by `label_rule` from its counted outcomes within the window.
    """

    impressions: JoinStreamConfig
    outcomes: JoinStreamConfig
    # The outcome field that holds the impression id.
    key: str = "impression_id"
    # An outcome counts if its event time t satisfies impression_time <= t <= impression_time + window.
    attribution_window_seconds: int = 600
    # "any": 1 if at least one counted outcome fell in the window, else 0; "value": the sum of the
    # counted outcomes' `value_field` (0.0 without one).
    label_rule: str = "any"
    outcome_type_field: str = "outcome_type"
    counted_types: Tuple[str, ...] = ("click",)
    value_field: Optional[str] = None
    # An outcome whose impression has not appeared by the time the impression stream's watermark passes the
    # outcome's event time plus this bound is dead-lettered as an orphan.
    orphan_bound_seconds: int = 3600
    # Impression fields not carried into the examples (what a server adds to its log: request id, model
    # version, score), so the examples' schema, and the model's inputs, stay the stream's own.
    drop_fields: Tuple[str, ...] = ()
    # A ranking server logs every candidate it scored, shown or not: with `max_position` set, an impression
    # whose int `position_field` is >= it was not shown, and is no example (skipped, not dead-lettered).
    max_position: Optional[int] = None
    position_field: str = "position"

    @property
    def examples_schema(self) -> EventSchema:
        """The schema of the joined examples: the impressions' with the label required, since the join always
        sets it. In a pipeline (DriftlineConfig.join) it is `source.schema`, what Transform, the trainer, the
        gate and serving read."""
        imp = self.impressions.schema
        fields = tuple(dataclasses.replace(f, required=True) if f.name == imp.label_field else f
                       for f in imp.fields if f.name not in self.drop_fields)
        return dataclasses.replace(imp, fields=fields)

    @property
    def attribution_window_ms(self) -> int:
        return self.attribution_window_seconds * 1000

    @property
    def orphan_bound_ms(self) -> int:
        return self.orphan_bound_seconds * 1000

    def validate(self) -> None:
        for name, stream in (("impressions", self.impressions), ("outcomes", self.outcomes)):
            if not isinstance(stream, JoinStreamConfig):
                raise ConfigError(f"join.{name} must be a JoinStreamConfig(log_dir=..., schema=EventSchema(...)) "
                                  f"or JoinStreamConfig(schema=..., kind='kafka', kafka=KafkaConfig(...))")
            stream.validate(name)
        if self.impressions.same_stream(self.outcomes):
            if self.impressions.is_kafka:
                raise ConfigError(f"join.impressions and join.outcomes read the same Kafka topic "
                                  f"{self.impressions.kafka.topic!r}: each stream needs its own topic")
            raise ConfigError("join.impressions.log_dir and join.outcomes.log_dir are the same folder: each stream "
                              "needs its own event log")
        imp, out = self.impressions.schema, self.outcomes.schema
        imp_fields, out_fields = imp.field_map, out.field_map
        if imp_fields[imp.label_field].required:
            raise ConfigError(f"join.impressions.schema's label field {imp.label_field!r} is required, but the join "
                              "sets it: declare it FieldSpec(..., required=False), impressions carry no label")
        if self.key not in out_fields:
            raise ConfigError(f"join.key={self.key!r} is not a field of the outcomes schema {sorted(out_fields)}: "
                              "set it to the outcome field holding the impression id")
        if out_fields[self.key].type != imp_fields[imp.id_field].type or not out_fields[self.key].required:
            raise ConfigError(f"join.key {self.key!r} must be a required field of the impressions' id type "
                              f"{imp_fields[imp.id_field].type!r} (the impression id {imp.id_field!r}), got "
                              f"{out_fields[self.key].type!r}")
        if self.attribution_window_seconds < 1:
            raise ConfigError(f"join.attribution_window_seconds must be >= 1, got {self.attribution_window_seconds}")
        if self.orphan_bound_seconds < 0:
            raise ConfigError(f"join.orphan_bound_seconds must be >= 0, got {self.orphan_bound_seconds}")
        if self.label_rule not in LABEL_RULES:
            raise ConfigError(f"join.label_rule must be one of {LABEL_RULES}, got {self.label_rule!r}")
        field = out_fields.get(self.outcome_type_field)
        if field is None or field.type != "string" or not field.required:
            raise ConfigError(f"join.outcome_type_field={self.outcome_type_field!r} must name a required string "
                              f"field of the outcomes schema {sorted(out_fields)}")
        if not self.counted_types or not all(isinstance(t, str) and t for t in self.counted_types):
            raise ConfigError(f"join.counted_types must list at least one outcome type, e.g. ('click',), got "
                              f"{self.counted_types!r}")
        if self.label_rule == "value":
            value = out_fields.get(self.value_field or "")
            if value is None or value.type not in ("int", "float"):
                raise ConfigError(f"join.label_rule='value' needs join.value_field naming a numeric field of the "
                                  f"outcomes schema {sorted(out_fields)}, got {self.value_field!r}")
            if imp_fields[imp.label_field].type != "float":
                raise ConfigError(f"join.label_rule='value' sums outcome values: declare the impressions' label "
                                  f"field {imp.label_field!r} type='float'")
        elif self.value_field is not None:
            raise ConfigError("join.value_field is read only by label_rule='value': drop it, or set label_rule='value'")
        keep = (imp.id_field, imp.event_time_field, imp.label_field)
        bad = [f for f in self.drop_fields if f not in imp_fields or f in keep]
        if bad:
            raise ConfigError(f"join.drop_fields {bad} must name impression fields other than the id, event time "
                              f"and label {list(keep)}; the impressions' fields are {sorted(imp_fields)}")
        if self.max_position is not None:
            field = imp_fields.get(self.position_field)
            if field is None or field.type != "int" or not field.required:
                raise ConfigError(f"join.max_position needs join.position_field ({self.position_field!r}) to name "
                                  f"a required int field of the impressions {sorted(imp_fields)}")
            if self.max_position < 1:
                raise ConfigError(f"join.max_position must be >= 1 (the top k shown), got {self.max_position}")
