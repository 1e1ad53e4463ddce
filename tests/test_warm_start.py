"""Warm start really continues: the decision, the inputs, the weights, and the learning curve.

These use the real default model and the real transforms (applied eagerly:
they have no analyzers) on the built-in drifting stream, without TFX.
"""

import numpy as np
import pytest
import tensorflow as tf

from components.event_schema import ad_click_schema
from components.warm_start_trainer import warm_start
from components.warm_start_trainer.training_inputs import eval_files, plan_training_inputs
from pipelines import ads_model
from pipelines.config import TransformConfig
from pipelines.simulator import SimulatorConfig, simulate
from transforms import stream

SCHEMA = ad_click_schema()
TRANSFORM = TransformConfig()
MODEL_CONFIG = {"embedding_dim": 8, "hidden_units": [32, 16]}


def fp(**overrides):
    args = dict(feature_set={"a": "string:categorical"}, transform="t1", transformed_feature_spec={"a_xf": "int"},
                run_fn="m.run_fn", model_config=MODEL_CONFIG, feature_buckets={"a_xf": 10})
    args.update(overrides)
    return warm_start.fingerprints(**args)


def test_decide_start_names_what_changed():
    base = fp()
    assert warm_start.decide_start(None, {}, base) == (False, "cold start: no blessed base model yet")
    assert warm_start.decide_start(7, base, fp()) == (True, "warm start from model 7")
    warm, reason = warm_start.decide_start(7, base, fp(feature_set={"a": "string:categorical", "b": "int:numeric"}))
    assert not warm and reason == "cold start: the feature set changed since base model 7"
    warm, reason = warm_start.decide_start(7, base, fp(transform="t2", model_config={"embedding_dim": 16}))
    assert not warm and "the transform changed and the model architecture changed" in reason
    assert not warm_start.decide_start(7, {}, base)[0]  # a base without fingerprints is not trusted


def test_training_inputs_hold_out_only_the_newest_eval_split():
    inputs = plan_training_inputs(current=[(11, "/s11"), (10, "/s10")], earlier=[(7, "/s7"), (8, "/s8"), (9, "/s9"),
                                                                                  (10, "/s10")],
                                  replay_spans=2, replay_fraction=0.1)
    got = {(i.span, i.split, i.fraction, i.role) for i in inputs}
    assert got == {(10, "train", 1.0, "new"), (11, "train", 1.0, "new"), (10, "eval", 1.0, "new"),
                   (9, "eval", 1.0, "previous_eval"), (8, "train", 0.1, "replay"), (9, "train", 0.1, "replay")}
    assert eval_files([(11, "/s11"), (10, "/s10")]) == ["/s11/Split-eval/*"]
    cold = plan_training_inputs([(11, "/s11")], [(9, "/s9"), (10, "/s10")], replay_spans=5, replay_fraction=0.1,
                                warm=False)
    assert {(i.span, i.fraction) for i in cold if i.role == "replay"} == {(9, 1.0), (10, 1.0)}
    with pytest.raises(ValueError):
        plan_training_inputs([], [], 1, 0.1)


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    """Six 10-minute spans of the drifting stream, transformed, as (features, labels) arrays."""
    log = str(tmp_path_factory.mktemp("log"))
    simulate(log, SimulatorConfig(minutes=60, events_per_minute=600, seed=3, hot_ad_minute=35))
    events = [SCHEMA.parse(line) for path in sorted(tf.io.gfile.glob(log + "/*.jsonl"))
              for line in open(path, "rb") if line.strip()]
    events.sort(key=lambda e: e["event_time"])
    t0 = events[0]["event_time"]
    config = stream.custom_config(SCHEMA, TRANSFORM)
    by_span = {}
    for e in events:
        by_span.setdefault((e["event_time"] - t0) // 600_000, []).append(e)
    out = []
    for k in sorted(by_span):
        batch = by_span[k]
        inputs = {f.name: tf.constant([[e[f.name]] for e in batch]) for f in SCHEMA.fields}
        transformed = stream.preprocessing_fn(inputs, config)
        label = transformed.pop("label").numpy()
        out.append(({k2: v.numpy() for k2, v in transformed.items()}, label))
    return out


def new_model(seed=0, config=MODEL_CONFIG):
    return ads_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM), stream.numeric_features(SCHEMA, TRANSFORM),
                                 config, seed)


