"""The serving SavedModel's second signature: raw feature tensors in, the transform graph inside.

`serving_default` takes serialized `tf.Example`s, which is what TF Serving's
classic clients and TFMA send. Building and parsing those examples was most
of the cost of a request, so the exported model also carries
`RAW_SIGNATURE`: one `[batch]` tensor per raw event field (every field of
the transform's raw feature spec except the label), through the same
`tft_output.transform_features_layer()` and the same model. Both signatures
run one transform graph, so they cannot disagree, and neither can training
and serving (tests/test_serve_signature.py compares them on real events).

Only TensorFlow is imported here: the model modules (`pipelines.ads_model`,
`pipelines.music_model`) call it at export time.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping

import tensorflow as tf

# The signature name; the server (pipelines/serve/model_store.py) calls it.
RAW_SIGNATURE = "serving_raw"


def raw_input_spec(tft_output, raw_label_key: str) -> Dict[str, Any]:
    """The raw feature spec a request carries: the transform's, without the label (serving has none yet)."""
    spec = dict(tft_output.raw_feature_spec())
    spec.pop(raw_label_key, None)
    return spec


def _batched(x: tf.Tensor, feature_spec) -> Any:
    """A `[batch]` tensor as `tf.io.parse_example` would have given it for this feature's spec.

    A FixedLenFeature([1]) (a required field) parses to `[batch, 1]`; a
    VarLenFeature (an optional field) to a SparseTensor, here with one value in
    every row: the raw signature has no way to say "absent", so a request must
    give every field (the server fills the id and event time itself).
    """
    if isinstance(feature_spec, tf.io.FixedLenFeature):
        return tf.expand_dims(x, 1)
    rows = tf.shape(x, out_type=tf.int64)[0]
    indices = tf.stack([tf.range(rows), tf.zeros([rows], tf.int64)], axis=1)
    return tf.SparseTensor(indices, x, tf.stack([rows, tf.constant(1, tf.int64)]))


def raw_features_fn(tft_layer, model, raw_spec: Mapping[str, Any], output_key: str,
                    feature_names: List[str]) -> Callable:
    """`RAW_SIGNATURE(**{field: [batch]}) -> {output_key: float[batch, 1]}` over `tft_layer` and `model`.

    `tft_layer` must be the layer `serving_default` uses (tracked on the model),
    so the SavedModel holds one copy of the transform graph.
    """
    spec = {name: tf.TensorSpec([None], feature.dtype, name=name) for name, feature in raw_spec.items()}

    @tf.function(input_signature=[spec])
    def serve_raw(features):
        raw = {name: _batched(features[name], raw_spec[name]) for name in raw_spec}
        transformed = tft_layer(raw)
        return {output_key: model({k: transformed[k] for k in feature_names})}

    return serve_raw


def signatures_for(serve_examples: Callable, serve_raw: Callable) -> Dict[str, Callable]:
    """The `signatures=` of `model.save`: both entry points of one model."""
    # A tf.function with one dict argument is exported with the dict's keys as its inputs.
    return {"serving_default": serve_examples, RAW_SIGNATURE: serve_raw.get_concrete_function()}
