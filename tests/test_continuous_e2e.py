"""The continuous-training cycle end to end, through TFX LocalDagRunner on real parts.

The five cycles are run once per session by the `continuous_run` fixture in
conftest.py (shared with the lineage and status tests); see its docstring.
"""
import json
import math
import os

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(continuous_run):
    return continuous_run


def models_by_id(config):
    from pipelines.metadata import open_store, prop

    store = open_store(config.metadata_connection)
    return {m.id: {k: prop(m, k) for k in m.custom_properties} | {"uri": m.uri}
            for m in store.get_artifacts_by_type("Model")}


def test_ml_metadata_is_on_the_backend_the_session_picked(run, metadata_backend):
    # With --metadata mysql the five TFX cycles ran with ML Metadata on MariaDB: no SQLite file at all.
    config = run["config"]
    assert config.metadata_connection.kind == metadata_backend
    assert os.path.exists(config.metadata_path) == (metadata_backend == "sqlite")
    assert models_by_id(config)


def test_first_model_is_cold_and_later_ones_warm(run):
    r1, r2, r3, r4, _ = run["reports"]
    assert len(r1.spans) == 3 and r1.start == "cold" and r1.start_reason == "cold start: no blessed base model yet"
    assert r1.blessed and "first model, no baseline" in r1.reason and r1.pushed_version == "1"
    assert r2.spans == [r1.spans[-1] + 1] and r2.start == "warm" and r2.start_reason == f"warm start from model {r1.model_id}"
    assert r2.blessed and r2.baseline_auc is not None and r2.pushed_version == "2"
    assert r4.start == "warm" and r4.blessed and r4.pushed_version == "3"


def test_the_label_shift_check_reads_the_recent_label_rate_the_trainer_recorded(run):
    """The gate compares each span's label rate with the serving model's prediction and with the label rate
    of the vetted spans the candidate trained on (recorded by WarmStartTrainer): the sound span passes
    against both, the poisoned one (every label flipped) fails against both."""
    from pipelines.metadata import open_store, prop

    r1, r2, r3, r4, _ = run["reports"]
    store = open_store(run["config"].metadata_connection)
    verdicts = {int(prop(b, "current_model_id")): json.loads(prop(b, "verdict_json"))
                for b in store.get_artifacts_by_type("ModelBlessing")}

    def label_shift(model_id):
        return next(c for c in verdicts[model_id]["checks"] if c["name"] == "max_label_shift")

    sound, poisoned = label_shift(r4.model_id), label_shift(r3.model_id)
    assert sound["passed"] and "the recent spans' label rate" in sound["message"], sound
    assert not poisoned["passed"] and "the recent spans' label rate" in poisoned["message"], poisoned
    assert poisoned["value"] > poisoned["threshold"] >= 1.0


def test_poisoned_span_is_not_blessed_and_serving_stays(run):

    r1, r2, r3, r4, _ = run["reports"]
    assert r3.trained and r3.start == "warm"
    assert r3.blessed is False and "not blessed" in r3.reason and "AUC" in r3.reason
    assert r3.candidate_auc < 0.5  # flipped labels: the eval split itself is poisoned
    assert r3.pushed_version is None
    # The rejected model is nobody's base: cycle 4 continues model 2.
    assert r4.start_reason == f"warm start from model {r2.model_id}"
    assert run["before_rollback"] == [1, 2, 3]


