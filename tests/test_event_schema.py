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
    assert schema.parse(b'{"id": 1, "t": 2, "y": 0.5, "extra": [1]}') == {"id": 1, "t": 2, "y": 0.5, "note": None}


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
