import json

import pytest

from components.event_schema import EventSchema, FieldSpec, InvalidEvent, SchemaError, ad_click_schema

GOOD = {"event_id": "e1", "event_time": 1767225600000, "user_id": "u1", "ad_id": "a1", "ad_category": "c1",
        "device": "mobile", "hour_of_day": 3, "price": 1.5, "clicked": 1}


def line(**overrides):
    event = dict(GOOD, **overrides)
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_parses_a_valid_event_with_types():
    event = ad_click_schema().parse(line())
    assert event == GOOD
    assert isinstance(event["price"], float) and isinstance(event["clicked"], int)


def test_integral_float_is_accepted_as_int_and_int_as_float():
    event = ad_click_schema().parse(line(event_time=1767225600000.0, price=2))
    assert event["event_time"] == 1767225600000 and isinstance(event["event_time"], int)
    assert event["price"] == 2.0 and isinstance(event["price"], float)


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (line(user_id=...), "missing required field 'user_id'"),
    (line(user_id=None), "missing required field 'user_id'"),
    (line(clicked="yes"), "expected int"),
    (line(clicked=True), "expected int"),
    (line(price="1.5"), "expected float"),
    (line(hour_of_day=2.5), "expected int"),
    (line(device=7), "expected string"),
    (line(user_id="x" * 1025), "exceeds max_string_length"),
    (line(event_time=-5), "negative event time"),
    (b'{"event_id": "e", "price": NaN}', "missing required field"),
    (line().replace(b'"price": 1.5', b'"price": NaN'), "not a finite number"),
    (line().replace(b'"price": 1.5', b'"price": Infinity'), "not a finite number"),
    (b"\xff\xfe garbage", "not JSON"),
    # Valid JSON that a tf.Example cannot hold: dead letters, not a failed ingest run.
    (line(price=1e39), "beyond float32's range"),
    (line(price=-1e39), "beyond float32's range"),
    (line().replace(b'"u1"', b'"\\ud800"'), "not valid Unicode"),
    (line(hour_of_day=2 ** 63), "out of int64 range"),
    (line(hour_of_day=1e19), "out of int64 range"),  # an integral float is an int, and must fit too
    (line(user_id="ü" * 1025), "exceeds max_string_length"),
])
def test_invalid_events_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(InvalidEvent, match=reason):
        ad_click_schema().parse(raw)


TRICKY_LINES = [
    line(), line(price=0.1), line(price=1e-320), line(price=3.4028234663852886e38), line(event_time=2 ** 63 - 1),
    line(user_id="ü日\u2028"), b"\xef\xbb\xbf" + line(), line().replace(b'"u1"', b'"\\ud83d\\ude00"'),
    line().replace(b'{', b'{"price": 9, ', 1), b" " + line() + b" \r", line(hour_of_day=2 ** 64), line(hour_of_day=-(2 ** 70)), line(price=2 ** 70),
    line().replace(b'"price": 1.5', b'"price": -Infinity'), line().replace(b'"u1"', b'"\\udc00"'),
    line().replace(b'"u1"', b'"\xc3\x28"'), line() + b"x", line().replace(b"1.5", b"1.5e3"), b'{"a": 01}',
    line().replace(b'"u1"', b'"a\tb"'), line().replace(b'"u1"', b'"a\\u0000b"'), b"", b"null",
]


@pytest.mark.parametrize("raw", TRICKY_LINES)
def test_the_fast_json_parser_accepts_and_refuses_exactly_what_json_loads_does(raw, monkeypatch):
    # EventSchema.parse tries orjson first: the outcome (the event, or the reason) must be json.loads's.
    from components import event_schema

    def outcome():
        try:
            return ("event", ad_click_schema().parse(raw))
        except InvalidEvent as e:
            return ("refused", str(e))

    fast = outcome()

    def refuse(_):
        raise event_schema.orjson.JSONDecodeError("forced", "", 0)

    monkeypatch.setattr(event_schema.orjson, "loads", refuse)
    assert fast == outcome()


def test_values_at_the_edges_of_their_types_are_kept_exactly():
    event = ad_click_schema().parse(line(hour_of_day=-(2 ** 63), event_time=2 ** 63 - 1, price=-3.4e38,
                                         user_id="ü日" * 512, device=""))
    assert event["hour_of_day"] == -(2 ** 63) and event["event_time"] == 2 ** 63 - 1
    assert event["price"] == -3.4e38 and event["user_id"] == "ü日" * 512 and event["device"] == ""