def test_lineage_chain_in_mlmd(run):
    r1, r2, r3, r4, _ = run["reports"]
    models = models_by_id(run["config"])
    chain, model_id = [], r4.model_id
    while model_id != -1:
        chain.append(model_id)
        model_id = models[model_id]["base_model_id"]
    assert chain == [r4.model_id, r2.model_id, r1.model_id]
    assert models[r1.model_id]["start"] == "cold"
    for m in (models[i] for i in chain):
        assert m["trained_examples"] > 0 and m["train_wall_seconds"] > 0 and m["train_cpu_seconds"] > 0
        assert math.isfinite(m["final_loss"]) and m["final_loss"] > 0
        assert json.loads(m["trained_spans"])
    roles = json.loads(models[r4.model_id]["trained_examples_by_role"])
    assert roles["new"] > 0 and roles["previous_eval"] > 0 and roles["replay"] > 0
    positives = json.loads(models[r4.model_id]["trained_positives_by_role"])
    assert positives.keys() == roles.keys() and all(0 <= positives[r] <= roles[r] for r in roles), (positives, roles)
    assert 0 < sum(positives.values()) < sum(roles.values())
    # Cycle 4's "previous eval" is the span model 2 was judged on, and the
    # poisoned span is quarantined: neither trained on again nor replayed.
    inputs = json.loads(models[r4.model_id]["training_inputs"])
    assert [i["span"] for i in inputs if i["role"] == "previous_eval"] == [r2.spans[-1]]
    assert r3.spans[0] not in {i["span"] for i in inputs}


def test_serving_only_ever_holds_complete_loadable_versions(run):
    import tensorflow as tf

    from components.blessing_pusher import serving

    serving_dir = run["config"].serving_dir
    entries = sorted(os.listdir(serving_dir))
    assert [e for e in entries if not e.startswith(".tmp-")] == [str(v) for v in serving.versions(serving_dir)]
    for version in serving.versions(serving_dir):
        path = os.path.join(serving_dir, str(version))
        assert os.path.exists(os.path.join(path, "saved_model.pb"))
        assert "serving_default" in tf.saved_model.load(path).signatures


def test_rollback_is_atomic_and_recorded(run):
    from components.blessing_pusher import serving
    from pipelines.metadata import open_store, prop

    config, rolled = run["config"], run["rolled"]
    assert (rolled.from_version, rolled.to_version, rolled.new_version) == (3, 2, 4)
    with open(os.path.join(config.serving_dir, "2", "saved_model.pb"), "rb") as a, \
            open(os.path.join(config.serving_dir, "4", "saved_model.pb"), "rb") as b:
        assert a.read() == b.read()
    store = open_store(config.metadata_connection)
    [execution] = store.get_executions_by_type("driftline.Rollback")
    assert execution.properties["to_version"].int_value == 2
    pushed = [a for a in store.get_artifacts_by_type("PushedModel") if prop(a, "rollback_of") == 2]
    assert len(pushed) == 1 and prop(pushed[0], "model_id") == run["reports"][1].model_id
    with pytest.raises(serving.RollbackError, match="does not exist"):
        serving.rollback(config.serving_dir, to_version=99)


def test_changed_feature_set_cold_starts_with_the_reason(run):
    r5 = run["reports"][4]
    assert r5.start == "cold"
    assert "the feature set changed" in r5.start_reason


def test_the_cycle_after_the_rollback_is_judged_against_the_pinned_model(run):
    """The rollback pinned cycle 2's model: cycle 5 resolved it as base model and baseline, not cycle 4's."""
    from pipelines.metadata import open_store, prop

    config, reports = run["config"], run["reports"]
    pinned = reports[1].model_id
    assert run["rolled"].model_id == pinned
    store = open_store(config.metadata_connection)
    [m5] = store.get_artifacts_by_id([reports[4].model_id])
    assert prop(m5, "candidate_base_model_id") == pinned  # resolved as base (then cold: the feature set changed)
    [blessing] = [b for b in store.get_artifacts_by_type("ModelBlessing")
                  if prop(b, "current_model_id") == reports[4].model_id]
    assert prop(blessing, "baseline_model_id") == pinned != reports[3].model_id


