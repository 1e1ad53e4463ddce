"""The default model's wide part: it continues across warm cycles, its crosses hash stably, and it learns.

Real default model, real transforms (applied eagerly: they have no analyzers)
on the built-in drifting stream, without TFX; the export is checked against a
real transform graph in tests/test_trainer_reuse.py.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components.event_schema import ad_click_schema
from components.warm_start_trainer import warm_start
from pipelines import ads_model
from pipelines.config import TransformConfig
from pipelines.simulator import SimulatorConfig, simulate
from transforms import stream

SCHEMA = ad_click_schema()
TRANSFORM = TransformConfig()
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    """Four 10-minute spans of the drifting stream, transformed, as (features, labels) arrays."""
    log = str(tmp_path_factory.mktemp("log"))
    simulate(log, SimulatorConfig(minutes=40, events_per_minute=500, seed=5, hot_ad_minute=1000))
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


def _categorical(features):
    return sorted(k for k, v in features.items() if v.dtype == np.int64)


def _model(model_config, seed=0):
    return ads_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM), stream.numeric_features(SCHEMA, TRANSFORM),
                                 model_config, seed)


def _auc(labels, scores):
    from sklearn.metrics import roc_auc_score
    return roc_auc_score(labels, scores)


def test_the_default_model_has_a_wide_part_and_the_knob_turns_it_off():
    buckets = stream.hash_buckets(SCHEMA, TRANSFORM)
    names = sorted(buckets)
    pairs = {f"wide_{a}_x_{b}" for i, a in enumerate(names) for b in names[i + 1:]}
    wide = _model({})  # the default: every feature and every pair of features crossed
    assert {layer.name for layer in wide.layers if layer.name.startswith("wide_")} == \
        {f"wide_{k}" for k in buckets} | pairs
    for name, n in buckets.items():
        assert wide.get_layer(f"wide_{name}").get_weights()[0].shape == (n, 1)
    for pair in pairs:
        assert wide.get_layer(pair).get_weights()[0].shape == (ads_model.WIDE_DEFAULTS["cross_buckets"], 1)
    no_crosses = _model({"crosses": []})
    assert {layer.name for layer in no_crosses.layers if layer.name.startswith("wide_")} == \
        {f"wide_{k}" for k in buckets}
    deep = _model({"wide": False})
    assert not [layer for layer in deep.layers if layer.name.startswith("wide_")]
    with pytest.raises(ValueError, match="not hashed categorical features"):
        _model({"crosses": [["user_id_xf", "nonexistent"]]})


def test_a_warm_cycle_continues_the_wide_weights(tmp_path, spans):
    """Cycle 1 trains on a span; cycle 2, warm, on the next span without one ad: that ad's linear
    weight is carried bit for bit, and the weights of the ads it saw moved from where cycle 1 left them."""
    config = {"crosses": [["user_id_xf", "ad_id_xf"]], "cross_buckets": 4099}
    (x1, y1), (x2, y2) = spans[0], spans[1]
    base = _model(config, seed=1)
    ads_model.train(base, x1, y1, epochs=1, batch_size=256, learning_rate=0.01, seed=0, model_config=config)
    base_ad = base.get_layer("wide_ad_id_xf").get_weights()[0][:, 0].copy()
    seen_1 = set(np.unique(x1["ad_id_xf"]))
    # An ad cycle 1 learned from, dropped from cycle 2's span.
    counts = {a: int(np.sum(x2["ad_id_xf"] == a)) for a in seen_1}
    dropped = max((a for a in counts if counts[a] > 0), key=lambda a: counts[a])
    assert base_ad[dropped] != 0.0
    keep = x2["ad_id_xf"] != dropped
    x2 = {k: v[keep] for k, v in x2.items()}
    y2 = y2[keep]
    warm_start.save_warm_start_state(base, str(tmp_path), architecture="a")

    warm = _model(config, seed=2)
    assert warm_start.load_base_weights(warm, str(tmp_path)).loaded
    ads_model.train(warm, x2, y2, epochs=2, batch_size=256, learning_rate=0.005, seed=1, model_config=config)
    after = warm.get_layer("wide_ad_id_xf").get_weights()[0][:, 0]
    assert after[dropped] == base_ad[dropped]  # bit for bit: untouched by cycle 2, continued from cycle 1
    seen_2 = sorted(set(np.unique(x2["ad_id_xf"])))
    assert np.all(after[seen_2] != base_ad[seen_2])
    never = sorted(set(range(len(after))) - seen_1 - set(seen_2))
    assert np.all(after[never] == 0.0)


_CROSS_SCRIPT = """
import json, sys
import tensorflow as tf
from pipelines import ads_model
a = tf.constant([0, 1, 7, 123456, 99], tf.int64)
b = tf.constant([0, 2, 7, 654321, 3], tf.int64)
print(json.dumps(ads_model.HashedCross(100003)([a, b]).numpy().tolist()))
"""


def test_crosses_hash_to_the_same_bucket_in_every_process():
    runs = []
    for seed in ("1", "2"):  # a different Python hash seed each time: the bucket must not depend on it
        env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "PYTHONHASHSEED": seed, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run([sys.executable, "-c", _CROSS_SCRIPT], env=env, cwd=REPO_ROOT, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        runs.append(json.loads(out))
    assert runs[0] == runs[1]
    assert all(0 <= v < 100003 for v in runs[0]) and len(set(runs[0])) == 5
    # The pair, not each id: (1, 2) and (2, 1) differ; and two builds of the model agree on every pair.
    cross = ads_model.HashedCross(100003)
    assert int(cross([tf.constant([1], tf.int64), tf.constant([2], tf.int64)])[0]) != \
        int(cross([tf.constant([2], tf.int64), tf.constant([1], tf.int64)])[0])
    assert cross([tf.constant([0, 1, 7, 123456, 99], tf.int64),
                  tf.constant([0, 2, 7, 654321, 3], tf.int64)]).numpy().tolist() == runs[0]


def test_the_model_beats_a_constant_predictor_on_the_next_span(spans):
    """Trained cold on one span, warm on the next, it ranks the span after that (a constant ranks at 0.5)."""
    config = {"crosses": [["user_id_xf", "ad_id_xf"]]}
    model = _model(config)
    trainer = ads_model.Trainer(model, spans[0][0], spans[0][1], 0.01, config)
    trainer.fit(*spans[0], epochs=3, batch_size=256, seed=0)
    trainer.reset_optimizer(0.005)
    trainer.fit(*spans[1], epochs=2, batch_size=256, seed=1)
    x3, y3 = spans[2]
    auc = _auc(y3, model(x3)[:, 0].numpy())
    assert auc > 0.6, auc


def test_reset_optimizer_restores_every_slot_as_built(spans):
    """AdaGrad's accumulators start above 0: a reset puts them back there, so a kept Trainer's
    warm cycle trains as a fresh one does."""
    x, y = spans[0]
    trainer = ads_model.Trainer(_model({}), x, y, 0.01, {})
    built = [v.numpy().copy() for v in trainer.wide_optimizer.variables]
    trainer.fit(x, y, epochs=1, batch_size=256, seed=0)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(built, trainer.wide_optimizer.variables))
    trainer.reset_optimizer(0.005)
    for a, v in zip(built, trainer.wide_optimizer.variables):
        np.testing.assert_array_equal(a, v.numpy())
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.005)


def test_the_fm_term_is_the_sum_of_every_pairs_dot_product():
    """PairwiseDot against the definition, pair by pair in numpy (not its 0.5 * (sum^2 - sum of squares))."""
    rng = np.random.default_rng(0)
    embeddings = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(5)]
    expected = np.zeros((4, 1), np.float32)
    for i in range(5):
        for j in range(i + 1, 5):
            expected[:, 0] += np.sum(embeddings[i] * embeddings[j], axis=1)
    got = ads_model.PairwiseDot()([tf.constant(e) for e in embeddings]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_fm_knob_adds_an_interaction_logit_that_reads_the_embeddings(tmp_path, spans):
    """`fm: true` adds the interaction term over the deep part's embeddings (no weights of its own), with
    or without the wide part; a warm start of the same architecture carries the embeddings it uses."""
    x, y = spans[0]
    for config in ({"fm": True}, {"fm": True, "wide": False}):
        model = _model(config)
        fm = model.get_layer("fm_logit")
        assert not fm.weights
        assert len(fm.input) == len(stream.hash_buckets(SCHEMA, TRANSFORM))
        assert {t.node.layer.name for t in fm.input} == {f"emb_{k}" for k in stream.hash_buckets(SCHEMA, TRANSFORM)}
    assert "fm_logit" not in {layer.name for layer in _model({}).layers}
    with pytest.raises(ValueError, match="trainer.model.fm must be true or false"):
        _model({"fm": "yes"})
    config = {"fm": True, "crosses": []}
    base = _model(config, seed=1)
    ads_model.train(base, x, y, epochs=1, batch_size=256, learning_rate=0.01, seed=0, model_config=config)
    warm_start.save_warm_start_state(base, str(tmp_path), architecture="a")
    warm = _model(config, seed=2)
    assert warm_start.load_base_weights(warm, str(tmp_path)).loaded
    sample = {k: v[:50] for k, v in x.items()}
    np.testing.assert_allclose(warm(sample).numpy(), base(sample).numpy(), rtol=1e-6)


def test_a_value_never_seen_after_many_cycles_does_not_move_the_mean_prediction(spans):
    """The soak's stall, in small. Every span so far had one hour of day, so that hour's wide weight, its
    crosses and its embedding were in every example. After many warm cycles (40, over the fixture's three
    later spans: more than the soak's 60 short spans in examples seen per hour), the model must hold the
    base rate in its bias and in what varies, not in the weights of an always-present value: the same
    examples with an hour it has never seen get about the same mean prediction. Without the penalties
    (`wide_l2` and `embedding_l2` at 0) it fell from 0.112 to 0.027 here, as the soak's 0.100 fell to
    0.015; with the wide penalty alone, the MLP still moved it (to 0.63x on a longer stream)."""
    from pipelines.config import TrainerConfig

    hours = set().union(*(np.unique(x["hour_of_day_xf"]) for x, _ in spans))
    assert len(hours) == 1, hours  # the fixture's 40 minutes lie within one hour
    config = {**TrainerConfig().model, "counts": False}  # the default model's settings, its count table aside
    model = _model(config)
    x0, y0 = spans[0]
    trainer = ads_model.Trainer(model, x0, y0, 0.01, config)
    trainer.fit(x0, y0, epochs=2, batch_size=256, seed=0)
    for cycle in range(40):  # warm cycles, one epoch each, as the default trains
        x, y = spans[1 + cycle % 3]
        trainer.reset_optimizer(0.005)
        trainer.fit(x, y, epochs=1, batch_size=256, seed=cycle + 1)
    x, y = spans[3]
    unseen = (int(next(iter(hours))) + 1) % stream.hash_buckets(SCHEMA, TRANSFORM)["hour_of_day_xf"]
    seen_mean = float(np.mean(model(x)[:, 0].numpy()))
    unseen_mean = float(np.mean(model({**x, "hour_of_day_xf": np.full_like(x["hour_of_day_xf"], unseen)})[:, 0]))
    assert abs(seen_mean - float(np.mean(y))) < 0.4 * float(np.mean(y)), (seen_mean, float(np.mean(y)))
    # Within a quarter either way (a logit change under about 0.3).
    assert 0.75 < unseen_mean / seen_mean < 1.33, (seen_mean, unseen_mean)


def test_the_penalties_are_on_the_weights_each_example_looks_up(spans):
    """`wide_l2` (`embedding_l2`) times the batch mean of the squared wide weights (embedding entries)
    each example looks up, computed here by hand from the layers' tables; the output does not change."""
    x, y = spans[0]
    config = {"crosses": [["user_id_xf", "ad_id_xf"]], "cross_buckets": 4099, "wide_l2": 0.5, "embedding_l2": 0.25}
    model = _model(config)
    ads_model.Trainer(model, x, y, 0.01, config)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name.startswith(("wide_", "emb_")):
            table = layer.get_weights()[0]
            layer.set_weights([rng.normal(size=table.shape).astype(table.dtype)])
    batch = {k: v[:64] for k, v in x.items()}
    out = model(batch, training=True)[:, 0].numpy()
    penalty = float(tf.add_n(model.losses))
    cross = ads_model.HashedCross(4099)([tf.constant(batch["user_id_xf"]), tf.constant(batch["ad_id_xf"])]).numpy()
    expected = 0.0
    for layer in model.layers:
        for prefix, l2 in (("wide_", 0.5), ("emb_", 0.25)):
            if layer.name.startswith(prefix):
                feature = layer.name[len(prefix):]
                ids = cross if feature == "user_id_xf_x_ad_id_xf" else batch[feature]
                rows = layer.get_weights()[0][ids]
                expected += l2 * float(np.mean(np.sum(rows ** 2, axis=1)))
    assert penalty == pytest.approx(expected, rel=1e-5)
    ads_model._regularise(model, 0.0, 0.0)
    np.testing.assert_allclose(model(batch, training=True)[:, 0].numpy(), out, rtol=1e-6)
    assert not model.losses
    for bad in ({"wide_l2": -1}, {"embedding_l2": "0.1"}):
        with pytest.raises(ValueError, match="must be a number >= 0"):
            _model(bad)