def test_extra_fields_are_ignored_and_optional_fields_may_be_missing():
    schema = EventSchema(name="s", id_field="id", event_time_field="t", label_field="y",
                         fields=(FieldSpec("id", "int"), FieldSpec("t", "int"), FieldSpec("y", "float"),
                                 FieldSpec("note", "string", required=False)))
    assert schema.parse(b'{"id": 1, "t": 1767225600000, "y": 0.5, "extra": [1]}') == {
        "id": 1, "t": 1767225600000, "y": 0.5, "note": None}


def test_json_round_trip():
    schema = ad_click_schema()
    assert EventSchema.from_json(schema.to_json()) == schema
    assert [f.name for f in schema.feature_fields("categorical")] == [
        "user_id", "ad_id", "ad_category", "device", "hour_of_day"]
    assert [f.name for f in schema.feature_fields("numeric")] == ["price"]


@pytest.mark.parametrize("change, message", [
    (dict(id_field="nope"), "id_field='nope' is not one of the declared fields"),
    (dict(event_time_field="price"), "event_time_field 'price' must have type"),
    (dict(label_field="device"), "label_field 'device' must have type"),
    (dict(fields=()), "declares no fields"),
])
def test_schema_errors_name_the_problem(change, message):
    base = ad_click_schema().to_dict()
    base.update({k: v for k, v in change.items()})
    with pytest.raises(SchemaError, match=message):
        EventSchema.from_dict(base)


def test_field_spec_errors():
    with pytest.raises(SchemaError, match="type must be one of"):
        FieldSpec("x", "double").validate()
    with pytest.raises(SchemaError, match="string field cannot be a numeric feature"):
        FieldSpec("x", "string", feature="numeric").validate()
    with pytest.raises(SchemaError, match="declared twice"):
        EventSchema(name="s", id_field="id", event_time_field="id", label_field="id",
                    fields=(FieldSpec("id", "int"), FieldSpec("id", "int")))
    with pytest.raises(SchemaError, match="missing the key 'fields'"):
        EventSchema.from_dict({"name": "s"})
    with pytest.raises(SchemaError, match="not valid JSON"):
        EventSchema.from_json("{")


# -- event time formats (issue 23) ------------------------------------------------------------------------------

# 2026-01-01T00:00:00Z in epoch milliseconds, by hand: 56 years of days (14 of them leap) since 1970.
JAN_1_2026_MS = (56 * 365 + 14) * 86_400_000
assert JAN_1_2026_MS == 1767225600000


def timed_schema(fmt, time_type, **kw):
    return EventSchema(name="plays", id_field="id", event_time_field="at", label_field="y",
                       fields=(FieldSpec("id", "string"), FieldSpec("at", time_type), FieldSpec("y", "int"),
                               FieldSpec("genre", "string", feature="categorical")),
                       event_time_format=fmt, **kw)


def timed(at, **extra) -> bytes:
    return json.dumps(dict({"id": "p1", "at": at, "y": 1, "genre": "jazz"}, **extra)).encode()


@pytest.mark.parametrize("fmt, time_type, value, ms", [
    ("epoch_ms", "int", 1767225600123, JAN_1_2026_MS + 123),
    ("epoch_s", "int", 1767225600, JAN_1_2026_MS),
    ("epoch_s", "float", 1767225600, JAN_1_2026_MS),          # an int where a float is declared
    ("epoch_s", "float", 1767225600.123, JAN_1_2026_MS + 123),  # 1767225600122.9998 as a binary product
    ("epoch_s", "int", 1767225600.5, JAN_1_2026_MS + 500),     # the producer's float, whatever was declared
    ("iso8601", "string", "2026-01-01T00:00:00Z", JAN_1_2026_MS),
    ("iso8601", "string", "2026-01-01T00:00:00.000z", JAN_1_2026_MS),
    ("iso8601", "string", "2026-01-01T02:00:00.250+02:00", JAN_1_2026_MS + 250),
    ("iso8601", "string", "2026-01-01T02:00:00.25+0200", JAN_1_2026_MS + 250),
    ("iso8601", "string", "2026-01-01T02:00:00,25+02", JAN_1_2026_MS + 250),
    ("iso8601", "string", "2025-12-31T18:30:00-05:30", JAN_1_2026_MS),
    ("iso8601", "string", "2025-12-31 23:59:59.999999999Z", JAN_1_2026_MS - 1),  # truncated to its millisecond
    ("iso8601", "string", "2026-01-01T00:07Z", JAN_1_2026_MS + 7 * 60_000),       # seconds are optional
    ("iso8601", "string", "2024-02-29T12:00:00.5+00:00", JAN_1_2026_MS - (366 + 365 - 59) * 86_400_000 + 43_200_500),
])
def test_each_event_time_format_parses_to_int_epoch_milliseconds(fmt, time_type, value, ms):
    event = timed_schema(fmt, time_type).parse(timed(value))
    assert event["at"] == ms and type(event["at"]) is int
    assert event == {"id": "p1", "at": ms, "y": 1, "genre": "jazz"}


