"""The user module of the stock TFX baseline in benchmarks/freshness.py (its Transform and Trainer).

Written as a TFX user writes one from the templates, with nothing from
driftline: `preprocessing_fn` turns ids into frequency vocabularies
(`tft.compute_and_apply_vocabulary`) and z-scores log(price); `run_fn` trains
a Keras model of the same shape as driftline's default model
(`pipelines/ads_model.py`: an 8-dimensional embedding per categorical feature,
the scaled price, an MLP of 64 and 32 units, a sigmoid) with `model.fit` on
the transformed examples, and exports the usual serving signature that parses
raw `tf.Example`s and applies the transform graph itself.

Warm start (the stateful regime): when TFX hands `run_fn` a `base_model`,
the weights the base run saved beside its SavedModel are loaded before
training. Embedding tables have a fixed size (`VOCAB_SIZES`), so shapes always
match; but a frequency vocabulary is recomputed on each span and reorders ids
between spans, so a loaded embedding row may now belong to another id. That is
what a stock stateful pipeline does, and part of what this benchmark measures.

TFX packages this folder into a wheel for each component that names it: it
lives alone in its folder so that the wheel holds only this file.
"""
import os

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx_bsl.public import tfxio

LABEL_KEY = "clicked"
OUTPUT_KEY = "probability"
# Embedding table rows per id feature: the vocabulary's top_k plus OOV_BUCKETS,
# fixed so a warm start always finds the same shapes.
VOCAB_SIZES = {"user_id": 2048, "ad_id": 1024, "ad_category": 64, "device": 16}
OOV_BUCKETS = 1
HOURS = 24
NUMERIC_KEY = "price"
WARM_WEIGHTS_DIR = "warm_weights"


def _xf(name):
    return name + "_xf"


def _flat(x):
    # SchemaGen infers a [1] shape; the model takes one value per example.
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs):
    out = {}
    for name, size in VOCAB_SIZES.items():
        out[_xf(name)] = _flat(tft.compute_and_apply_vocabulary(
            inputs[name], top_k=size - OOV_BUCKETS, num_oov_buckets=OOV_BUCKETS, vocab_filename=name))
    out[_xf("hour_of_day")] = _flat(tf.clip_by_value(tf.cast(inputs["hour_of_day"], tf.int64), 0, HOURS - 1))
    out[_xf(NUMERIC_KEY)] = _flat(tft.scale_to_z_score(tf.math.log1p(tf.cast(inputs[NUMERIC_KEY], tf.float32))))
    out[LABEL_KEY] = _flat(inputs[LABEL_KEY])
    return out


def build_model(embedding_dim, hidden_units, seed):
    keras.utils.set_random_seed(seed)
    inputs, parts = {}, []
    tables = dict(VOCAB_SIZES, hour_of_day=HOURS)
    for name in sorted(tables):
        inputs[_xf(name)] = keras.Input(shape=(), dtype=tf.int64, name=_xf(name))
        parts.append(keras.layers.Embedding(tables[name], embedding_dim, name=f"emb_{name}")(inputs[_xf(name)]))
    inputs[_xf(NUMERIC_KEY)] = keras.Input(shape=(), dtype=tf.float32, name=_xf(NUMERIC_KEY))
    parts.append(keras.layers.Reshape((1,), name="col_price")(inputs[_xf(NUMERIC_KEY)]))
    x = keras.layers.Concatenate(name="features")(parts)
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(int(units), activation="relu", name=f"dense_{i}")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="click")(x)
    return keras.Model(inputs=inputs, outputs=out, name="stock_ads_ctr")


def _dataset(file_pattern, data_accessor, tf_transform_output, batch_size, epochs, seed):
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL_KEY, num_epochs=epochs,
                                       shuffle=True, shuffle_seed=seed),
        tf_transform_output.transformed_metadata.schema)


def _serving_fn(model, tf_transform_output):
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    raw_spec.pop(LABEL_KEY, None)
    names = list(model.input_names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        transformed = model.tft_layer(tf.io.parse_example(serialized, raw_spec))
        return {OUTPUT_KEY: model({k: transformed[k] for k in names})}

    return serve


def run_fn(fn_args):
    cfg = fn_args.custom_config
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    model = build_model(cfg["embedding_dim"], cfg["hidden_units"], cfg["seed"])
    warm = bool(fn_args.base_model)
    if warm:
        model.load_weights(os.path.join(os.path.dirname(fn_args.base_model), WARM_WEIGHTS_DIR, "weights"))
    epochs = cfg["warm_epochs"] if warm else cfg["cold_epochs"]
    learning_rate = cfg["warm_learning_rate"] if warm else cfg["cold_learning_rate"]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc")])
    train = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, cfg["batch_size"], epochs,
                     cfg["seed"])
    # num_epochs is in the dataset: one Keras epoch runs until it is exhausted.
    model.fit(train, epochs=1, steps_per_epoch=fn_args.train_steps, verbose=0)
    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures={"serving_default": _serving_fn(model, tf_transform_output)})
    model.save_weights(os.path.join(os.path.dirname(fn_args.serving_model_dir), WARM_WEIGHTS_DIR, "weights"))
