"""The default model for any stream: wide & deep over the hashed ids.

Deep: an embedding per hashed categorical feature, concatenated with the
numeric features, through an MLP (trained with Adam). Wide: one weight per
hashed bucket of every categorical feature, and of crosses of two categorical
features (every pair by default; hashed inside the model), trained with AdaGrad or FTRL as
production CTR models are: it learns per-id click rates as fast as an online
logistic regression, which the MLP alone does not. The two logits are summed
before the sigmoid. `trainer.model` = {"wide": false} builds the deep model alone.

It is an ordinary user module: `run_fn(fn_args)` gets `WarmStartFnArgs`,
continues `fn_args.base_model` when the cycle is warm, and exports a serving
SavedModel that takes serialized `tf.Example`s and applies the transform
graph itself, so TF Serving and TFMA use it as it is.

Referenced by dotted path (`pipelines.ads_model.run_fn`), so no cycle builds
or installs a module wheel.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.warm_start_trainer import data, warm_start
from components.warm_start_trainer.fn_args import TrainResult, WarmStartFnArgs
from transforms.stream import LABEL_KEY

OUTPUT_KEY = "probability"

# The wide part's knobs in `trainer.model`, and their defaults.
# Every pair of categorical features crossed, AdaGrad at 0.05: the best of benchmarks/learning.py's grid on
# both the ad and the music stream (crosses: +0.018 and +0.021 mean next-span AUC over the wide part alone;
# 0.15 did worse than 0.05 on both). A stream with many categorical features gets many crosses (n(n-1)/2
# tables of `cross_buckets` weights): name the useful ones instead.
WIDE_DEFAULTS = {"wide": True, "crosses": "all", "cross_buckets": 100003, "wide_optimizer": "adagrad",
                 "wide_learning_rate": 0.05}
WIDE_PREFIX = "wide_"
# Count features (`CountTable`): off in a model dict without `counts` (the shipped TrainerConfig.model sets it);
# per-span decays and the prior's weight. Chosen by benchmarks/learning.py (RESULTS.md, learning).
COUNTS_DEFAULTS = {"counts": False, "count_decays": [0.5, 0.9], "count_prior": 2.0}
COUNT_INPUT = "count_features"
# Frequency-weighted L2 penalties on the weights each example looks up (`_regularise`): the wide weights and
# the embeddings. Training settings, not architecture: they are defaults here, not in TrainerConfig.model,
# so a model trained without them continues warm (the warm-start fingerprint covers the model dict).
PENALTY_DEFAULTS = {"wide_l2": 0.1, "embedding_l2": 0.01}


@keras.utils.register_keras_serializable(package="driftline")
class HashedCross(keras.layers.Layer):
    """The bucket of a pair of hashed ids: FarmHash64 (`to_hash_bucket_fast`) of "<a>_<b>".

    A fingerprint of the two ids' decimal text, so the same pair lands in the
    same bucket in every process and every build (no Python `hash`, no seed).
    """

    def __init__(self, num_buckets: int, **kwargs):
        super().__init__(**kwargs)
        self.num_buckets = int(num_buckets)

    def call(self, inputs):
        a, b = inputs
        text = tf.strings.join([tf.strings.as_string(a), tf.strings.as_string(b)], separator="_")
        return tf.strings.to_hash_bucket_fast(text, self.num_buckets)

    def get_config(self):
        return {**super().get_config(), "num_buckets": self.num_buckets}


@keras.utils.register_keras_serializable(package="driftline")
class PairwiseDot(keras.layers.Layer):
    """The sum over every pair of the inputs (each [batch, dim]) of their dot product: [batch, 1].

    A factorization machine's second-order term over the categorical embeddings (DeepFM): with n
    embeddings it costs O(n dim) as 0.5 * ((sum e)^2 - sum e^2), not O(n^2 dim). No weights of its
    own: it reads the deep part's embeddings, so a user's vector and an ad's meet in a dot product
    as they do in a stream whose clicks come from user x item affinity.
    """

    def call(self, inputs):
        stacked = tf.stack(inputs, axis=1)  # [batch, n, dim]
        total = tf.reduce_sum(stacked, axis=1)
        pairs = 0.5 * (tf.square(total) - tf.reduce_sum(tf.square(stacked), axis=1))
        return tf.reduce_sum(pairs, axis=1, keepdims=True)


@keras.utils.register_keras_serializable(package="driftline")
class CountTable(keras.layers.Layer):
    """Learning from counts: per hashed id of each key, the decayed number of examples and of positives.

    Model state, not trainable: one table per key (a categorical feature or a cross), one row per
    bucket, two columns (examples, positives) per decay; a total row of the same; and the newest span
    counted. `run_fn` advances the tables each cycle with the examples the model had never learned
    (`count_training_features`), so they travel in the warm-start checkpoint and the serving SavedModel
    alike: serving looks the counts up inside the model, and cannot disagree with training.

    Its output, per key and decay: the id's smoothed log-odds over the stream's (the positives plus
    `prior` examples at the stream's rate, over the examples plus `prior`). No popularity input (see
    `features_of`).
    A counts-based estimate of every id's rate from all of its history, at each decay, which per-event
    gradient steps on a per-id weight only approximate; two decays tell a rising id from a falling one.
    """

    def __init__(self, buckets: Mapping[str, int], decays: List[float], prior: float, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.buckets = {str(k): int(v) for k, v in buckets.items()}
        self.decays = [float(d) for d in decays]
        self.prior = float(prior)
        self.keys = sorted(self.buckets)
        self.width = 2 * len(self.decays)

    @property
    def features(self) -> int:
        return len(self.keys) * len(self.decays)

    def build(self, input_shape):
        self.tables = {k: self.add_weight(name=f"counts_{k}", shape=(self.buckets[k], self.width),
                                          initializer="zeros", trainable=False) for k in self.keys}
        self.total = self.add_weight(name="counts_total", shape=(self.width,), initializer="zeros", trainable=False)
        # -1: nothing counted yet.
        self.span = self.add_weight(name="counts_span", shape=(), dtype=tf.int64, trainable=False,
                                    initializer=keras.initializers.Constant(-1))
        super().build(input_shape)

    def call(self, ids):
        return self.features_of([tf.gather(self.tables[k], ids[k]) for k in self.keys], self.total)

    def features_of(self, gathered, total):
        """[batch, features] from each key's gathered rows ([batch, width]) and the total row: the one
        computation of the features, for serving (`call`) and for training (`count_training_features`)."""
        total = tf.cast(total, tf.float32)
        out = []
        for j in range(len(self.decays)):
            n_all, pos_all = total[2 * j], total[2 * j + 1]
            rate = (pos_all + 1.0) / (n_all + 2.0)
            base = tf.math.log(rate) - tf.math.log1p(-rate)
            for rows in gathered:
                rows = tf.cast(rows, tf.float32)
                n, pos = rows[:, 2 * j], rows[:, 2 * j + 1]
                own = tf.clip_by_value((pos + self.prior * rate) / (n + self.prior), 1e-6, 1 - 1e-6)
                # Its log-odds only, centred on the stream's (0 for an id never seen). A popularity input
                # (log of the id's count, or of its share of the examples) is positive for every seen id: all
                # its weights then moved together in the first warm cycles and the model's calibration swung
                # (0.57 in tests/test_closed_loop.py's warm cycles, 1.83 on a first cycle with counts).
                out.append(tf.math.log(own) - tf.math.log1p(-own) - base)
        return tf.stack(out, axis=1)

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets, "decays": self.decays, "prior": self.prior}


def model_options(model_config: Mapping[str, Any], feature_buckets: Mapping[str, int]) -> Dict[str, Any]:
    """The wide part's settings with defaults filled in; a bad one raises ValueError naming the fix."""
    options = {**WIDE_DEFAULTS, **{k: model_config[k] for k in WIDE_DEFAULTS if k in model_config}}
    crosses = []
    declared = options["crosses"] or []
    if declared == "all":  # every pair of categorical features: no stream-specific names needed
        declared = [[a, b] for i, a in enumerate(sorted(feature_buckets)) for b in sorted(feature_buckets)[i + 1:]]
    elif isinstance(declared, str):
        raise ValueError(f"trainer.model.crosses must be 'all' or a list of feature pairs, got {declared!r}")
    for cross in declared:
        if not (isinstance(cross, (list, tuple)) and len(cross) == 2):
            raise ValueError(f"trainer.model.crosses: each cross is a pair of categorical features, got {cross!r}")
        unknown = [f for f in cross if f not in feature_buckets]
        if unknown:
            raise ValueError(f"trainer.model.crosses: {unknown} are not hashed categorical features of this stream "
                             f"(its transformed ones are {sorted(feature_buckets)}); name those")
        crosses.append([str(cross[0]), str(cross[1])])
    options["crosses"] = crosses
    options["counts"] = model_config.get("counts", COUNTS_DEFAULTS["counts"])
    if not isinstance(options["counts"], bool):
        raise ValueError(f"trainer.model.counts must be true or false, got {options['counts']!r}")
    options["count_decays"] = list(model_config.get("count_decays", COUNTS_DEFAULTS["count_decays"]))
    if not options["count_decays"] or not all(0.0 < float(d) <= 1.0 for d in options["count_decays"]):
        raise ValueError("trainer.model.count_decays must be a list of decays per span in (0, 1], "
                         f"got {options['count_decays']!r}")
    options["count_prior"] = float(model_config.get("count_prior", COUNTS_DEFAULTS["count_prior"]))
    if not options["count_prior"] > 0:
        raise ValueError(f"trainer.model.count_prior must be > 0, got {options['count_prior']!r}")
    count_features = model_config.get("count_features", "all")
    if count_features != "all":
        unknown = [f for f in count_features if f not in feature_buckets]
        if isinstance(count_features, str) or unknown:
            raise ValueError(f"trainer.model.count_features must be 'all' or a list of hashed categorical features "
                             f"(this stream's are {sorted(feature_buckets)}), got {count_features!r}")
    options["count_features"] = count_features
    options["fm"] = model_config.get("fm", False)
    if not isinstance(options["fm"], bool):
        raise ValueError(f"trainer.model.fm must be true or false, got {options['fm']!r}")
    if options["wide_optimizer"] not in ("adagrad", "ftrl"):
        raise ValueError(f"trainer.model.wide_optimizer must be 'adagrad' or 'ftrl', got {options['wide_optimizer']!r}")
    if not float(options["wide_learning_rate"]) > 0 or int(options["cross_buckets"]) < 1:
        raise ValueError("trainer.model.wide_learning_rate must be > 0 and trainer.model.cross_buckets >= 1")
    for key, default in PENALTY_DEFAULTS.items():
        value = options[key] = model_config.get(key, default)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"trainer.model.{key} must be a number >= 0 (0 turns it off), got {value!r}")
    return options


