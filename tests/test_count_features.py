"""Learning from counts (`trainer.model.counts`): the count table inside the default model.

No example's features hold its own label; serving looks up the same table the
training features came from; a warm start carries the table, and a replayed
example is not counted twice. Expected values are worked out by hand below
(decay 0.5 per span, prior weight 2), not by the code under test.
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from components.event_schema import ad_click_schema
from components.warm_start_trainer import warm_start
from components.warm_start_trainer.data import Provenance
from pipelines import ads_model
from pipelines.config import TransformConfig
from transforms import stream

SCHEMA = ad_click_schema()
TRANSFORM = TransformConfig()
BUCKETS = stream.hash_buckets(SCHEMA, TRANSFORM)
NUMERIC = stream.numeric_features(SCHEMA, TRANSFORM)
# One counted key (the ad), one decay, so every expected value is a line of arithmetic.
CONFIG = {"counts": True, "crosses": [], "count_features": ["ad_id_xf"], "count_decays": [0.5], "count_prior": 2.0}


def _logit(p):
    return math.log(p) - math.log(1 - p)


def _expected(n, pos, total_n, total_pos, prior=2.0):
    """The feature of an id with `n` examples and `pos` positives, by the definition: its smoothed
    log-odds against the stream's."""
    rate = (total_pos + 1) / (total_n + 2)
    own = (pos + prior * rate) / (n + prior)
    return [_logit(own) - _logit(rate)]


def _examples(ads, labels, span, role="new"):
    n = len(ads)
    features = {k: np.zeros(n, np.int64) for k in BUCKETS}
    features["ad_id_xf"] = np.array(ads, np.int64)
    features["user_id_xf"] = np.arange(n, dtype=np.int64)
    for k in NUMERIC:
        features[k] = np.zeros(n, np.float32)
    return features, np.array(labels, np.float32), Provenance(np.full(n, span, np.int64), np.full(n, role, object))


def _concat(*parts):
    features = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    labels = np.concatenate([p[1] for p in parts])
    return features, labels, Provenance(np.concatenate([p[2].span for p in parts]),
                                        np.concatenate([p[2].role for p in parts]))


def _counts(serving, features, labels, provenance):
    return ads_model.count_training_features(serving, CONFIG, BUCKETS, features, labels, provenance)


def _table(serving):
    table = next(layer for layer in serving.layers if isinstance(layer, ads_model.CountTable))
    return table, table.tables["ad_id_xf"].numpy(), table.total.numpy(), int(table.span.numpy())


SPAN1 = ([3, 3, 3, 3, 5, 5], [1, 0, 0, 0, 1, 1])


def _counted_span1():
    """A model whose table has counted span 1 (a cold first cycle): ad 3 (4, 1), ad 5 (2, 2), of (6, 3)."""
    serving, training = ads_model.build_models(BUCKETS, NUMERIC, CONFIG, 0)
    first = _counts(serving, *_examples(*SPAN1, 1))
    return serving, training, first


def test_a_first_cycle_counts_its_spans_but_gives_them_no_count_features():
    serving, training = ads_model.build_models(BUCKETS, NUMERIC, CONFIG, 0)
    got = _counts(serving, *_concat(_examples(*SPAN1, 1), _examples([3, 3, 7], [1, 0, 1], 2)))
    # An empty table at the start: span 2 does not see span 1 (a first model would learn on count
    # features of one span and be judged and served on those of both).
    np.testing.assert_allclose(got, 0.0, atol=1e-6)
    _, ad, total, span = _table(serving)
    np.testing.assert_allclose(ad[3], [4, 1.5])  # (4, 1) decayed once, plus span 2's (2, 1)
    np.testing.assert_allclose(total, [6, 3.5])
    assert span == 2
    # And the table moves no prediction of a model that has not learned on count features: the count
    # weights start at zero, the first hidden layer's included.
    x, _, _ = _examples([3, 5, 7], [0, 0, 0], 3)
    looked_up = serving.get_layer("count_table")({"ad_id_xf": tf.constant(x["ad_id_xf"])}).numpy()
    assert np.abs(looked_up).max() > 0.1
    np.testing.assert_allclose(serving(x).numpy(),
                               training({**x, ads_model.COUNT_INPUT: np.zeros_like(looked_up)}).numpy(), rtol=1e-6)


