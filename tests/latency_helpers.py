"""Real artifacts for the LatencyValidator tests, without running a pipeline.

* an `Examples` folder in StreamingExampleGen's layout (`<uri>/Split-eval/*.tfrecord.gz`)
  holding tf.Examples of the built-in stream, encoded as ingestion encodes them;
* a `TransformGraph` folder written by TFT on Beam from `transforms.stream.preprocessing_fn`,
  as stock Transform writes it;
* the default model (`pipelines.ads_model`) exported through `export_serving_model`, as the
  trainer exports it, in a `Model` folder (`<uri>/Format-Serving`); its weights are untrained,
  which does not change what it costs to run;
* the same model with an expensive extra layer: a deliberately slow one.
"""
from __future__ import annotations

import os
import tempfile

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from components.event_schema import ad_click_schema
from pipelines.config import TransformConfig, TrainerConfig

SCHEMA = ad_click_schema()
TRANSFORM = TransformConfig()


def write_eval_examples(uri: str, minutes: int = 4, events_per_minute: int = 500, seed: int = 5) -> int:
    """Simulated events as gzipped tf.Examples in `<uri>/Split-eval/` (and an empty train split); the count."""
    import tensorflow as tf

    from components.streaming_example_gen.example_codec import ExampleEncoder
    from pipelines.simulator import SimulatorConfig, simulate

    log = tempfile.mkdtemp(prefix="latency-log-")
    simulate(log, SimulatorConfig(minutes=minutes, events_per_minute=events_per_minute, seed=seed))
    encoder = ExampleEncoder(SCHEMA)
    lines = [line for path in sorted(tf.io.gfile.glob(os.path.join(log, "*.jsonl")))
             for line in open(path, "rb") if line.strip()]
    split = os.path.join(uri, "Split-eval")
    os.makedirs(split, exist_ok=True)
    os.makedirs(os.path.join(uri, "Split-train"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(split, "data-000000.tfrecord.gz"),
                              options=tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for line in lines:
            w.write(encoder.encode(SCHEMA.parse(line)))
    return len(lines)


def write_transform_graph(uri: str) -> str:
    """TFT's analyze on Beam (no analyzers in the default transform), written as stock Transform does."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    from transforms import stream
    from transforms.schema import tfmd_schema

    config = stream.custom_config(SCHEMA, TRANSFORM)
    metadata = dataset_metadata.DatasetMetadata(tfmd_schema(SCHEMA))
    one = {f.name: [b"x" if f.type == "string" else (1.0 if f.type == "float" else 1)] for f in SCHEMA.fields}
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(prefix="latency-tft-")):
        transform_fn = (([one], metadata)
                        | tft_beam.AnalyzeDataset(lambda inputs: stream.preprocessing_fn(inputs, config)))
        _ = transform_fn | tft_beam.WriteTransformFn(uri)
    # Stock Transform also writes the raw metadata, which `TFTransformOutput.raw_feature_spec()` reads.
    metadata_io.write_metadata(metadata, os.path.join(uri, tft.TFTransformOutput.RAW_METADATA_DIR))
    return uri


def write_model(uri: str, transform_graph: str, slow_repeats: int = 0, slow_units: int = 2048) -> str:
    """The default model in `<uri>/Format-Serving`.

    `slow_repeats` > 0 adds a deliberately expensive layer before the output:
    one wide Dense layer applied `slow_repeats` times to every candidate
    (shared weights, so the SavedModel stays small while the work grows).
    """
    import tensorflow_transform as tft
    import tf_keras as keras

    from pipelines import ads_model
    from transforms import stream

    tft_output = tft.TFTransformOutput(transform_graph)
    model = ads_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM), stream.numeric_features(SCHEMA, TRANSFORM),
                                  dict(TrainerConfig().model), seed=0)
    if slow_repeats:
        x = keras.layers.Dense(slow_units, activation="relu", name="slow_in")(model.get_layer("dense_1").output)
        expensive = keras.layers.Dense(slow_units, activation="relu", name="slow_expensive")
        for _ in range(slow_repeats):
            x = expensive(x)
        out = keras.layers.Dense(1, activation="sigmoid", name="click")(x)
        model = keras.Model(inputs=model.inputs, outputs=out, name="ads_ctr_slow")
    ads_model.export_serving_model(model, tft_output, SCHEMA.label_field, os.path.join(uri, "Format-Serving"))
    return uri