def cross_name(cross) -> str:
    return f"{cross[0]}_x_{cross[1]}"


def build_model(feature_buckets: Mapping[str, int], numeric_features: List[str],
                model_config: Mapping[str, Any], seed: int) -> keras.Model:
    """The serving model (see `build_models`)."""
    return build_models(feature_buckets, numeric_features, model_config, seed)[0]


def build_models(feature_buckets: Mapping[str, int], numeric_features: List[str],
                 model_config: Mapping[str, Any], seed: int):
    """(serving model, training model). The same model, the same weights, unless `counts` is on.

    Deep: embeddings for every hashed feature, concatenated with scaled numbers, then an MLP.
    Wide (unless `"wide": false`): one weight per bucket of every hashed feature and cross.
    Counts (`"counts": true`): a `CountTable` over every hashed feature and cross, its features into
    the MLP and through one linear weight each into the logit. The serving model looks them up in the
    table; the training model takes them as an input (`COUNT_INPUT`), computed from the counts as of
    each example's span (`count_training_features`), so no example's own label is in its features. Both
    share every layer but the table.

    Every layer is named, so variable names match across processes and the
    warm-start manifest can compare them; the wide part's layers are named
    `wide_*`, which is how `Trainer` gives them their own optimizer.
    """
    options = model_options(model_config, feature_buckets)
    keras.utils.set_random_seed(seed)
    dim = int(model_config.get("embedding_dim", 8))
    inputs: Dict[str, keras.Input] = {}
    parts = []
    for name in sorted(feature_buckets):
        inputs[name] = keras.Input(shape=(), dtype=tf.int64, name=name)
        emb = keras.layers.Embedding(feature_buckets[name], dim, name=f"emb_{name}")(inputs[name])
        parts.append(emb)
    embeddings = list(parts)
    for name in sorted(numeric_features):
        inputs[name] = keras.Input(shape=(), dtype=tf.float32, name=name)
        parts.append(keras.layers.Reshape((1,), name=f"col_{name}")(inputs[name]))
    ids = {name: inputs[name] for name in sorted(feature_buckets)}
    buckets = dict(feature_buckets)
    if options["wide"] or options["counts"]:
        for cross in options["crosses"]:
            name = cross_name(cross)
            ids[name] = HashedCross(int(options["cross_buckets"]), name=f"cross_{name}")(
                [inputs[cross[0]], inputs[cross[1]]])
            buckets[name] = int(options["cross_buckets"])
    # Every layer whose input may be the count features: created once, applied to the table's output
    # (serving) and to the count input (training), so both models share their weights.
    hidden = [keras.layers.Dense(int(units), activation="relu", name=f"dense_{i}")
              for i, units in enumerate(model_config.get("hidden_units", [64, 32]))]
    concat = keras.layers.Concatenate(name="features")
    wide_logits = []
    if options["fm"] and len(embeddings) >= 2:
        wide_logits.append(PairwiseDot(name="fm_logit")(embeddings))
    if options["wide"]:
        for name in ids:
            # Zero-initialised: a new id starts at the base rate the bias learns.
            wide_logits.append(keras.layers.Embedding(buckets[name], 1, embeddings_initializer="zeros",
                                                      name=f"{WIDE_PREFIX}{name}")(ids[name]))
    plain = not options["wide"] and not options["fm"] and not options["counts"]
    click = keras.layers.Dense(1, activation="sigmoid", name="click") if plain else None
    deep_logit = None if plain else keras.layers.Dense(1, name="deep_logit")  # its bias is the model's bias
    count_logit = (keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="count_logit")
                   if options["counts"] else None)

    def head(counts):
        x = concat(parts + ([counts] if counts is not None else []))
        for layer in hidden:
            x = layer(x)
        if plain:
            return click(x)
        logits = [deep_logit(x)] + wide_logits + ([count_logit(counts)] if counts is not None else [])
        logit = keras.layers.Add(name="logit")(logits) if len(logits) > 1 else logits[0]
        return keras.layers.Activation("sigmoid", name="click")(logit)

    if not options["counts"]:
        model = keras.Model(inputs=inputs, outputs=head(None), name="ads_ctr")
        return model, model
    counted = {k: v for k, v in buckets.items() if _counted(k, options)}
    table = CountTable(counted, options["count_decays"], options["count_prior"], name="count_table")
    serving = keras.Model(inputs=inputs, outputs=head(table({k: ids[k] for k in counted})), name="ads_ctr")
    count_input = keras.Input(shape=(table.features,), dtype=tf.float32, name=COUNT_INPUT)
    training = keras.Model(inputs={**inputs, COUNT_INPUT: count_input}, outputs=head(count_input),
                           name="ads_ctr_training")
    if hidden:
        # The count features enter the first hidden layer through zero weights, as a wide weight starts
        # at zero: until the model has learned on count features (from the second cycle on, see
        # `count_training_features`), the table moves no prediction.
        kernel = hidden[0].kernel
        kernel.assign(tf.concat([kernel[:-table.features], tf.zeros([table.features, kernel.shape[1]])], 0))
    return serving, training


