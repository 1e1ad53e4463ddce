"""The music stream's model: a user `run_fn` module of its own, smaller than `ads_model`.

What a run_fn module must do for WarmStartTrainer (`components/warm_start_trainer`):
take `WarmStartFnArgs`, continue `fn_args.base_model` when `fn_args.warm_start`
(and cold-start, saying why, when its weights do not fit), save the weights
for the next warm start (`warm_start.save_warm_start_state`), export to
`fn_args.serving_model_dir` a SavedModel whose `serving_default` takes
serialized `tf.Example`s and returns `{"probability": float32[None, 1]}`
(what the Evaluator and TF Serving call), and return a `TrainResult`.

The model: one small embedding per hashed feature and the scaled numbers,
concatenated, one hidden layer. Referenced as `pipelines.music_model.run_fn`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.warm_start_trainer import data, warm_start
from components.warm_start_trainer.fn_args import TrainResult, WarmStartFnArgs
from transforms.stream import LABEL_KEY


def build_model(feature_buckets: Mapping[str, int], numeric_features, model_config: Mapping[str, Any],
                seed: int) -> keras.Model:
    # Named layers: the warm-start manifest matches variables by name across processes.
    keras.utils.set_random_seed(seed)
    dim = int(model_config.get("embedding_dim", 4))
    inputs, parts = {}, []
    for name in sorted(feature_buckets):
        inputs[name] = keras.Input(shape=(), dtype=tf.int64, name=name)
        parts.append(keras.layers.Embedding(feature_buckets[name], dim, name=f"emb_{name}")(inputs[name]))
    for name in sorted(numeric_features):
        inputs[name] = keras.Input(shape=(), dtype=tf.float32, name=name)
        parts.append(keras.layers.Reshape((1,), name=f"col_{name}")(inputs[name]))
    x = keras.layers.Concatenate(name="features")(parts)
    x = keras.layers.Dense(int(model_config.get("hidden_units", 16)), activation="relu", name="hidden")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="completed")(x)
    return keras.Model(inputs=inputs, outputs=out, name="music_completion")


def _fit(model: keras.Model, features, labels: np.ndarray, *, epochs: int, batch_size: int,
         learning_rate: float, seed: int) -> float:
    """Minibatch Adam; one traced step (no AutoGraph: Keras' fit() converts its loop for tens of seconds)."""
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.BinaryCrossentropy()
    names = list(model.input_names)
    signature = [{k: tf.TensorSpec([None], tf.as_dtype(features[k].dtype)) for k in names},
                 tf.TensorSpec([None], tf.as_dtype(labels.dtype))]

    @tf.function(autograph=False, input_signature=signature)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)[:, 0])
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    loss = float("nan")
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        losses = [float(step({k: features[k][order[i:i + batch_size]] for k in names}, labels[order[i:i + batch_size]]))
                  for i in range(0, len(labels), batch_size)]
        loss = float(np.mean(losses))
    return loss


def _export(model: keras.Model, tft_output, label_key: str, export_dir: str) -> None:
    """`serving_default(examples: string[None]) -> {probability: float[None, 1]}`, the transform inside,
    and `serving_raw`, the same over raw feature tensors (pipelines/serve/signatures.py)."""
    from pipelines.serve import signatures as serving_signatures

    raw_spec = serving_signatures.raw_input_spec(tft_output, label_key)  # requests carry no label
    model.tft_layer = tft_output.transform_features_layer()
    names = list(model.input_names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        transformed = model.tft_layer(tf.io.parse_example(serialized, raw_spec))
        return {"probability": model({k: transformed[k] for k in names})}

    signatures = serving_signatures.signatures_for(serve, serving_signatures.raw_features_fn(
        model.tft_layer, model, raw_spec, "probability", names))
    model.save(export_dir, save_format="tf", signatures=signatures, save_traces=False)


def run_fn(fn_args: WarmStartFnArgs) -> TrainResult:
    import tensorflow_transform as tft

    config = fn_args.custom_config
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    model = build_model(config["feature_buckets"], config["numeric_features"], config.get("model", {}),
                        fn_args.seed)
    warm, reason = fn_args.warm_start, fn_args.start_reason
    if warm:
        report = warm_start.load_base_weights(model, fn_args.base_model)
        if not report.loaded:
            warm, reason = False, report.reason
    salt = str(max(i.span for i in fn_args.training_inputs))
    try:
        features, labels, counts, provenance = data.load_transformed(fn_args.training_inputs, tft_output, LABEL_KEY,
                                                                     fn_args.id_key, salt, provenance=True)
    except data.NoTrainingExamples as e:
        # Nothing to learn from: the candidate is the base (or an untrained) model; the gate judges it.
        loss, steps, examples, counts, reason = float("nan"), 0, 0, {}, f"{reason}; not trained: {e}"
        positives = {}
    else:
        loss = _fit(model, features, labels, epochs=fn_args.epochs, batch_size=fn_args.batch_size,
                    learning_rate=fn_args.learning_rate, seed=fn_args.seed)
        steps, examples = -(-len(labels) // fn_args.batch_size) * fn_args.epochs, len(labels)
        positives = data.positives_by_role(labels, provenance)
    _export(model, tft_output, fn_args.label_key, fn_args.serving_model_dir)
    warm_start.save_warm_start_state(model, fn_args.model_dir, architecture=config.get(warm_start.ARCHITECTURE, ""))
    return TrainResult(warm_start=warm, start_reason=reason, final_loss=loss, steps=steps, examples=examples,
                       examples_by_role=counts, positives_by_role=positives)