@pytest.mark.parametrize("fmt, time_type, value, reason", [
    ("iso8601", "string", "2026-01-01T02:00:00", r"has no timezone offset; event_time_format='iso8601' needs an "
                                                 r"explicit one, 'Z' or e\.g\. '\+02:00'"),
    ("iso8601", "string", "2026-01-01T02:00:00.250", "has no timezone offset"),
    ("iso8601", "string", "2026-01-01", "is not an ISO-8601 date-time; event_time_format='iso8601' wants"),
    ("iso8601", "string", "01/01/2026 00:00 UTC", "is not an ISO-8601 date-time"),
    ("iso8601", "string", "2026-01-01T00:00:00Z trailing", "is not an ISO-8601 date-time"),
    ("iso8601", "string", "２０２６-01-01T00:00:00Z", "is not an ISO-8601 date-time"),  # full-width digits
    ("iso8601", "string", "2026-02-30T00:00:00Z", "not a valid date-time"),
    ("iso8601", "string", "2026-01-01T24:00:00Z", "not a valid date-time"),
    ("iso8601", "string", "2026-01-01T00:00:00+25:00", "invalid offset"),
    ("iso8601", "string", "1969-12-31T23:59:59Z", "negative event time"),
    ("iso8601", "string", "1971-06-01T00:00:00Z", r"before min_event_time_ms=100000000000 \(1973-03-03"),
    ("iso8601", "string", 1767225600000, "event_time_format='iso8601' wants a string .* got int 1767225600000"),
    ("iso8601", "string", 1767225600.5, "event_time_format='iso8601' wants a string .* got float"),
    ("iso8601", "string", None, "missing required field 'at'"),
    ("epoch_ms", "int", "1767225600000", "event_time_format='epoch_ms' wants an integer of epoch milliseconds, "
                                         "got str '1767225600000'$"),
    ("epoch_ms", "int", "2026-01-01T00:00:00Z", r"got str .*\(it looks like ISO-8601: declare "
                                                r"event_time_format='iso8601'\)"),
    ("epoch_ms", "int", 1767225600, r"event time 1767225600 looks like epoch seconds, not milliseconds .*"
                                    r"declare event_time_format='epoch_s'"),
    ("epoch_ms", "int", 0, "looks like epoch seconds"),
    ("epoch_ms", "int", True, "expected int"),
    ("epoch_s", "float", "1767225600", "event_time_format='epoch_s' wants a number of epoch seconds, got str"),
    ("epoch_s", "float", False, "event_time_format='epoch_s' wants a number"),
    ("epoch_s", "int", 1767225600000, r"looks like epoch milliseconds, not seconds .* "
                                      r"declare event_time_format='epoch_ms'"),
    ("epoch_s", "float", -1.5, "negative event time"),
    ("epoch_s", "float", 3, "before min_event_time_ms"),
    ("epoch_s", "float", None, "missing required field 'at'"),
])
def test_an_event_time_that_does_not_fit_its_format_is_refused_with_the_reason(fmt, time_type, value, reason):
    with pytest.raises(InvalidEvent, match=reason):
        timed_schema(fmt, time_type).parse(timed(value))