def test_served_model_scores_serialized_examples(run):
    import glob

    import tensorflow as tf

    from components.blessing_pusher import serving

    serving_dir = run["config"].serving_dir
    model = tf.saved_model.load(os.path.join(serving_dir, str(serving.serving_version(serving_dir))))
    pattern = os.path.join(run["config"].pipeline_root, "StreamingExampleGen", "examples", "*", "span-*", "Split-eval", "*")
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(pattern))[:1], compression_type="GZIP").take(50)]
    probabilities = model.signatures["serving_default"](examples=tf.constant(records))["probability"].numpy()
    assert probabilities.shape == (len(records), 1)
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_a_category_keeps_its_embedding_row_across_warm_cycles(run):
    """Ad popularity drifts between spans, yet every ad id is the same row of the warm model's embedding.

    Cycle 2 warm-starts model 1. The two cycles' transform graphs (each cycle's own Transform run)
    map every ad id to the same index, whatever its frequency in either span; and every row of the
    ad embedding that cycle 2 never trained on is bit for bit model 1's row, so a row carried over
    by the warm start still stands for the ad it was learned for. A frequency-ordered vocabulary
    (stock Transform's) would have moved ads to other rows here.
    """
    import collections

    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from components.warm_start_trainer import data, warm_start
    from components.warm_start_trainer.fn_args import TrainingInput
    from pipelines import ads_model, lineage
    from pipelines.metadata import ingested_spans, open_store
    from pipelines.scoring import decode, read_span
    from transforms.stream import LABEL_KEY

    config = run["config"]
    r1, r2 = run["reports"][:2]
    models = models_by_id(config)
    assert models[r2.model_id]["base_model_id"] == r1.model_id
    store = open_store(config.metadata_connection)
    uris = {r.span: r.uri for r in ingested_spans(store, config.pipeline_name)}
    serialized = {span: read_span(uris[span], ("train", "eval")) for span in (r1.spans[-1], r2.spans[-1])}
    ads = {span: [e["ad_id"] for e in decode(rows, ["ad_id"])] for span, rows in serialized.items()}
    ranked = {span: [ad for ad, _ in collections.Counter(ids).most_common(10)] for span, ids in ads.items()}
    assert ranked[r1.spans[-1]] != ranked[r2.spans[-1]], "precondition: ad frequencies change between the spans"

    graphs = [tft.TFTransformOutput(lineage.transform_graph_uri(store, r.model_id)) for r in (r1, r2)]
    rows = [x for span in serialized for x in serialized[span]]
    ad_ids = [ad for span in serialized for ad in ads[span]]
    index = [g.transform_raw_features(tf.io.parse_example(rows, g.raw_feature_spec()),
                                      drop_unused_features=True)["ad_id_xf"].numpy() for g in graphs]
    np.testing.assert_array_equal(index[0], index[1])
    row_of = {}
    for ad, i in zip(ad_ids, index[0]):
        assert row_of.setdefault(ad, i) == i, f"ad {ad} maps to two rows"

    def embedding(model_id):
        cc = run_fn_config(config)
        model = ads_model.build_model(cc["feature_buckets"], cc["numeric_features"], config.trainer.model,
                                      config.trainer.seed)
        assert warm_start.load_base_weights(model, models[model_id]["uri"]).loaded
        return model.get_layer("emb_ad_id_xf").embeddings.numpy()

    before, after = embedding(r1.model_id), embedding(r2.model_id)
    # The rows cycle 2 trained on: every ad index of its training inputs, as its run_fn read them.
    inputs = [TrainingInput(**i) for i in json.loads(models[r2.model_id]["training_inputs"])]
    features, _, _ = data.load_transformed(inputs, graphs[1], LABEL_KEY, config.source.schema.id_field,
                                           str(r2.spans[-1]))
    trained = np.zeros(len(before), dtype=bool)
    trained[np.unique(features["ad_id_xf"])] = True
    assert 0 < trained.sum() < len(trained)
    np.testing.assert_array_equal(after[~trained], before[~trained])
    assert not np.array_equal(after[trained], before[trained]), "cycle 2 did train the rows it saw"


def run_fn_config(config):
    from components.warm_start_trainer.component import run_fn_custom_config

    return run_fn_custom_config(config.source.schema, config.transform)
