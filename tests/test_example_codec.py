import tensorflow as tf

from components.event_schema import EventSchema, FieldSpec, ad_click_schema
from components.streaming_example_gen.example_codec import ExampleEncoder


def test_encoded_bytes_parse_back_with_tensorflow():
    event = {"event_id": "e-1", "event_time": 1767225600123, "user_id": "ü123", "ad_id": "a45",
             "ad_category": "c3", "device": "mobile", "hour_of_day": 0, "price": 1.25, "clicked": 1}
    example = tf.train.Example.FromString(ExampleEncoder(ad_click_schema()).encode(event))
    f = example.features.feature
    assert f["event_id"].bytes_list.value == [b"e-1"]
    assert f["user_id"].bytes_list.value == ["ü123".encode()]
    assert f["event_time"].int64_list.value == [1767225600123]
    assert f["hour_of_day"].int64_list.value == [0]
    assert f["price"].float_list.value == [1.25]
    assert set(f.keys()) == {field.name for field in ad_click_schema().fields}


def test_negative_and_large_ints_and_missing_optional_fields():
    schema = EventSchema(name="s", id_field="id", event_time_field="t", label_field="y",
                         fields=(FieldSpec("id", "int"), FieldSpec("t", "int"), FieldSpec("y", "float"),
                                 FieldSpec("opt", "string", required=False)))
    encoder = ExampleEncoder(schema)
    for value in (-1, -(2 ** 63), 2 ** 63 - 1, 300):
        event = {"id": value, "t": 5, "y": -0.5, "opt": None}
        parsed = tf.train.Example.FromString(encoder.encode(event))
        assert parsed.features.feature["id"].int64_list.value == [value]
        assert "opt" not in parsed.features.feature
    # The same bytes as TensorFlow's own serializer (map order aside): compare parsed protos.
    event = {"id": 7, "t": 5, "y": 0.5, "opt": "x"}
    reference = tf.train.Example(features=tf.train.Features(feature={
        "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
        "t": tf.train.Feature(int64_list=tf.train.Int64List(value=[5])),
        "y": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
        "opt": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
    }))
    assert tf.train.Example.FromString(encoder.encode(event)) == reference


def test_tf_parse_example_reads_a_batch():
    encoder = ExampleEncoder(ad_click_schema())
    events = [{"event_id": f"e{i}", "event_time": i, "user_id": "u", "ad_id": "a", "ad_category": "c",
               "device": "d", "hour_of_day": i % 24, "price": float(i), "clicked": i % 2} for i in range(5)]
    parsed = tf.io.parse_example([encoder.encode(e) for e in events], {
        "price": tf.io.FixedLenFeature([], tf.float32), "clicked": tf.io.FixedLenFeature([], tf.int64)})
    assert parsed["price"].numpy().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert parsed["clicked"].numpy().tolist() == [0, 1, 0, 1, 0]


def _mixed_events():
    # Every field type at its edges, unicode, empty strings, and events that miss an optional field.
    events = []
    for i, (value, opt) in enumerate([(-1, "x"), (-(2 ** 63), None), (2 ** 63 - 1, "ü"), (300, ""),
                                      (0, "日本"), (127, None), (128, "y" * 300)]):
        events.append({"id": value, "t": i, "y": [-0.5, 1e-30, 3.4e38, -3.4e38, 0.0, 1.25, 7.0][i], "opt": opt})
    return events


def _two_field_schema():
    return EventSchema(name="s", id_field="id", event_time_field="t", label_field="y",
                       fields=(FieldSpec("id", "int"), FieldSpec("t", "int"), FieldSpec("y", "float"),
                               FieldSpec("opt", "string", required=False)))


def test_encode_many_gives_the_protos_encode_gives_in_order():
    encoder = ExampleEncoder(_two_field_schema())
    events = _mixed_events()
    many = encoder.encode_many(events)
    assert len(many) == len(events)
    for event, encoded in zip(events, many):
        parsed = tf.train.Example.FromString(encoded)
        assert parsed == tf.train.Example.FromString(encoder.encode(event))
        assert parsed.features.feature["id"].int64_list.value == [event["id"]]
        assert parsed.features.feature["t"].int64_list.value == [event["t"]]
        # A missing optional field is left out, not written empty.
        assert ("opt" in parsed.features.feature) == (event["opt"] is not None)
    assert encoder.encode_many([]) == []


def test_encode_many_on_the_default_schema_parses_back_with_tensorflow():
    encoder = ExampleEncoder(ad_click_schema())
    events = [{"event_id": f"e{i}", "event_time": 1767225600000 + i, "user_id": f"ü{i % 7}", "ad_id": "a",
               "ad_category": "c", "device": "d", "hour_of_day": i % 24, "price": i / 3, "clicked": i % 2}
              for i in range(1000)]
    parsed = tf.io.parse_example(encoder.encode_many(events), {
        "event_id": tf.io.FixedLenFeature([], tf.string), "user_id": tf.io.FixedLenFeature([], tf.string),
        "event_time": tf.io.FixedLenFeature([], tf.int64), "price": tf.io.FixedLenFeature([], tf.float32),
        "clicked": tf.io.FixedLenFeature([], tf.int64)})
    assert [v.decode() for v in parsed["event_id"].numpy()] == [e["event_id"] for e in events]
    assert [v.decode() for v in parsed["user_id"].numpy()] == [e["user_id"] for e in events]
    assert parsed["event_time"].numpy().tolist() == [e["event_time"] for e in events]
    assert parsed["price"].numpy().tolist() == [float(tf.constant(e["price"], tf.float32)) for e in events]
    assert parsed["clicked"].numpy().tolist() == [e["clicked"] for e in events]


def test_an_iso8601_or_epoch_seconds_event_time_is_written_as_int64_milliseconds():
    # The producer writes a string (or float seconds); the parsed event and so its example hold int ms.
    for fmt, time_type, written in (("iso8601", "string", "2026-01-01T02:00:00.250+02:00"),
                                    ("epoch_s", "float", 1767225600.25)):
        schema = EventSchema(name="plays", id_field="id", event_time_field="at", label_field="y",
                             fields=(FieldSpec("id", "string"), FieldSpec("at", time_type), FieldSpec("y", "int"),
                                     FieldSpec("note", "string", required=False)),
                             event_time_format=fmt)
        encoder = ExampleEncoder(schema)
        events = [schema.parse(f'{{"id": "p{i}", "at": {written!r}, "y": 1{note}}}'.replace("'", '"').encode())
                  for i, note in enumerate(("", ', "note": "n"'))]
        # Both encoders: encode_many writes the complete event in C++, the one missing `note` in Python.
        parsed = tf.io.parse_example(encoder.encode_many(events), {"at": tf.io.FixedLenFeature([], tf.int64)})
        assert parsed["at"].numpy().tolist() == [1767225600250, 1767225600250], fmt
