"""The event schema: one declarative description of a stream.

Ingestion (parsing, validation, dead-lettering, the id and event-time fields)
and the transforms both read the stream through an :class:`EventSchema`, so a
user with another stream writes a new schema, not new code.

A schema is plain data and round-trips through JSON, which is how it travels
to a TFX executor (as an exec property) and how users keep it in a file::

    {"name": "clicks", "id_field": "event_id", "event_time_field": "ts",
     "label_field": "clicked",
     "fields": [{"name": "event_id", "type": "string"},
                {"name": "ts", "type": "int"},
                {"name": "clicked", "type": "int"},
                {"name": "country", "type": "string", "feature": "categorical"},
                {"name": "price", "type": "float", "feature": "numeric"}]}
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import orjson

FIELD_TYPES = ("int", "float", "string")
# 1 MiB: far above any sane event, far below what would hurt a worker.
DEFAULT_MAX_LINE_BYTES = 1 << 20
FEATURE_KINDS = ("categorical", "numeric", "none")


class SchemaError(ValueError):
    """The schema itself is wrong: a configuration error, raised before any data is read."""


class InvalidEvent(ValueError):
    """One event does not match the schema; it is dead-lettered with this reason."""


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One field of an event.

    ``feature`` tells the transforms how to use the field: ``categorical``
    fields are hashed into ``hash_buckets`` buckets, ``numeric`` ones are
    scaled, ``none`` fields (ids, timestamps, the label) are carried but not
    fed to the model as features.
    """

    name: str
    type: str
    feature: str = "none"
    required: bool = True
    hash_buckets: Optional[int] = None

    def validate(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SchemaError(f"every field needs a non-empty string name, got {self.name!r}")
        if self.type not in FIELD_TYPES:
            raise SchemaError(f"field {self.name!r}: type must be one of {FIELD_TYPES}, got {self.type!r}")
        if self.feature not in FEATURE_KINDS:
            raise SchemaError(
                f"field {self.name!r}: feature must be one of {FEATURE_KINDS}, got {self.feature!r}")
        if self.feature == "numeric" and self.type == "string":
            raise SchemaError(f"field {self.name!r}: a string field cannot be a numeric feature; "
                              "declare it feature='categorical' or change its type")
        if self.hash_buckets is not None and (self.feature != "categorical" or self.hash_buckets < 1):
            raise SchemaError(f"field {self.name!r}: hash_buckets needs feature='categorical' and a value >= 1")


@dataclasses.dataclass(frozen=True)
class EventSchema:
    """Fields and types of a stream, and which fields are its id, event time and label."""

    name: str
    fields: Tuple[FieldSpec, ...]
    id_field: str
    event_time_field: str
    label_field: str
    # Guards the example writer and the model against a runaway producer:
    # longer strings are dead-lettered, not truncated.
    max_string_length: int = 1024
    # A longer line (a record's payload) is dead-lettered unparsed; the event log's reader never holds
    # more than a bounded prefix of one (components/event_log.py), so one runaway line costs no memory.
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def __post_init__(self):
        object.__setattr__(self, "fields", tuple(self.fields))
        self.validate()

    # -- validation -----------------------------------------------------------
    def validate(self) -> None:
        if not self.fields:
            raise SchemaError(f"schema {self.name!r} declares no fields")
        seen = set()
        for field in self.fields:
            if not isinstance(field, FieldSpec):
                raise SchemaError(f"schema {self.name!r}: fields must be FieldSpec, got {type(field).__name__}")
            field.validate()
            if field.name in seen:
                raise SchemaError(f"schema {self.name!r}: field {field.name!r} is declared twice")
            seen.add(field.name)
        by_name = self.field_map
        for role, name, allowed in (
            ("id_field", self.id_field, ("string", "int")),
            ("event_time_field", self.event_time_field, ("int",)),
            ("label_field", self.label_field, ("int", "float")),
        ):
            if name not in by_name:
                raise SchemaError(f"schema {self.name!r}: {role}={name!r} is not one of the declared fields "
                                  f"{sorted(by_name)}")
            if by_name[name].type not in allowed:
                raise SchemaError(f"schema {self.name!r}: {role} {name!r} must have type in {allowed} "
                                  f"(event time is epoch milliseconds), got {by_name[name].type!r}")
            if not by_name[name].required:
                raise SchemaError(f"schema {self.name!r}: {role} {name!r} must be required")
        if self.max_string_length < 1:
            raise SchemaError("max_string_length must be >= 1")
        if self.max_line_bytes < 64:
            raise SchemaError(f"max_line_bytes must be >= 64 (an event's JSON needs room), got {self.max_line_bytes}")

    @functools.cached_property
    def _parse_plan(self) -> Tuple[Tuple[FieldSpec, str, type], ...]:
        return tuple((f, f.name, {"int": int, "float": float, "string": str}[f.type]) for f in self.fields)

    @property
    def field_map(self) -> Dict[str, FieldSpec]:
        return {f.name: f for f in self.fields}

    def feature_fields(self, kind: Optional[str] = None) -> List[FieldSpec]:
        """The fields used as model features, optionally only one kind."""
        return [f for f in self.fields
                if f.feature != "none" and (kind is None or f.feature == kind)]

    # -- serialization ----------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "id_field": self.id_field,
            "event_time_field": self.event_time_field,
            "label_field": self.label_field,
            "max_string_length": self.max_string_length,
            "max_line_bytes": self.max_line_bytes,
            "fields": [dataclasses.asdict(f) for f in self.fields],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EventSchema":
        try:
            fields = tuple(FieldSpec(**f) for f in data["fields"])
            return cls(name=data["name"], fields=fields, id_field=data["id_field"],
                       event_time_field=data["event_time_field"], label_field=data["label_field"],
                       max_string_length=data.get("max_string_length", 1024),
                       max_line_bytes=data.get("max_line_bytes", DEFAULT_MAX_LINE_BYTES))
        except KeyError as e:
            raise SchemaError(f"event schema is missing the key {e.args[0]!r}") from None
        except TypeError as e:
            raise SchemaError(f"event schema has an unknown or malformed key: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "EventSchema":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise SchemaError(f"event schema is not valid JSON: {e}") from None

    @classmethod
    def load(cls, path: str) -> "EventSchema":
        """Reads a schema from a JSON file (local or any tf.io.gfile path)."""
        import tensorflow as tf  # local: keeps schema use free of a TF import

        if not tf.io.gfile.exists(path):
            raise SchemaError(f"event schema file {path!r} does not exist")
        with tf.io.gfile.GFile(path, "r") as f:
            return cls.from_json(f.read())

    # -- parsing ----------------------------------------------------------------
    def parse(self, line: bytes, event_time_ms: Optional[int] = None) -> Dict[str, Any]:
        """Parses one JSON Lines record into a dict of typed values.

        Raises InvalidEvent with a reason a person can act on. Unknown extra
        keys are ignored, so producers can add fields before the schema does.
        `event_time_ms`, when given, is the event time (a Kafka record's
        timestamp) and replaces whatever the payload holds in the event-time field.
        """
        length = getattr(line, "full_length", None) or len(line)
        if length > self.max_line_bytes:
            raise InvalidEvent(f"line of {length} bytes exceeds max_line_bytes={self.max_line_bytes}")
        raw = _load_json(line)
        if not isinstance(raw, dict):
            raise InvalidEvent(f"not a JSON object but {type(raw).__name__}")
        if event_time_ms is not None:
            raw[self.event_time_field] = event_time_ms
        event: Dict[str, Any] = {}
        max_len = self.max_string_length
        for field, name, fast_type in self._parse_plan:
            value = raw.get(name)
            if value is None:
                if field.required:
                    raise InvalidEvent(f"missing required field {name!r}")
                event[name] = None
                continue
            # The common case, checked inline (ingest parses every event): the exact JSON type,
            # in range. Anything else takes _coerce, which converts or says what is wrong.
            kind = type(value)
            if kind is fast_type and (
                    (kind is int and -_INT64_LIMIT <= value < _INT64_LIMIT)
                    or (kind is str and len(value) <= max_len and value.isascii())
                    or (kind is float and -_FLOAT32_MAX <= value <= _FLOAT32_MAX)):
                event[name] = value
            else:
                event[name] = _coerce(field, value, max_len)
        if event[self.event_time_field] < 0:
            raise InvalidEvent(f"negative event time {event[self.event_time_field]}")
        return event


def _load_json(line: bytes) -> Any:
    """The JSON value of one line, or InvalidEvent: nothing a producer writes may raise anything else."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as e:
        if str(e).startswith("depth limit exceeded"):
            # orjson's bound on nesting (1024 levels); json.loads would recurse until RecursionError.
            raise InvalidEvent(f"not JSON: nested deeper than {MAX_JSON_DEPTH} levels") from None
    # orjson is 4x faster but stricter (NaN, integers beyond 64 bits, lone surrogates,
    # non-UTF-8): the standard parser decides, so an event parses, or is refused
    # with a reason, exactly as json.loads has it.
    try:
        return json.loads(line)
    except RecursionError:
        # Shallower than orjson's bound but deeper than Python's stack (e.g. 1000 levels of '[' with a NaN).
        raise InvalidEvent("not JSON: nested too deeply for the parser") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidEvent(f"not JSON: {e.__class__.__name__}: {str(e)[:120]}") from None


def _coerce(field: FieldSpec, value: Any, max_len: int) -> Any:
    # bool is an int subclass in Python; a JSON true/false is a type error here.
    if field.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if not (isinstance(value, float) and value.is_integer() and math.isfinite(value)):
                raise InvalidEvent(f"field {field.name!r}: expected int, got {type(value).__name__} {value!r:.60}")
            value = int(value)  # and in range, as any int: 1e19 does not fit a tf.Example int64
        if not -_INT64_LIMIT <= value < _INT64_LIMIT:
            raise InvalidEvent(f"field {field.name!r}: int out of int64 range")
        return value
    if field.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidEvent(f"field {field.name!r}: expected float, got {type(value).__name__} {value!r:.60}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidEvent(f"field {field.name!r}: {value} is not a finite number")
        # tf.Example floats are float32: a larger magnitude cannot be stored.
        if abs(value) > _FLOAT32_MAX:
            raise InvalidEvent(f"field {field.name!r}: {value} is beyond float32's range (+-{_FLOAT32_MAX:.4g})")
        return value
    if not isinstance(value, str):
        raise InvalidEvent(f"field {field.name!r}: expected string, got {type(value).__name__} {value!r:.60}")
    if len(value) > max_len:
        raise InvalidEvent(f"field {field.name!r}: string of {len(value)} characters exceeds "
                           f"max_string_length={max_len}")
    if not value.isascii():
        # JSON may escape a lone surrogate ("\ud800"), which has no UTF-8 bytes to store.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(f"field {field.name!r}: string is not valid Unicode "
                               f"(a lone surrogate escape?): {value!r:.60}") from None
    return value


_FLOAT32_MAX = 3.4028234663852886e38
# orjson's nesting limit, the bound on any line's depth.
MAX_JSON_DEPTH = 1024
_INT64_LIMIT = 2 ** 63


def ad_click_schema() -> EventSchema:
    """The default schema: the built-in drifting ad-click stream."""
    return EventSchema(
        name="ad_clicks",
        id_field="event_id",
        event_time_field="event_time",
        label_field="clicked",
        fields=(
            FieldSpec("event_id", "string"),
            FieldSpec("event_time", "int"),
            FieldSpec("user_id", "string", feature="categorical", hash_buckets=2048),
            FieldSpec("ad_id", "string", feature="categorical", hash_buckets=1024),
            FieldSpec("ad_category", "string", feature="categorical", hash_buckets=64),
            FieldSpec("device", "string", feature="categorical", hash_buckets=16),
            FieldSpec("hour_of_day", "int", feature="categorical", hash_buckets=24),
            FieldSpec("price", "float", feature="numeric"),
            FieldSpec("clicked", "int"),
        ),
    )
