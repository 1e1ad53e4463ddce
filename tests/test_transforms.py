"""The stream transforms, run through TFT's real graph (no Beam), and the derived TFMD schema."""
import numpy as np
import pytest
import tensorflow as tf

from components.event_schema import ad_click_schema
from pipelines.config import ConfigError, NumericTransform, TransformConfig
from transforms import stream
from tensorflow_metadata.proto.v0 import schema_pb2

from transforms.schema import tfmd_schema


def run_fn(events, transform=TransformConfig()):
    """Applies preprocessing_fn eagerly: analyzer-free transforms need no Beam pass."""
    schema = ad_click_schema()
    config = stream.custom_config(schema, transform)
    inputs = {f.name: tf.constant([[e[f.name]] for e in events]) for f in schema.fields}
    out = stream.preprocessing_fn(inputs, config)
    return [{k: v.numpy()[i].item() for k, v in out.items()} for i in range(len(events))]


def run_with_analyzers(events, transform):
    """The full TFT analyze-and-transform on Beam, for transforms that use analyzers."""
    import tempfile

    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata

    schema = ad_click_schema()
    config = stream.custom_config(schema, transform)
    metadata = dataset_metadata.DatasetMetadata(tfmd_schema(schema))
    # Required fields have shape [1] in the TFMD schema: each value is a one-element list.
    instances = [{k: [v.encode() if isinstance(v, str) else v] for k, v in e.items()} for e in events]
    with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
        (out, _), _ = ((instances, metadata)
                       | tft_beam.AnalyzeAndTransformDataset(lambda i: stream.preprocessing_fn(i, config)))
    return out


def event(**kw):
    base = dict(event_id="e", event_time=1, user_id="u1", ad_id="a1", ad_category="c1", device="mobile",
                hour_of_day=3, price=1.0, clicked=1)
    base.update(kw)
    return base


def test_hash_ids_do_not_depend_on_which_other_ids_are_in_the_span():
    span_a = run_fn([event(ad_id="a1"), event(ad_id="a2")] + [event(ad_id="a3")] * 5)
    span_b = run_fn([event(ad_id="a3"), event(ad_id="hot")] * 4 + [event(ad_id="a1")])
    assert span_a[0]["ad_id_xf"] == span_b[-1]["ad_id_xf"]  # a1, rare then frequent
    assert span_a[2]["ad_id_xf"] == span_b[0]["ad_id_xf"]  # a3
    assert span_b[1]["ad_id_xf"] != span_b[0]["ad_id_xf"]
    assert 0 <= span_a[0]["ad_id_xf"] < ad_click_schema().field_map["ad_id"].hash_buckets
    # Int categorical fields hash their decimal string.
    assert run_fn([event(hour_of_day=3)])[0]["hour_of_day_xf"] == run_fn([event(hour_of_day=3)])[0]["hour_of_day_xf"]
    assert run_fn([event(hour_of_day=3)])[0]["hour_of_day_xf"] != run_fn([event(hour_of_day=4)])[0]["hour_of_day_xf"]


def test_numeric_transforms_use_reference_constants_not_span_statistics():
    cheap = run_fn([event(price=1.0)] * 3)
    mixed = run_fn([event(price=1.0), event(price=50.0), event(price=0.1)])
    assert cheap[0]["price_xf"] == pytest.approx(mixed[0]["price_xf"])
    assert cheap[0]["price_xf"] == pytest.approx((np.log1p(1.0) - 0.74) / 0.32, rel=1e-5)
    assert mixed[0]["label"] == 1.0


def test_bucketize_and_z_score_modes():
    bucket = TransformConfig(numeric={"price": NumericTransform(mode="bucketize", boundaries=(1.0, 5.0))})
    out = run_fn([event(price=0.5), event(price=2.0), event(price=9.0)], bucket)
    assert [r["price_xf"] for r in out] == [0, 1, 2]
    z = run_with_analyzers([event(price=1.0), event(price=3.0)],
                           TransformConfig(numeric={"price": NumericTransform("tft_z_score")}))
    assert [r["price_xf"] for r in z] == pytest.approx([-1.0, 1.0])


def test_fingerprint_changes_with_the_transform_and_hash_sizes_follow_the_schema():
    schema = ad_click_schema()
    base = stream.transform_fingerprint(schema, TransformConfig())
    assert base == stream.transform_fingerprint(schema, TransformConfig())
    assert base != stream.transform_fingerprint(schema, TransformConfig(default_hash_buckets=7))
    assert stream.hash_buckets(schema, TransformConfig())["ad_id_xf"] == 16384
    assert stream.numeric_features(schema, TransformConfig()) == ["price_xf"]


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="not a numeric feature"):
        TransformConfig(numeric={"device": NumericTransform()}).validate(ad_click_schema())
    with pytest.raises(ConfigError, match="sorted, non-empty boundaries"):
        TransformConfig(numeric={"price": NumericTransform("bucketize", boundaries=(3.0, 1.0))}).validate(ad_click_schema())


def test_tfmd_schema_matches_the_event_schema():
    s = tfmd_schema(ad_click_schema())
    assert {f.name: f.type for f in s.feature}["price"] == schema_pb2.FLOAT
    assert all(f.presence.min_fraction == 1.0 for f in s.feature)


def test_an_iso8601_event_time_reaches_the_transforms_as_int_milliseconds():
    # Declared as the producer's string, but the examples (and so the transform's inputs) hold int64 ms:
    # the TFMD schema says INT, and a categorical event time hashes the decimal string of its ms.
    from components.event_schema import EventSchema, FieldSpec

    schema = EventSchema(name="plays", id_field="id", event_time_field="at", label_field="y",
                         event_time_format="iso8601",
                         fields=(FieldSpec("id", "string"), FieldSpec("y", "int"),
                                 FieldSpec("at", "string", feature="categorical", hash_buckets=7)))
    assert {f.name: f.type for f in tfmd_schema(schema).feature}["at"] == schema_pb2.INT
    events = [schema.parse(b'{"id": "a", "y": 1, "at": "2026-01-01T00:00:00Z"}'),
              schema.parse(b'{"id": "b", "y": 0, "at": "2026-01-01T01:00:00.5+01:00"}')]
    inputs = {name: tf.constant([[e[name]] for e in events]) for name in ("id", "y", "at")}
    assert inputs["at"].dtype == tf.int64
    out = stream.preprocessing_fn(inputs, stream.custom_config(schema, TransformConfig(numeric={})))
    expected = tf.strings.to_hash_bucket_fast(["1767225600000", "1767225600500"], 7).numpy().tolist()
    assert out["at_xf"].numpy().tolist() == expected