def test_each_example_sees_only_the_spans_before_its_own():
    serving, _, first = _counted_span1()
    np.testing.assert_allclose(first, 0.0, atol=1e-6)
    span2 = _examples([3, 3, 7], [1, 0, 1], 2)
    span3 = _examples([3], [0], 3)
    got = _counts(serving, *_concat(span2, span3))
    # Span 2 sees span 1 as serving would right after it: ad 3 (4, 1), in total (6, 3); ad 7 nothing.
    np.testing.assert_allclose(got[0], _expected(4, 1, 6, 3), rtol=1e-5)
    np.testing.assert_allclose(got[1], _expected(4, 1, 6, 3), rtol=1e-5)
    np.testing.assert_allclose(got[2], [0.0], atol=1e-6)
    # Span 3 sees spans 1 and 2: ad 3 (4, 1) decayed once plus span 2's (2, 1), of (3, 1.5) + (3, 2).
    np.testing.assert_allclose(got[3], _expected(4, 1.5, 6, 3.5), rtol=1e-5)
    _, ad, total, span = _table(serving)
    np.testing.assert_allclose(ad[3], [3, 0.75])
    np.testing.assert_allclose(ad[5], [0.5, 0.5])
    np.testing.assert_allclose(ad[7], [0.5, 0.5])
    np.testing.assert_allclose(total, [4, 1.75])
    assert span == 3

    # No example sees its own label: flip span 3's label, its features stay; the table does not.
    other, _, _ = _counted_span1()
    flipped = (span3[0], 1 - span3[1], span3[2])
    np.testing.assert_allclose(_counts(other, *_concat(span2, flipped)), got, rtol=1e-6)
    np.testing.assert_allclose(_table(other)[1][3], [3, 1.75])


def test_serving_looks_up_the_table_training_features_came_from(tmp_path):
    serving, training, _ = _counted_span1()
    _counts(serving, *_examples([3, 3, 7], [1, 0, 1], 2))
    # The next span's event of ad 3 sees the table as span 2 left it: ad 3 (4, 1.5), in total (6, 3.5).
    x, _, _ = _examples([3], [0], 3)
    table = serving.get_layer("count_table")
    expected = np.array([_expected(4, 1.5, 6, 3.5)], np.float32)
    np.testing.assert_allclose(table({"ad_id_xf": tf.constant(x["ad_id_xf"])}).numpy(), expected, rtol=1e-5)
    # The two models share every weight but the table: serving is training fed the looked-up features.
    np.testing.assert_allclose(serving(x).numpy(), training({**x, ads_model.COUNT_INPUT: expected}).numpy(),
                               rtol=1e-5)
    assert {v.name for v in serving.weights} - {v.name for v in training.weights} == \
        {v.name for v in table.weights}
    assert not table.trainable_weights


def test_a_warm_start_carries_the_table_and_a_replayed_example_is_not_counted_twice(tmp_path):
    base, _ = ads_model.build_models(BUCKETS, NUMERIC, CONFIG, 0)
    _counts(base, *_concat(_examples([3, 3, 3, 3, 5, 5], [1, 0, 0, 0, 1, 1], 1),
                           _examples([3, 3, 7], [1, 0, 1], 2)))
    warm_start.save_warm_start_state(base, str(tmp_path), architecture="a")
    warm, _ = ads_model.build_models(BUCKETS, NUMERIC, CONFIG, 1)
    assert warm_start.load_base_weights(warm, str(tmp_path)).loaded
    np.testing.assert_array_equal(_table(warm)[1], _table(base)[1])

    # Cycle 3: span 3 new, and a replayed example of span 1 (ad 5, clicked), counted then.
    new = _examples([7], [0], 3)
    replay = _examples([5], [1], 1, role="replay")
    got = _counts(warm, *_concat(new, replay))
    # Ad 7 as span 2 left it: (1, 1) of (6, 3.5).
    np.testing.assert_allclose(got[0], _expected(1, 1, 6, 3.5), rtol=1e-5)
    # The replayed example: ad 5's (1, 1) less its own share, (1, 1) decayed once: nothing of its own label.
    np.testing.assert_allclose(got[1], _expected(0.5, 0.5, 6, 3.5), rtol=1e-5)
    _, ad, total, span = _table(warm)
    np.testing.assert_allclose(ad[5], [0.5, 0.5])  # only decayed: not counted again
    np.testing.assert_allclose(ad[7], [1.5, 0.5])  # (1, 1) decayed, plus span 3's (1, 0)
    np.testing.assert_allclose(total, [4, 1.75])
    assert span == 3


def test_count_settings_are_checked():
    for bad, match in (({"counts": "yes"}, "counts must be true or false"),
                       ({"counts": True, "count_decays": [0.0]}, "count_decays"),
                       ({"counts": True, "count_prior": 0}, "count_prior"),
                       ({"counts": True, "count_features": ["nope_xf"]}, "count_features")):
        with pytest.raises(ValueError, match=match):
            ads_model.build_models(BUCKETS, NUMERIC, bad, 0)
    # Off: one model, no table.
    serving, training = ads_model.build_models(BUCKETS, NUMERIC, {}, 0)
    assert serving is training and "count_table" not in {layer.name for layer in serving.layers}
