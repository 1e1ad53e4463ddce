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

Event time is written by producers in one of ``EVENT_TIME_FORMATS``, declared
as ``event_time_format`` (default ``epoch_ms``); the event-time field's declared
``type`` is what the producer writes (``int`` for ``epoch_ms``, ``int`` or
``float`` for ``epoch_s``, ``string`` for ``iso8601``). Whatever the format, a
parsed event holds its event time as int epoch milliseconds, and so do the
windowing and the tf.Examples: :meth:`EventSchema.stored_type` is the type a
field has from parsing on.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import orjson

FIELD_TYPES = ("int", "float", "string")
# 1 MiB: far above any sane event, far below what would hurt a worker.
DEFAULT_MAX_LINE_BYTES = 1 << 20
FEATURE_KINDS = ("categorical", "numeric", "none")
EVENT_TIME_FORMATS = ("epoch_ms", "epoch_s", "iso8601")
# The producer's JSON type of the event-time field under each format.
_EVENT_TIME_TYPES = {"epoch_ms": ("int",), "epoch_s": ("int", "float"), "iso8601": ("string",)}
# 1973-03-03 in milliseconds. Epoch *seconds* of any date before the year 5138 are below it, so under
# epoch_ms a smaller event time is almost surely seconds (which would silently become a date in 1970).
DEFAULT_MIN_EVENT_TIME_MS = 10 ** 11


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
    # How producers write the event time (EVENT_TIME_FORMATS); parsing converts it to epoch milliseconds.
    event_time_format: str = "epoch_ms"
    # Earlier event times are dead-lettered: under epoch_ms they are what epoch seconds look like. 0 turns
    # the guard off (a synthetic stream whose clock starts at 0); negative times are refused regardless.
    min_event_time_ms: int = DEFAULT_MIN_EVENT_TIME_MS

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
        if self.event_time_format not in EVENT_TIME_FORMATS:
            raise SchemaError(f"schema {self.name!r}: event_time_format must be one of {EVENT_TIME_FORMATS}, "
                              f"got {self.event_time_format!r}")
        time_types = _EVENT_TIME_TYPES[self.event_time_format]
        for role, name, allowed, why in (
            ("id_field", self.id_field, ("string", "int"), ""),
            ("event_time_field", self.event_time_field, time_types,
             f" under event_time_format={self.event_time_format!r} (the type the producer writes; formats: "
             "epoch_ms int, epoch_s int or float, iso8601 string)"),
            ("label_field", self.label_field, ("int", "float"), ""),
        ):
            if name not in by_name:
                raise SchemaError(f"schema {self.name!r}: {role}={name!r} is not one of the declared fields "
                                  f"{sorted(by_name)}")
            if by_name[name].type not in allowed:
                raise SchemaError(f"schema {self.name!r}: {role} {name!r} must have type in {allowed}{why}, "
                                  f"got {by_name[name].type!r}")
            # The label may be optional: an impressions log (pipelines/serve/impressions.py) has none until the
            # outcome is joined. Every event needs its id and event time.
            if not by_name[name].required and role != "label_field":
                raise SchemaError(f"schema {self.name!r}: {role} {name!r} must be required")
        if isinstance(self.min_event_time_ms, bool) or not isinstance(self.min_event_time_ms, int) \
                or self.min_event_time_ms < 0:
            raise SchemaError(f"min_event_time_ms must be an int >= 0 (0 turns the guard off), "
                              f"got {self.min_event_time_ms!r}")
        if self.max_string_length < 1:
            raise SchemaError("max_string_length must be >= 1")
        if self.max_line_bytes < 64:
            raise SchemaError(f"max_line_bytes must be >= 64 (an event's JSON needs room), got {self.max_line_bytes}")

    @functools.cached_property
    def _parse_plan(self) -> Tuple[Tuple[FieldSpec, str, type], ...]:
        """The fields parse() types in its loop: all of them under epoch_ms (whose event time is an int
        like any other), the others but the event time under other formats (it is converted after)."""
        if self.event_time_format == "epoch_ms":
            return self._plan(self.fields)
        return self._untimed_plan

    @functools.cached_property
    def _converts_time(self) -> bool:
        return self.event_time_format != "epoch_ms"

    @functools.cached_property
    def _untimed_plan(self) -> Tuple[Tuple[FieldSpec, str, type], ...]:
        return self._plan(f for f in self.fields if f.name != self.event_time_field)

    @staticmethod
    def _plan(fields) -> Tuple[Tuple[FieldSpec, str, type], ...]:
        return tuple((f, f.name, {"int": int, "float": float, "string": str}[f.type]) for f in fields)

    def stored_type(self, field: FieldSpec) -> str:
        """The field's type in a parsed event, its tf.Example and the TFMD schema: the declared type, except
        the event time's, which parsing has made int epoch milliseconds whatever the producer wrote."""
        return "int" if field.name == self.event_time_field else field.type

    @property
    def stored_fields(self) -> Tuple[FieldSpec, ...]:
        """The fields as a parsed event holds them (see stored_type)."""
        return tuple(dataclasses.replace(f, type=self.stored_type(f)) if f.type != self.stored_type(f) else f
                     for f in self.fields)

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
            "event_time_format": self.event_time_format,
            "min_event_time_ms": self.min_event_time_ms,
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
                       max_line_bytes=data.get("max_line_bytes", DEFAULT_MAX_LINE_BYTES),
                       # A schema written before formats existed is epoch milliseconds.
                       event_time_format=data.get("event_time_format", "epoch_ms"),
                       min_event_time_ms=data.get("min_event_time_ms", DEFAULT_MIN_EVENT_TIME_MS))
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
        The event time is read in `event_time_format` and returned as int epoch
        milliseconds. `event_time_ms`, when given, is the event time (a Kafka
        record's timestamp, always milliseconds) and replaces whatever the payload
        holds in the event-time field.
        """
        length = getattr(line, "full_length", None) or len(line)
        if length > self.max_line_bytes:
            raise InvalidEvent(f"line of {length} bytes exceeds max_line_bytes={self.max_line_bytes}")
        raw = _load_json(line)
        if not isinstance(raw, dict):
            raise InvalidEvent(f"not a JSON object but {type(raw).__name__}")
        event: Dict[str, Any] = {}
        max_len = self.max_string_length
        for field, name, fast_type in (self._parse_plan if event_time_ms is None else self._untimed_plan):
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
                event[name] = self._coerce_time(value) if name == self.event_time_field else \
                    _coerce(field, value, max_len)
        time_field = self.event_time_field
        if event_time_ms is not None:
            event[time_field] = event_time_ms
        elif self._converts_time:
            event[time_field] = self._to_ms(raw.get(time_field))
        if event[time_field] < self.min_event_time_ms:
            self._too_early(event[time_field], from_record=event_time_ms is not None)
        return event

    # -- event time (off the common path: epoch_ms ints are typed in parse's loop) ---------------------------
    def _coerce_time(self, value: Any) -> int:
        """An epoch_ms event time that is not a plain in-range int: an integral float, or a reason."""
        if isinstance(value, str):
            hint = " (it looks like ISO-8601: declare event_time_format='iso8601')" \
                if _ISO_8601.match(value) else ""
            raise InvalidEvent(f"field {self.event_time_field!r}: event_time_format='epoch_ms' wants an integer "
                               f"of epoch milliseconds, got str {value!r:.60}{hint}")
        return _coerce(self.field_map[self.event_time_field], value, self.max_string_length)

    def _to_ms(self, value: Any) -> int:
        """The event time in epoch milliseconds, from a payload value in epoch_s or iso8601."""
        name, fmt = self.event_time_field, self.event_time_format
        if value is None:
            raise InvalidEvent(f"missing required field {name!r}")
        if fmt == "epoch_s":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidEvent(f"field {name!r}: event_time_format='epoch_s' wants a number of epoch seconds, "
                                   f"got {type(value).__name__} {value!r:.60}")
            if not math.isfinite(value):
                raise InvalidEvent(f"field {name!r}: event time {value} is not a finite number")
            if value < 0:
                raise InvalidEvent(f"negative event time {value!r:.30}")
            if value >= _EPOCH_S_LIMIT:
                raise InvalidEvent(f"field {name!r}: event time {value!r:.30} looks like epoch milliseconds, not "
                                   f"seconds (it would be after the year 5000): "
                                   "declare event_time_format='epoch_ms'")
            # round, not int(): 1767225600.123 * 1000 is 1767225600122.9998 in binary floating point.
            return round(value * 1000) if isinstance(value, float) else value * 1000
        if not isinstance(value, str):
            raise InvalidEvent(f"field {name!r}: event_time_format='iso8601' wants a string such as "
                               f"'2026-01-01T12:00:00.250+02:00', got {type(value).__name__} {value!r:.60}")
        return _iso8601_ms(name, value)

    def _too_early(self, t: int, from_record: bool) -> None:
        floor = self.min_event_time_ms
        if t < 0:
            raise InvalidEvent(f"negative event time {t}")
        where = f"({_utc(t)}) is before min_event_time_ms={floor} ({_utc(floor)})"
        if from_record:
            raise InvalidEvent(f"record timestamp {t} {where}; lower min_event_time_ms if that is really when "
                               "the events happened")
        if self.event_time_format == "epoch_ms":
            raise InvalidEvent(f"field {self.event_time_field!r}: event time {t} looks like epoch seconds, not "
                               f"milliseconds (as milliseconds it {where}): declare event_time_format='epoch_s', "
                               "or lower min_event_time_ms if the times are really that early")
        raise InvalidEvent(f"field {self.event_time_field!r}: event time {t} ms {where}; lower min_event_time_ms "
                           "if that is really when the events happened")


# An ISO-8601 date-time in the extended format: date, 'T' (or a space), hours and minutes, optional seconds
# and fraction, then the offset, which is required ('Z' or +hh:mm, +hhmm, +hh): a time without one names no
# instant (the producer's local time? UTC?), and guessing would shift every event by hours. ASCII digits only.
_ISO_8601 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
                       r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?", re.ASCII)
_EPOCH = datetime.datetime(1970, 1, 1)
_MS = datetime.timedelta(milliseconds=1)
# Epoch seconds at or above this (the year 5138) are milliseconds written under epoch_s.
_EPOCH_S_LIMIT = 10 ** 11


def _iso8601_ms(name: str, value: str) -> int:
    match = _ISO_8601.fullmatch(value)
    if match is None:
        raise InvalidEvent(f"field {name!r}: {value!r:.60} is not an ISO-8601 date-time; "
                           "event_time_format='iso8601' wants e.g. '2026-01-01T12:00:00.250+02:00' or "
                           "'2026-01-01T10:00:00Z'")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if zulu is None and sign is None:
        raise InvalidEvent(f"field {name!r}: ISO-8601 time {value!r:.60} has no timezone offset; "
                           "event_time_format='iso8601' needs an explicit one, 'Z' or e.g. '+02:00', "
                           "so the time names one instant")
    try:
        local = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError as e:
        raise InvalidEvent(f"field {name!r}: ISO-8601 time {value!r:.60} is not a valid date-time ({e})") from None
    offset_min = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m or 0) > 59:
            raise InvalidEvent(f"field {name!r}: ISO-8601 time {value!r:.60} has an invalid offset")
        offset_min = (int(off_h) * 60 + int(off_m or 0)) * (1 if sign == "+" else -1)
    # Milliseconds, truncated: a finer fraction is within the millisecond it starts.
    ms = (local - _EPOCH) // _MS + (int(fraction[:3].ljust(3, "0")) if fraction else 0)
    return ms - offset_min * 60_000


def _utc(ms: int) -> str:
    try:
        return (_EPOCH + ms * _MS).isoformat(timespec="milliseconds") + "Z"
    except OverflowError:
        return "out of range"


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
            FieldSpec("user_id", "string", feature="categorical", hash_buckets=65536),
            FieldSpec("ad_id", "string", feature="categorical", hash_buckets=16384),
            FieldSpec("ad_category", "string", feature="categorical", hash_buckets=64),
            FieldSpec("device", "string", feature="categorical", hash_buckets=16),
            FieldSpec("hour_of_day", "int", feature="categorical", hash_buckets=24),
            FieldSpec("price", "float", feature="numeric"),
            FieldSpec("clicked", "int"),
        ),
    )
