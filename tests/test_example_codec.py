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