def _counted(key: str, options: Mapping[str, Any]) -> bool:
    """Whether a hashed feature or a cross (every one of its features) is in `count_features`."""
    if options["count_features"] == "all":
        return True
    crosses = {cross_name(c): c for c in options["crosses"]}
    return all(f in options["count_features"] for f in crosses.get(key, [key]))


def _count_table(model: keras.Model) -> Optional[CountTable]:
    return next((layer for layer in model.layers if isinstance(layer, CountTable)), None)


def count_training_features(serving: keras.Model, model_config: Mapping[str, Any], feature_buckets: Mapping[str, int],
                            features: Mapping[str, np.ndarray], labels: np.ndarray,
                            provenance: "data.Provenance") -> np.ndarray:
    """The count features of every training example, as of its span, and the table advanced past them.

    The table (loaded from the base model, or empty) holds what the model learned before: every span's
    examples once, decayed per span since. This cycle's examples it never learned ("new", the previous
    eval split, released or carried splits; all of them when the table is empty) are taken span by span,
    oldest first: each example's features come from the table as it was before its span was counted
    (what serving looks up for an event after the last counted span), then its span is counted. A
    replay example was counted when it was new: its features are the table's less its own (decayed)
    share, so no example ever sees its own label. Serving then looks up the advanced table:
    an event of the next span sees every span before it, as a training example saw every span before its.
    A table empty at the start (a cold first cycle) counts every span but gives no example features
    (all zero, as the empty table would): see the comment below.
    """
    table = _count_table(serving)
    crosses = {cross_name(c): c for c in model_options(model_config, feature_buckets)["crosses"]}
    ids = {}
    for key in table.keys:
        if key in crosses:
            a, b = crosses[key]
            ids[key] = serving.get_layer(f"cross_{key}")([tf.constant(features[a]), tf.constant(features[b])]).numpy()
        else:
            ids[key] = np.asarray(features[key])
    decays = np.array(table.decays, np.float64)
    tables = {k: table.tables[k].numpy().astype(np.float64) for k in table.keys}
    total = table.total.numpy().astype(np.float64)
    last = int(table.span.numpy())
    y = np.asarray(labels, np.float64)
    spans = np.asarray(provenance.span, np.int64)
    counted = np.ones(len(y), bool) if last < 0 else np.asarray(provenance.role != "replay", bool)
    out = np.zeros((len(y), table.features), np.float32)

    def rows(weights: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Each example's (examples, positives) per decay, `weights` [m, decays]."""
        r = np.empty((len(idx), 2 * len(decays)))
        r[:, 0::2], r[:, 1::2] = weights, weights * y[idx, None]
        return r

    replay = np.flatnonzero(~counted)
    if len(replay):
        own = rows(decays[None, :] ** np.maximum(last - spans[replay], 0)[:, None], replay)
        out[replay] = table.features_of([np.maximum(tables[k][ids[k][replay]] - own, 0.0) for k in table.keys],
                                        total).numpy()
    # A table that starts this cycle empty gives its spans no count features (zeros, the empty table's):
    # the count weights start at zero and stay there, so the first model predicts as one without counts.
    # Counting its spans one after another instead trained the first span on an empty table and the
    # next on a one-span table, while the eval split and serving see the table after all of them: a
    # first model whose count weights never saw such a table (calibration 1.6-1.9 on a first cycle).
    cold = last < 0
    for span in sorted(set(spans[counted].tolist())):
        idx = np.flatnonzero(counted & (spans == span))
        # The table as serving has it before this span: the last span counted, not yet decayed to this one.
        if not cold:
            out[idx] = table.features_of([tables[k][ids[k][idx]] for k in table.keys], total).numpy()
        if span > last:
            if last >= 0:
                factor = np.repeat(decays ** (span - last), 2)
                for k in table.keys:
                    tables[k] *= factor
                total *= factor
            last = span
        add = rows(np.broadcast_to(decays ** (last - span), (len(idx), len(decays))), idx)
        for k in table.keys:
            np.add.at(tables[k], ids[k][idx], add)
        total += add.sum(axis=0)
    for k in table.keys:
        table.tables[k].assign(tables[k].astype(np.float32))
    table.total.assign(total.astype(np.float32))
    table.span.assign(last)
    return out


def _wide_variables(model: keras.Model) -> List[tf.Variable]:
    return [v for layer in model.layers if layer.name.startswith(WIDE_PREFIX) for v in layer.trainable_variables]


# The wide optimizers' initial accumulator. Keras' 0.1 dwarfs the squared gradient of an id in a batch's
# mean loss (about (1/batch)^2): its steps were lr/300 of River's per-event AdaGrad, and the linear part
# hardly learned (benchmarks/learning.py). Near zero, an id's first step is about the learning rate.
WIDE_INITIAL_ACCUMULATOR = 1e-6


def _wide_optimizer(options: Mapping[str, Any]):
    lr = float(options["wide_learning_rate"])
    if options["wide_optimizer"] == "ftrl":
        return keras.optimizers.Ftrl(lr, initial_accumulator_value=WIDE_INITIAL_ACCUMULATOR)
    return keras.optimizers.Adagrad(lr, initial_accumulator_value=WIDE_INITIAL_ACCUMULATOR)


def _regularise(model: keras.Model, wide_l2: float, embedding_l2: float) -> None:
    """Frequency-weighted L2 penalties: `wide_l2` times the mean, over a batch's examples, of the squares of
    the wide weights each example looks up, and `embedding_l2` the same for its embedding entries (Keras
    activity regularisers on those layers' outputs; Keras divides them by the batch size).

    A weight is pulled toward zero in proportion to how often it is used, as its data gradient is, so a
    rare id is shrunk no more than a common one, and what every example shares goes to what is not
    penalised (the bias, the MLP). Without them, the base rate spread over the weights of whatever values
    were always present: a feature constant for hours (the hour of day, an app version) carried part of
    the intercept in its wide weight, its crosses and its embedding, and its first new value moved every
    prediction (the soak: the mean click prediction fell from 0.100 to 0.015 at the first new hour).
    Set on the layers when training, not built into the model: the serving model and its checkpoint are
    the same with or without."""
    for layer in model.layers:
        if layer.name.startswith(WIDE_PREFIX):
            l2 = wide_l2
        elif layer.name.startswith("emb_"):
            l2 = embedding_l2
        else:
            continue
        layer.activity_regularizer = keras.regularizers.L2(l2) if l2 > 0 else None


def _learning_rate(fn_args: WarmStartFnArgs, steps: int):
    if fn_args.learning_rate_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(fn_args.learning_rate, decay_steps=max(steps, 1))
    return fn_args.learning_rate


class Trainer:
    """A model, its optimizers and its traced train step.

    The deep part trains with Adam at the cycle's learning rate; the wide
    part's variables (layers named `wide_*`), if any, with AdaGrad or FTRL at
    `wide_learning_rate`: two optimizers over disjoint variable sets.

    One cycle builds and traces these once; the controller's long-lived
    process keeps the last one (see `run_fn`) so the next warm cycle of the
    same architecture only loads the base weights into it, resets the
    optimizer, and runs the already traced step: tracing costs more CPU than
    training a span. It is an optimisation, never state: the weights always
    come from the base model's checkpoint, the optimizer starts from zero
    every cycle, and a fresh process computes the same model.
    """

    def __init__(self, model: keras.Model, features: Mapping[str, np.ndarray], labels: np.ndarray,
                 learning_rate=0.001, model_config: Optional[Mapping[str, Any]] = None,
                 serving_model: Optional[keras.Model] = None):
        # `model` is trained; `serving_model` (the same, unless it looks up count features itself, see
        # `build_models`) is what is exported and warm-started.
        self.model = model
        self.serving_model = serving_model if serving_model is not None else model
        wide_ids = {id(v) for v in _wide_variables(model)}
        deep_vars = [v for v in model.trainable_variables if id(v) not in wide_ids]
        wide_vars = [v for v in model.trainable_variables if id(v) in wide_ids]
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.wide_optimizer = None
        if wide_vars:
            options = {**WIDE_DEFAULTS, **dict(model_config or {})}
            self.wide_optimizer = _wide_optimizer(options)
        penalty = {k: float(dict(model_config or {}).get(k, default)) for k, default in PENALTY_DEFAULTS.items()}
        _regularise(model, penalty["wide_l2"], penalty["embedding_l2"])
        # Slot variables are made here, eagerly, and every batch size shares one
        # signature, so the step is traced once: creating variables in the
        # first call traced it twice, and the last, smaller batch a third time.
        self.optimizer.build(deep_vars)
        if self.wide_optimizer is not None:
            self.wide_optimizer.build(wide_vars)
        # Each optimizer's variables as built (step 0; AdaGrad's and FTRL's accumulators
        # start at WIDE_INITIAL_ACCUMULATOR, not 0), for reset_optimizer.
        self._initial_slots = [(v, v.numpy()) for opt in self._optimizers() for v in opt.variables]
        self.names = list(model.input_names)
        self.dtypes = {k: tf.as_dtype(features[k].dtype) for k in self.names}
        self.label_dtype = tf.as_dtype(labels.dtype)
        loss_fn = keras.losses.BinaryCrossentropy()
        signature = [{k: tf.TensorSpec([None] + list(np.shape(features[k])[1:]), self.dtypes[k], name=k)
                      for k in self.names},
                     tf.TensorSpec([None], self.label_dtype, name="label"),
                     tf.TensorSpec([], tf.int32, name="batch_size")]
        optimizer, wide_optimizer = self.optimizer, self.wide_optimizer
        n_deep = len(deep_vars)

        @tf.function(autograph=False, input_signature=signature)
        def step(x, y, batch_size):
            """Every minibatch of (x, y), in order, `batch_size` rows each (the last may be
            smaller): one call per epoch. Called once a batch, the Python around each
            step cost 40% of the epoch; Keras' steps_per_execution loops so too."""
            rows = tf.shape(y)[0]
            batches = (rows + batch_size - 1) // batch_size

            def train_batch(i, total):
                start = i * batch_size
                xb = {k: v[start:start + batch_size] for k, v in x.items()}
                with tf.GradientTape() as tape:
                    loss = loss_fn(y[start:start + batch_size], model(xb, training=True)[:, 0])
                    # The penalties on the looked-up weights (`_regularise`), if any.
                    loss_with_penalty = loss + tf.add_n(model.losses) if model.losses else loss
                grads = tape.gradient(loss_with_penalty, deep_vars + wide_vars)
                optimizer.apply_gradients(zip(grads[:n_deep], deep_vars))
                if wide_optimizer is not None:
                    wide_optimizer.apply_gradients(zip(grads[n_deep:], wide_vars))
                return i + 1, total + tf.cast(loss, tf.float64)

            _, total = tf.while_loop(lambda i, _: i < batches, train_batch,
                                     [tf.constant(0), tf.constant(0.0, tf.float64)])
            return total / tf.cast(tf.maximum(batches, 1), tf.float64)

        self.step = step
        # Called as its one concrete function: a tf.function call binds and checks its
        # arguments in Python first.
        self._traced_step = step.get_concrete_function()
        # The serving function, traced for one transform graph, and the files of its first
        # export but the weights (see export_serving_model).
        self.serve = None
        self.serve_transform: Optional[str] = None
        self.export_template: Optional[Dict[str, Optional[bytes]]] = None

    def accepts(self, features: Mapping[str, np.ndarray], labels: np.ndarray) -> bool:
        """Whether the step traced for these features fits (the count features are added later)."""
        names = [k for k in self.names if k != COUNT_INPUT]
        return (sorted(features) == sorted(names) and tf.as_dtype(labels.dtype) == self.label_dtype
                and all(tf.as_dtype(features[k].dtype) == self.dtypes[k] for k in names))

    def _optimizers(self) -> list:
        return [self.optimizer] + ([self.wide_optimizer] if self.wide_optimizer is not None else [])

    def reset_optimizer(self, learning_rate: float) -> None:
        """Fresh optimizers: every slot as built (Adam's moments zero, the wide accumulators at their
        initial value), step 0, this cycle's learning rate for the deep part (the wide one's is fixed)."""
        for variable, initial in self._initial_slots:
            variable.assign(initial)
        self.optimizer.learning_rate = learning_rate

    def fit(self, features: Mapping[str, np.ndarray], labels: np.ndarray, *, epochs: int, batch_size: int,
            seed: int) -> float:
        """Minibatch training on in-memory arrays; returns the last epoch's mean loss.

        The step is a tf.function traced without AutoGraph: Keras' fit() spends
        tens of seconds converting its training loop on the first epoch of
        every cycle, this traces in well under a second and runs as fast.
        """
        rng = np.random.default_rng(seed)
        n = len(labels)
        epoch_loss = float("nan")
        for _ in range(epochs):
            order = rng.permutation(n)
            epoch_loss = float(self._traced_step({k: tf.constant(features[k][order]) for k in self.names},
                                                 tf.constant(labels[order]), tf.constant(batch_size, tf.int32)))
        return epoch_loss


def train(model: keras.Model, features: Mapping[str, np.ndarray], labels: np.ndarray, *, epochs: int,
          batch_size: int, learning_rate, seed: int, model_config: Optional[Mapping[str, Any]] = None) -> float:
    """Trains `model` with a new Trainer (a fresh trace); returns the last epoch's mean loss."""
    return Trainer(model, features, labels, learning_rate, model_config).fit(features, labels, epochs=epochs,
                                                               batch_size=batch_size, seed=seed)


def transform_graph_key(transform_graph_path: str) -> Optional[str]:
    """A digest of the transform graph, or None when it has asset files.

    Two cycles' TransformGraph artifacts with the same digest compute the same
    transform (hashing has no analyzers, so every cycle's graph is the same), so a
    serving function traced for one serves the other. With assets (a vocabulary)
    the export copies them from the traced graph's folder, which retention may
    since have deleted: such a graph is never reused.

    The digest is taken from the SavedModel's `fingerprint.pb`, without its
    `saved_model_checksum`: `saved_model.pb` itself differs between two exports
    of the same transform in one process, because TF numbers its traced
    functions with a process-wide counter, so a file hash would miss every
    cycle of a long-lived controller. The program, signature, object-graph
    and checkpoint hashes do not carry those names. Without a fingerprint
    (a SavedModel written before TF 2.12) the file hash is the fallback.
    """
    root = os.path.join(transform_graph_path, "transform_fn")
    assets = os.path.join(root, "assets")
    if tf.io.gfile.exists(assets) and tf.io.gfile.listdir(assets):
        return None
    fingerprint_path = os.path.join(root, "fingerprint.pb")
    if tf.io.gfile.exists(fingerprint_path):
        from tensorflow.core.protobuf import fingerprint_pb2

        with tf.io.gfile.GFile(fingerprint_path, "rb") as f:
            fingerprint = fingerprint_pb2.FingerprintDef.FromString(f.read())
        parts = (fingerprint.graph_def_program_hash, fingerprint.signature_def_hash,
                 fingerprint.saved_object_graph_hash, fingerprint.checkpoint_hash)
        return "fingerprint:" + hashlib.sha256(",".join(map(str, parts)).encode()).hexdigest()
    with tf.io.gfile.GFile(os.path.join(root, "saved_model.pb"), "rb") as f:
        return "file:" + hashlib.sha256(f.read()).hexdigest()


def export_serving_model(model: keras.Model, tft_output, raw_label_key: str, export_dir: str,
                         trainer: Optional[Trainer] = None, transform_key: Optional[str] = None) -> None:
    """Signatures `serving_default(examples: string[None]) -> {probability: float[None, 1]}` and
    `serving_raw(<raw field>: [None], ...)`, the same over raw feature tensors (pipelines/serve/signatures.py).

    With a `trainer` whose serving function was traced for the same
    `transform_key`, that trace is reused, and after its first full export
    only the weights are written (see `_write_weights`).
    """
    if trainer is not None and transform_key is not None and trainer.serve_transform == transform_key:
        if trainer.export_template is not None:
            _write_weights(model, trainer.export_template, export_dir)
            return
        signatures = trainer.serve
    else:
        from pipelines.serve import signatures as serving_signatures

        raw_spec = serving_signatures.raw_input_spec(tft_output, raw_label_key)  # requests carry no label
        model.tft_layer = tft_output.transform_features_layer()
        feature_names = list(model.input_names)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(serialized):
            raw = tf.io.parse_example(serialized, raw_spec)
            transformed = model.tft_layer(raw)
            return {OUTPUT_KEY: model({k: transformed[k] for k in feature_names})}

        # Beside it, the same transform and model over raw feature tensors: the server skips tf.Examples.
        signatures = serving_signatures.signatures_for(serve, serving_signatures.raw_features_fn(
            model.tft_layer, model, raw_spec, OUTPUT_KEY, feature_names))
        if trainer is not None:
            trainer.serve, trainer.serve_transform, trainer.export_template = signatures, transform_key, None

    # save_traces=False: everything that loads this model (TF Serving, TFMA as
    # TF_GENERIC, tf.saved_model.load) uses the signature, and tracing every
    # layer's call for Keras' own revival costs about a second per cycle.
    # Warm starts read the weights checkpoint, not this SavedModel.
    model.save(export_dir, save_format="tf", signatures=signatures, save_traces=False)
    if trainer is not None and transform_key is not None:
        trainer.export_template = _read_template(export_dir)


_VARIABLES = os.path.join("variables", "variables")
# Written from the folder's contents by `_write_weights`, never copied.
_FINGERPRINT = "fingerprint.pb"


def _read_template(export_dir: str) -> Dict[str, Optional[bytes]]:
    """Every file and folder of a SavedModel except its weights: relative path -> bytes (None: a folder)."""
    files: Dict[str, Optional[bytes]] = {}
    for folder, subdirs, names in tf.io.gfile.walk(export_dir):
        rel = os.path.relpath(folder, export_dir)
        if rel == "variables":
            continue
        for d in subdirs:
            files[os.path.normpath(os.path.join(rel, d))] = None
        for name in names:
            path = os.path.normpath(os.path.join(rel, name))
            if path != _FINGERPRINT:
                with tf.io.gfile.GFile(os.path.join(folder, name), "rb") as f:
                    files[path] = f.read()
    return files


def _write_weights(model: keras.Model, template: Mapping[str, Optional[bytes]], export_dir: str) -> None:
    """A SavedModel of the kept model with its current weights, from the graph of its first export.

    The kept Trainer's serving graph does not change between cycles, only
    its weights do, and serializing that graph again cost about 0.2 CPU s a
    cycle, more than training on the new span. The variables of a SavedModel
    are an object-based checkpoint of its root, so a checkpoint of the model
    writes the same keys (tests/test_trainer_reuse.py compares them and the
    predictions with a full export). `saved_model.pb` is written last: a
    reader that finds it finds the rest.
    """
    tf.io.gfile.makedirs(os.path.join(export_dir, "variables"))
    tf.train.Checkpoint(model).write(os.path.join(export_dir, _VARIABLES))
    for path, content in sorted(template.items(), key=lambda item: item[0] == "saved_model.pb"):
        target = os.path.join(export_dir, path)
        if content is None:
            tf.io.gfile.makedirs(target)
        else:
            with tf.io.gfile.GFile(target, "wb") as f:
                f.write(content)
    try:
        from tensorflow.python.saved_model import fingerprinting_utils
    except ImportError:  # the fingerprint is optional; TF without it never wrote one
        return
    fingerprinting_utils.write_fingerprint(export_dir)


# The last Trainer of this process, for the next warm cycle of the same
# architecture: one entry, replaced by every cold start, so it never grows.
_reusable: Dict[str, Trainer] = {}


# The transform graph this process last loaded to transform training data,
# by its key: every cycle's TransformGraph artifact is a new folder, and
# loading the same graph again from it costs more than transforming a span.
_kept_transforms: Dict[str, Any] = {}


def _kept_transform(transform_key: Optional[str], tft_output):
    """The loaded transform for `transform_key` if this process has one, else `tft_output` (kept for next time)."""
    if transform_key is None:
        return tft_output
    if transform_key not in _kept_transforms:
        _kept_transforms.clear()
        _kept_transforms[transform_key] = tft_output
    return _kept_transforms[transform_key]


def clear_reusable_trainer() -> None:
    """Forgets everything this process keeps between cycles (the Trainer, the loaded transform, the
    transformed inputs): the next cycle builds, traces and reads from scratch, as a fresh process would."""
    _reusable.clear()
    _kept_transforms.clear()
    data.clear_kept_inputs()


def _reusable_key(config: Mapping[str, Any], seed: int) -> str:
    return json.dumps({"architecture": config.get(warm_start.ARCHITECTURE, ""), "model": config.get("model", {}),
                       "buckets": config["feature_buckets"], "numeric": config["numeric_features"], "seed": seed},
                      sort_keys=True)


def _new_models(fn_args: WarmStartFnArgs, warm: bool, reason: str):
    """The built (serving, training) models with the base weights loaded when warm; a failed load makes
    them cold, with why."""
    config = fn_args.custom_config
    serving, training = build_models(config["feature_buckets"], config["numeric_features"], config.get("model", {}),
                                     fn_args.seed)
    if warm:
        report = warm_start.load_base_weights(serving, fn_args.base_model)
        if not report.loaded:
            warm, reason = False, report.reason
    return serving, training, warm, reason


def _new_model(fn_args: WarmStartFnArgs, warm: bool, reason: str):
    serving, _, warm, reason = _new_models(fn_args, warm, reason)
    return serving, warm, reason


def _untrained(fn_args: WarmStartFnArgs, tft_output, why: str) -> TrainResult:
    """A cycle with nothing to train on: its candidate is the base model as it is (cold: a new,
    untrained model), exported as usual. The gate judges it like any candidate, and refuses an
    untrained cold one (`gate.training_checks`), so the cycle ends instead of failing on every retry."""
    model, warm, reason = _new_model(fn_args, fn_args.warm_start, fn_args.start_reason)
    export_serving_model(model, tft_output, fn_args.label_key, fn_args.serving_model_dir)
    warm_start.save_warm_start_state(model, fn_args.model_dir,
                                     architecture=fn_args.custom_config.get(warm_start.ARCHITECTURE, ""))
    return TrainResult(warm_start=warm, start_reason=f"{reason}; not trained: {why}", final_loss=float("nan"),
                       steps=0, examples=0)


def run_fn(fn_args: WarmStartFnArgs) -> TrainResult:
    import tensorflow_transform as tft

    config = fn_args.custom_config
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    transform_key = transform_graph_key(fn_args.transform_graph_path)
    salt = str(max(i.span for i in fn_args.training_inputs))
    try:
        features, labels, counts, provenance = data.load_transformed(
            fn_args.training_inputs, _kept_transform(transform_key, tft_output), LABEL_KEY, fn_args.id_key, salt,
            transform_key=transform_key, provenance=True)
    except data.NoTrainingExamples as e:
        return _untrained(fn_args, tft_output, str(e))
    steps = -(-len(labels) // fn_args.batch_size) * fn_args.epochs
    learning_rate = _learning_rate(fn_args, steps)
    # A schedule is part of the traced step: only a constant rate lets the next cycle reuse it.
    reusable = not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    key = _reusable_key(config, fn_args.seed)

    warm, reason = fn_args.warm_start, fn_args.start_reason
    trainer = _reusable.get(key) if (warm and reusable) else None
    if trainer is not None and trainer.accepts(features, labels):
        report = warm_start.load_base_weights(trainer.serving_model, fn_args.base_model)
        if report.loaded:
            trainer.reset_optimizer(learning_rate)
        else:
            trainer = None
    else:
        trainer = None
    model_config = config.get("model", {})
    if trainer is None:
        _reusable.clear()
        serving, training, warm, reason = _new_models(fn_args, warm, reason)
    else:
        serving, training = trainer.serving_model, trainer.model
    if _count_table(serving) is not None:
        features = {**features, COUNT_INPUT: count_training_features(
            serving, model_config, config["feature_buckets"], features, labels, provenance)}
    if trainer is None:
        trainer = Trainer(training, features, labels, learning_rate, model_config, serving_model=serving)
        if reusable:
            _reusable[key] = trainer
    final_loss = trainer.fit(features, labels, epochs=fn_args.epochs, batch_size=fn_args.batch_size,
                             seed=fn_args.seed)

    export_serving_model(trainer.serving_model, tft_output, fn_args.label_key, fn_args.serving_model_dir,
                         trainer=trainer, transform_key=transform_key if reusable else None)
    warm_start.save_warm_start_state(trainer.serving_model, fn_args.model_dir,
                                     architecture=config.get(warm_start.ARCHITECTURE, ""))
    return TrainResult(warm_start=warm, start_reason=reason, final_loss=final_loss, steps=steps,
                       examples=len(labels), examples_by_role=counts,
                       positives_by_role=data.positives_by_role(labels, provenance))
