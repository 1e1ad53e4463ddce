"""`preprocessing_fn` for streams, built from the event schema, for stock TFX Transform.

Transform is given ``preprocessing_fn="transforms.stream.preprocessing_fn"`` by
dotted path (no module file, so no wheel is built per cycle) and a
``custom_config`` with the event schema and the `TransformConfig`::

    Transform(examples=..., schema=...,
              preprocessing_fn="transforms.stream.preprocessing_fn",
              custom_config=transforms.stream.custom_config(schema, transform_config))

Another stream needs another schema, not new code.

Warm-start safety: a warm-started model keeps its weights, so every input
must mean the same thing in every span.

* Categorical fields → ``tf.strings.to_hash_bucket_fast`` into a fixed number
  of buckets. **Safe**: an id hashes to the same row in every span, whatever
  the category frequencies, and a new id (the hot ad) gets a row without
  renumbering the others. Collisions are the price; size buckets for it.
  A frequency-ordered vocabulary (``tft.compute_and_apply_vocabulary``) is
  **not** safe and is not offered: it reorders rows whenever frequencies change.
* ``log_standardize`` (default for numbers): ``(log1p(max(x, 0)) - mean) / std``
  with a configured reference mean and std. **Safe**: constants, no analyzer.
* ``standardize``: ``(x - mean) / std`` with reference constants. **Safe**.
* ``bucketize``: fixed, configured boundaries. **Safe**.
* ``tft_z_score``: ``tft.scale_to_z_score``, an analyzer over the spans being
  transformed. **Not safe** on its own: the mean and variance move with every
  span, so the same input shifts under warm-started weights. Its one use is a
  deliberate re-fit; driftline records the transform fingerprint on every
  model, and a changed transform makes the next cycle cold-start rather than
  warm-start on shifted inputs. Because it runs an analyzer, the pipeline
  wires Transform's analyzer cache through for it.

Outputs: ``<field>_xf`` for every feature (int64 bucket ids for categorical
and bucketized fields, float32 for scaled numbers) and ``label`` (float32).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Mapping

import tensorflow as tf

from components.event_schema import EventSchema
from transforms.config import TransformConfig

LABEL_KEY = "label"
CUSTOM_CONFIG_SCHEMA = "event_schema"
CUSTOM_CONFIG_TRANSFORM = "transform"


def transformed_name(name: str) -> str:
    return f"{name}_xf"


def custom_config(schema: EventSchema, transform: TransformConfig) -> Dict[str, Any]:
    """What Transform passes to `preprocessing_fn`: plain JSON-able data."""
    transform.validate(schema)
    return {CUSTOM_CONFIG_SCHEMA: schema.to_dict(), CUSTOM_CONFIG_TRANSFORM: transform.to_dict()}


def transform_fingerprint(schema: EventSchema, transform: TransformConfig) -> str:
    """Identifies what the transform computes; equal fingerprints mean equal feature meaning.

    The transforms here are pure functions of the schema and the config (the
    analyzer mode aside, which is why it is flagged in the fingerprint).
    """
    payload = json.dumps({"fn": __name__ + ".preprocessing_fn", "config": custom_config(schema, transform)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def hash_buckets(schema: EventSchema, transform: TransformConfig) -> Dict[str, int]:
    """Bucket count of every categorical (and bucketized) transformed feature: the model's embedding sizes."""
    sizes = {transformed_name(f.name): f.hash_buckets or transform.default_hash_buckets
             for f in schema.feature_fields("categorical")}
    for f in schema.feature_fields("numeric"):
        spec = transform.for_field(f.name)
        if spec.mode == "bucketize":
            sizes[transformed_name(f.name)] = len(spec.boundaries) + 1
    return sizes


def numeric_features(schema: EventSchema, transform: TransformConfig):
    """Transformed names of the scaled (float) numeric features."""
    return [transformed_name(f.name) for f in schema.feature_fields("numeric")
            if transform.for_field(f.name).mode != "bucketize"]


def _dense(x, default):
    """Raw features arrive as (possibly sparse) [batch, 1]; flatten to [batch]."""
    if isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.to_dense(tf.sparse.reset_shape(x, [x.dense_shape[0], 1]), default_value=default)
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> Dict[str, Any]:
    import tensorflow_transform as tft

    schema = EventSchema.from_dict(custom_config[CUSTOM_CONFIG_SCHEMA])
    transform = TransformConfig.from_dict(custom_config[CUSTOM_CONFIG_TRANSFORM])
    outputs: Dict[str, Any] = {}
    for field in schema.feature_fields("categorical"):
        # The examples' type (an ISO-8601 event time is int ms in them), not the producer's.
        kind = schema.stored_type(field)
        default = "" if kind == "string" else 0
        x = _dense(inputs[field.name], default)
        if kind != "string":
            x = tf.strings.as_string(x)
        outputs[transformed_name(field.name)] = tf.strings.to_hash_bucket_fast(
            x, field.hash_buckets or transform.default_hash_buckets)
    for field in schema.feature_fields("numeric"):
        spec = transform.for_field(field.name)
        x = tf.cast(_dense(inputs[field.name], 0), tf.float32)
        if spec.mode == "log_standardize":
            y = (tf.math.log1p(tf.maximum(x, 0.0)) - spec.mean) / spec.std
        elif spec.mode == "standardize":
            y = (x - spec.mean) / spec.std
        elif spec.mode == "bucketize":
            y = tf.raw_ops.Bucketize(input=x, boundaries=list(spec.boundaries))
            y = tf.cast(y, tf.int64)
        else:  # tft_z_score
            y = tft.scale_to_z_score(x)
        outputs[transformed_name(field.name)] = y
    outputs[LABEL_KEY] = tf.cast(_dense(inputs[schema.label_field], 0), tf.float32)
    return outputs