# The learning-curve test trains with Keras' compile/fit and one Adam over every variable, which is how the
# deep part trains, not the wide one (AdaGrad, ads_model.Trainer): it measures the deep model's warm start.
# The wide part's is tests/test_wide_deep.py's: its weights carry over bit for bit.
DEEP_ONLY = dict(MODEL_CONFIG, wide=False)


def compile_model(model, lr):
    import tf_keras as keras
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.BinaryCrossentropy())
    return model


def test_loaded_weights_equal_the_base_models(tmp_path, spans):
    base = compile_model(new_model(seed=1), 0.01)
    x, y = spans[0]
    base.train_on_batch({k: v[:512] for k, v in x.items()}, y[:512])
    warm_start.save_warm_start_state(base, str(tmp_path), architecture="a")
    fresh = new_model(seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), base.get_weights()))
    report = warm_start.load_base_weights(fresh, str(tmp_path))
    assert report.loaded and report.variables == len(base.weights)
    for a, b in zip(fresh.get_weights(), base.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_shape_mismatch_is_a_cold_start_not_a_crash(tmp_path, spans):
    base = new_model()
    warm_start.save_warm_start_state(base, str(tmp_path), architecture="a")
    wider = ads_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM), stream.numeric_features(SCHEMA, TRANSFORM),
                                  {"embedding_dim": 4, "hidden_units": [32, 16]}, 0)
    report = warm_start.load_base_weights(wider, str(tmp_path))
    assert not report.loaded and "shapes differ" in report.reason
    fewer = ads_model.build_model({"ad_id_xf": 1024}, [], MODEL_CONFIG, 0)
    report = warm_start.load_base_weights(fewer, str(tmp_path))
    assert not report.loaded and "variables differ" in report.reason
    assert not warm_start.load_base_weights(fewer, str(tmp_path / "nothing")).loaded


def test_warm_start_reaches_the_cold_models_loss_in_far_fewer_steps(tmp_path, spans):
    """Trained on spans 0-4, a warm model starts span 5 where a cold one needs many steps to get."""
    base = compile_model(new_model(seed=1, config=DEEP_ONLY), 0.01)
    for x, y in spans[:5]:
        base.fit(x, y, epochs=2, batch_size=256, verbose=0)
    warm_start.save_warm_start_state(base, str(tmp_path), architecture="a")
    x, y = spans[5]
    cut = int(len(y) * 0.8)
    train = ({k: v[:cut] for k, v in x.items()}, y[:cut])
    held = ({k: v[cut:] for k, v in x.items()}, y[cut:])

    import tf_keras as keras
    bce = keras.losses.BinaryCrossentropy()

    def curve(model, steps):
        losses = []
        ds = tf.data.Dataset.from_tensor_slices(train).shuffle(10_000, seed=0).repeat().batch(128)
        it = iter(ds)
        for _ in range(steps):
            xb, yb = next(it)
            model.train_on_batch(xb, yb)
            losses.append(float(bce(held[1], model(held[0], training=False)[:, 0])))
        return losses

    cold = curve(compile_model(new_model(seed=5, config=DEEP_ONLY), 0.01), 60)
    warm_model = compile_model(new_model(seed=5, config=DEEP_ONLY), 0.003)
    assert warm_start.load_base_weights(warm_model, str(tmp_path)).loaded
    warm = curve(warm_model, 60)
    target = cold[-1]
    steps_cold = next(i for i, v in enumerate(cold) if v <= target * 1.001) + 1
    steps_warm = next((i for i, v in enumerate(warm) if v <= target * 1.001), 10 ** 6) + 1
    assert steps_warm * 4 <= steps_cold, (steps_warm, steps_cold, warm[:5], cold[-5:])
    assert min(warm) <= target


def test_previous_eval_split_is_the_one_the_base_model_was_judged_on():
    # Span 9's candidate was rejected; the base model was judged on span 8.
    inputs = plan_training_inputs([(10, "/s10")], [(7, "/s7"), (8, "/s8"), (9, "/s9")], replay_spans=3,
                                  replay_fraction=0.1, previous_eval_span=8)
    assert [(i.span, i.split) for i in inputs if i.role == "previous_eval"] == [(8, "eval")]
    assert {i.span for i in inputs if i.role == "replay"} == {7, 8, 9}