def test_an_epoch_seconds_stream_under_the_default_format_is_refused_not_put_in_1970():
    # The ad schema (epoch_ms) fed epoch seconds: every such event used to become a 1970 date.
    with pytest.raises(InvalidEvent, match="looks like epoch seconds.*event_time_format='epoch_s'"):
        ad_click_schema().parse(line(event_time=1767225600))
    with pytest.raises(InvalidEvent, match="looks like epoch seconds"):
        ad_click_schema().parse(line(event_time=1767225600.0))
    # A stream whose clock really starts near 0 says so, and parses.
    synthetic = EventSchema.from_dict(dict(ad_click_schema().to_dict(), min_event_time_ms=0))
    assert synthetic.parse(line(event_time=0))["event_time"] == 0
    with pytest.raises(InvalidEvent, match="negative event time -1"):
        synthetic.parse(line(event_time=-1))


def test_a_record_timestamp_is_the_event_time_in_milliseconds_whatever_the_payload_format():
    iso = timed_schema("iso8601", "string")
    # The payload's own time is neither read nor required when the record's timestamp is the event time.
    assert iso.parse(b'{"id": "p", "y": 0, "genre": "pop"}', JAN_1_2026_MS + 5)["at"] == JAN_1_2026_MS + 5
    assert iso.parse(timed("not a time"), JAN_1_2026_MS)["at"] == JAN_1_2026_MS
    assert timed_schema("epoch_s", "float").parse(timed(1.0), JAN_1_2026_MS)["at"] == JAN_1_2026_MS
    assert ad_click_schema().parse(line(event_time="x"), JAN_1_2026_MS)["event_time"] == JAN_1_2026_MS
    with pytest.raises(InvalidEvent, match="record timestamp 1000 .* before min_event_time_ms"):
        iso.parse(timed("2026-01-01T00:00:00Z"), 1000)


def test_event_time_format_and_floor_round_trip_and_old_schemas_load_as_epoch_ms():
    for schema in (timed_schema("iso8601", "string"), timed_schema("epoch_s", "float", min_event_time_ms=0),
                   ad_click_schema()):
        assert EventSchema.from_json(schema.to_json()) == schema
    back = EventSchema.from_json(timed_schema("iso8601", "string", min_event_time_ms=5).to_json())
    assert (back.event_time_format, back.min_event_time_ms) == ("iso8601", 5)
    # A schema JSON written before formats existed (the key is absent): epoch milliseconds, guarded.
    old = ad_click_schema().to_dict()
    del old["event_time_format"], old["min_event_time_ms"]
    loaded = EventSchema.from_dict(old)
    assert (loaded.event_time_format, loaded.min_event_time_ms) == ("epoch_ms", 10 ** 11)
    assert loaded == ad_click_schema()


@pytest.mark.parametrize("fmt, time_type, extra, message", [
    ("epoch_millis", "int", {}, r"event_time_format must be one of \('epoch_ms', 'epoch_s', 'iso8601'\)"),
    ("epoch_ms", "string", {}, r"event_time_field 'at' must have type in \('int',\) under "
                               r"event_time_format='epoch_ms' .*iso8601 string"),
    ("iso8601", "int", {}, r"must have type in \('string',\) under event_time_format='iso8601'"),
    ("epoch_s", "string", {}, r"must have type in \('int', 'float'\) under event_time_format='epoch_s'"),
    ("epoch_ms", "int", {"min_event_time_ms": -1}, "min_event_time_ms must be an int >= 0"),
    ("epoch_ms", "int", {"min_event_time_ms": 1.5}, "min_event_time_ms must be an int >= 0"),
])
def test_event_time_schema_errors_name_the_setting(fmt, time_type, extra, message):
    with pytest.raises(SchemaError, match=message):
        timed_schema(fmt, time_type, **extra)


def test_the_stored_type_of_the_event_time_is_int_whatever_the_producer_writes():
    iso = timed_schema("iso8601", "string")
    assert [(f.name, f.type) for f in iso.fields] == [("id", "string"), ("at", "string"), ("y", "int"),
                                                      ("genre", "string")]
    assert [(f.name, f.type) for f in iso.stored_fields] == [("id", "string"), ("at", "int"), ("y", "int"),
                                                             ("genre", "string")]
    assert iso.stored_type(iso.field_map["at"]) == "int" and iso.stored_type(iso.field_map["genre"]) == "string"
    assert ad_click_schema().stored_fields == ad_click_schema().fields


def test_the_tfmd_schema_declares_the_event_time_int64_for_every_format():
    from tensorflow_metadata.proto.v0 import schema_pb2

    from transforms.schema import tfmd_schema

    for schema in (timed_schema("iso8601", "string"), timed_schema("epoch_s", "float"), ad_click_schema()):
        types = {f.name: f.type for f in tfmd_schema(schema).feature}
        assert types[schema.event_time_field] == schema_pb2.INT, schema.event_time_format


def test_an_iso8601_stream_is_cut_into_spans_by_its_instants(tmp_path):
    """The real reader, parser and Beam graph (ingest.run_ingest, DirectRunner) over a log of ISO-8601
    times in several offsets: each event lands in the span of its UTC instant, its example holds int64
    epoch ms, and the lines that do not fit the format are dead letters with their reasons."""
    import glob
    import os

    import apache_beam as beam
    import tensorflow as tf

    from components.event_log import EventLogWriter
    from components.streaming_example_gen import ingest, windowing
    from components.streaming_example_gen.sources import EventLogSource

    span_ms = 10 * 60_000
    schema = timed_schema("iso8601", "string")
    offsets = [("Z", 0), ("+02:00", 120), ("-05:30", -330), ("+0545", 345)]
    truth, lines = {}, []
    for i in range(120):  # one event every 15 s for 30 minutes: spans 0, 1 and 2 of the day
        ms = JAN_1_2026_MS + i * 15_000 + 250
        suffix, minutes = offsets[i % len(offsets)]
        # Local wall time = UTC + offset, written by hand (not by the code under test).
        local_ms = ms + minutes * 60_000
        day_ms = local_ms - JAN_1_2026_MS
        day, rest = divmod(day_ms, 86_400_000)
        date = "2026-01-01" if day == 0 else "2025-12-31"  # these offsets move the wall clock by under a day
        h, rest = divmod(rest, 3_600_000)
        m, rest = divmod(rest, 60_000)
        wall = f"{date}T{h:02d}:{m:02d}:{rest // 1000:02d}.{rest % 1000:03d}{suffix}"
        truth[f"p{i}"] = ms
        lines.append(json.dumps({"id": f"p{i}", "at": wall, "y": i % 2, "genre": "jazz"}).encode())
    bad = {"local": "2026-01-01T00:03:00", "number": JAN_1_2026_MS + 180_000}
    lines.insert(5, json.dumps({"id": "local", "at": bad["local"], "y": 1, "genre": "x"}).encode())
    lines.insert(9, json.dumps({"id": "number", "at": bad["number"], "y": 1, "genre": "x"}).encode())
    # Closes spans 0..2: its own span (3) stays open.
    lines.append(json.dumps({"id": "closer", "at": "2026-01-01T00:30:00Z", "y": 0, "genre": "x"}).encode())
    log_dir = str(tmp_path / "events")
    with EventLogWriter(log_dir) as writer:
        writer.write_lines(lines)

    os.makedirs(tmp_path / "work")
    run = ingest.run_ingest(beam.Pipeline, source=EventLogSource(log_dir, chunk_bytes=4096), schema=schema,
                            window=windowing.Window(span_ms, 0, 0.2), state=windowing.CommittedState(),
                            output_root=str(tmp_path / "out"), work_dir=str(tmp_path / "work"),
                            now_ms=JAN_1_2026_MS + 86_400_000)
    first_span = JAN_1_2026_MS // span_ms
    assert run.result.decision.emitted_spans == {first_span, first_span + 1, first_span + 2}
    published, dead = {}, {}
    for span in run.result.decision.emitted_spans:
        uri = ingest.span_dir(str(tmp_path / "out"), span)
        for path in glob.glob(os.path.join(uri, "Split-*", "*.tfrecord.gz")):
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                feature = tf.train.Example.FromString(record.numpy()).features.feature
                published[feature["id"].bytes_list.value[0].decode()] = (span, list(feature["at"].int64_list.value))
        for path in glob.glob(os.path.join(uri, ingest.DEAD_LETTER_DIR, "*.jsonl")):
            for row in map(json.loads, open(path)):
                dead[json.loads(row["line"])["id"]] = row["reason"]
    assert published == {eid: (ms // span_ms, [ms]) for eid, ms in truth.items()}
    assert {s for s, _ in published.values()} == {first_span, first_span + 1, first_span + 2}
    assert set(dead) == {"local", "number"}
    assert "has no timezone offset" in dead["local"] and "wants a string" in dead["number"]
