"""The Trainer kept between cycles is an optimisation, not state.

A warm cycle that reuses the kept model, optimizer and traced step must give
the model a fresh process gives: same weights, same loss, same predictions.
Runs on real spans, a real transform graph and a real blessed base model from
the shared five-cycle run.
"""
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.e2e


def _cycle_args(config):
    from components.warm_start_trainer import cycle, warm_start
    from components.warm_start_trainer.component import run_fn_custom_config
    from pipelines import lineage
    from pipelines.metadata import ingested_spans, open_store
    from transforms import stream

    store = open_store(config.metadata_path)
    models = lineage.models(config.metadata_path, config.pipeline_name)
    base_record = next(m for m in models if m.start == "warm" and m.blessed)
    base_artifact = store.get_artifacts_by_id([base_record.model_id])[0]
    fingerprints = {k: base_artifact.custom_properties[k].string_value for k in warm_start.FINGERPRINT_KEYS}
    spans = [(r.span, r.uri) for r in ingested_spans(store, config.pipeline_name)]
    newest = base_record.newest_span
    later = [s for s in spans if s[0] > newest]
    # The transform graph the base model was trained with (the last cycle of the run changed the features).
    graph = lineage.transform_graph_uri(store, base_record.model_id)
    assert graph is not None
    schema = config.source.schema
    return dict(config=config.trainer, schema=schema, custom_config=run_fn_custom_config(schema, config.transform),
                transform_fingerprint=stream.transform_fingerprint(schema, config.transform),
                transform_graph_path=graph, current=later[:1], earlier=[s for s in spans if s[0] <= newest],
                base=cycle.BaseModel(base_record.model_id, base_record.uri, fingerprints, newest))


def _weights(model_uri):
    import tensorflow as tf

    from components.warm_start_trainer.warm_start import CHECKPOINT_PREFIX, WARM_START_DIR

    reader = tf.train.load_checkpoint(os.path.join(model_uri, WARM_START_DIR, CHECKPOINT_PREFIX))
    names = [n for n in reader.get_variable_to_shape_map() if "layer_with_weights" in n and "OPTIMIZER" not in n]
    assert names, "the warm-start checkpoint holds no layer weights"
    return {n: reader.get_tensor(n) for n in names}


def test_one_feature_set_gives_one_transform_key_across_cycles_of_one_process(continuous_run):
    """The caches keyed on the transform graph hit from cycle to cycle.

    The shared run's cycles 1-4 ran in this process with one feature set, and
    each wrote its own TransformGraph; cycle 5 dropped a feature. TF names the
    functions in `saved_model.pb` with a process-wide counter, so a key taken
    from that file differed every cycle and every kept transform, kept input
    and traced serving function missed.
    """
    from pipelines import ads_model, lineage
    from pipelines.metadata import open_store

    config = continuous_run["config"]
    store = open_store(config.metadata_path)
    records = sorted(lineage.models(config.metadata_path, config.pipeline_name), key=lambda m: m.model_id)
    graphs = [lineage.transform_graph_uri(store, m.model_id) for m in records]
    assert len(graphs) == 5 and len(set(graphs)) == 5, graphs  # one graph written per cycle
    with open(os.path.join(graphs[0], "transform_fn", "saved_model.pb"), "rb") as a, \
            open(os.path.join(graphs[1], "transform_fn", "saved_model.pb"), "rb") as b:
        assert a.read() != b.read()  # what made the file hash miss
    keys = [ads_model.transform_graph_key(g) for g in graphs]
    assert keys[0] is not None and keys[0].startswith("fingerprint:")
    assert keys[:4] == [keys[0]] * 4
    assert keys[4] != keys[0]


def test_a_kept_trainer_computes_what_a_fresh_process_computes(continuous_run, tmp_path):
    import tensorflow as tf

    from components.warm_start_trainer import cycle
    from pipelines import ads_model
    from pipelines.scoring import ServingModel, read_span

    args = _cycle_args(continuous_run["config"])

    def run(name):
        return cycle.train_cycle(**args, model_uri=str(tmp_path / name / "model"),
                                 model_run_uri=str(tmp_path / name / "run")), str(tmp_path / name / "model")

    ads_model.clear_reusable_trainer()
    fresh, fresh_uri = run("fresh")  # builds, traces, and keeps its Trainer
    assert fresh["start"] == "warm"
    (kept,) = ads_model._reusable.values()
    traces = kept.step.experimental_get_tracing_count()
    again, again_uri = run("reused")
    assert ads_model._reusable and next(iter(ads_model._reusable.values())) is kept
    assert kept.step.experimental_get_tracing_count() == traces, "the kept train step was traced again"

    assert again["start"] == "warm" and again["trained_examples"] == fresh["trained_examples"]
    assert again["final_loss"] == pytest.approx(fresh["final_loss"], rel=1e-5)
    a, b = _weights(fresh_uri), _weights(again_uri)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    examples = read_span(args["current"][0][1], ("eval",))
    np.testing.assert_allclose(ServingModel(fresh_uri).predict(examples), ServingModel(again_uri).predict(examples),
                               rtol=1e-5, atol=1e-6)
    # The reused export wrote only weights into the first export's graph: the same checkpoint keys and
    # shapes as a full export, and a fingerprint of its own.
    assert kept.export_template is not None
    fresh_vars, again_vars = (dict(tf.train.list_variables(os.path.join(u, cycle.SERVING_DIR, "variables",
                                                                        "variables")))
                              for u in (fresh_uri, again_uri))
    assert again_vars == fresh_vars
    assert tf.saved_model.experimental.read_fingerprint(os.path.join(again_uri, cycle.SERVING_DIR)).checkpoint_hash
    # The record says what happened, whichever path ran.
    assert json.loads(again["trained_spans"]) == json.loads(fresh["trained_spans"])


def test_a_cold_start_replaces_the_kept_trainer(continuous_run, tmp_path):
    from components.warm_start_trainer import cycle
    from pipelines import ads_model

    args = _cycle_args(continuous_run["config"])
    cycle.train_cycle(**args, model_uri=str(tmp_path / "w" / "model"), model_run_uri=str(tmp_path / "w" / "run"))
    (kept,) = ads_model._reusable.values()
    cold = cycle.train_cycle(**{**args, "base": None}, model_uri=str(tmp_path / "c" / "model"),
                             model_run_uri=str(tmp_path / "c" / "run"))
    assert cold["start"] == "cold"
    assert len(ads_model._reusable) == 1 and next(iter(ads_model._reusable.values())) is not kept


def test_kept_inputs_give_what_reading_the_files_gives(continuous_run):
    import tensorflow_transform as tft

    from components.warm_start_trainer import data
    from components.warm_start_trainer import training_inputs as plan
    from pipelines import ads_model
    from transforms.stream import LABEL_KEY

    args = _cycle_args(continuous_run["config"])
    graph, id_key = args["transform_graph_path"], args["schema"].id_field
    # A larger replay fraction than the default, so the sample is neither empty nor everything.
    inputs = plan.plan_training_inputs(args["current"], args["earlier"], replay_spans=3, replay_fraction=0.3)
    assert any(i.fraction < 1.0 for i in inputs)
    key = ads_model.transform_graph_key(graph)
    assert key is not None
    tft_output = tft.TFTransformOutput(graph)

    def load(salt, transform_key):
        return data.load_transformed(inputs, tft_output, LABEL_KEY, id_key, salt, transform_key=transform_key)

    data.clear_kept_inputs()
    streamed = load("7", None)
    assert not data._kept_inputs, "the streaming path keeps nothing"
    read = load("7", key)
    kept = dict(data._kept_inputs)
    again = load("7", key)
    assert all(data._kept_inputs[k] is v for k, v in kept.items()), "the second call read its inputs again"
    other_salt = load("8", key)
    for got in (read, again):
        assert got[0].keys() == streamed[0].keys() and got[2] == streamed[2]
        for name in streamed[0]:
            if got[0][name].dtype.kind == "f":  # a float transform over other batches may round its last bit
                np.testing.assert_allclose(got[0][name], streamed[0][name], rtol=1e-6, atol=0, err_msg=name)
            else:
                np.testing.assert_array_equal(got[0][name], streamed[0][name], err_msg=name)
        np.testing.assert_array_equal(got[1], streamed[1])
    # Another cycle's salt draws another replay sample from the same kept inputs.
    assert other_salt[2]["new"] == streamed[2]["new"]
    assert any(not np.array_equal(other_salt[0][n], streamed[0][n]) for n in streamed[0])
    assert 0 < streamed[2]["replay"] < sum(len(v) for v in kept.values())

    # Provenance (each example's span and role) is the same on both paths, and says what the counts say.
    with_prov = [data.load_transformed(inputs, tft_output, LABEL_KEY, id_key, "7", transform_key=k, provenance=True)
                 for k in (None, key)]
    for got in with_prov:
        np.testing.assert_array_equal(got[1], streamed[1])
        assert {r: int(np.sum(got[3].role == r)) for r in set(got[3].role)} == streamed[2]
        assert set(got[3].span.tolist()) == {i.span for i in inputs}
    np.testing.assert_array_equal(with_prov[0][3].span, with_prov[1][3].span)
    np.testing.assert_array_equal(with_prov[0][3].role, with_prov[1][3].role)

    # The next cycle keeps only its own inputs: nothing grows from cycle to cycle.
    data.load_transformed(inputs[:1], tft_output, LABEL_KEY, id_key, "9", transform_key=key)
    assert len(data._kept_inputs) == 1
    data.clear_kept_inputs()


def test_a_span_with_no_training_examples_gives_its_base_or_an_untrained_model(continuous_run, tmp_path):
    """The first span of a stream that starts late in it has events only in its eval split."""
    import shutil

    import tensorflow as tf

    from components.warm_start_trainer import cycle
    from pipelines.scoring import ServingModel, read_span

    args = _cycle_args(continuous_run["config"])
    span, uri = args["current"][0]
    eval_only = tmp_path / "eval_only_span"
    shutil.copytree(os.path.join(uri, "Split-eval"), eval_only / "Split-eval")
    (eval_only / "Split-train").mkdir()
    with tf.io.TFRecordWriter(str(eval_only / "Split-train" / "data.gz"), options="GZIP"):
        pass  # a train split file without a record
    examples = read_span(uri, ("eval",))
    for name, base in (("warm", args["base"]), ("cold", None)):
        props = cycle.train_cycle(**{**args, "current": [(span, str(eval_only))], "earlier": [], "base": base},
                                  model_uri=str(tmp_path / name / "model"), model_run_uri=str(tmp_path / name / "run"))
        assert props["start"] == name and props["trained_examples"] == 0 and props["train_steps"] == 0
        assert "not trained: the training inputs hold no examples" in props["start_reason"]
        predictions = ServingModel(str(tmp_path / name / "model")).predict(examples)
        if base is not None:  # the base model, as it was
            np.testing.assert_allclose(predictions, ServingModel(base.uri).predict(examples), rtol=1e-6)


def test_the_exported_wide_and_deep_model_gives_the_keras_models_predictions(continuous_run, tmp_path):
    """Both export paths (the full SavedModel, then the kept graph with only new weights) of a model
    with a hashed cross serve what the Keras model computes on the transformed examples."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from pipelines import ads_model
    from pipelines.scoring import ServingModel, read_span

    args = _cycle_args(continuous_run["config"])
    cc = args["custom_config"]
    config = {"crosses": [["user_id_xf", "ad_id_xf"]], "cross_buckets": 1009}
    model = ads_model.build_model(cc["feature_buckets"], cc["numeric_features"], config, 0)
    rng = np.random.default_rng(0)
    tft_output = tft.TFTransformOutput(args["transform_graph_path"])
    examples = read_span(args["current"][0][1], ("eval",))
    raw_spec = dict(tft_output.raw_feature_spec())
    label = args["schema"].label_field
    raw_spec.pop(label, None)

    def keras_predictions():
        transformed = tft_output.transform_features_layer()(tf.io.parse_example(tf.constant(examples), raw_spec))
        return model({k: transformed[k] for k in model.input_names})[:, 0].numpy()

    features = {k: np.zeros(1, np.int64 if k in cc["feature_buckets"] else np.float32) for k in model.input_names}
    trainer = ads_model.Trainer(model, features, np.zeros(1, np.float32), 0.01, config)
    key = ads_model.transform_graph_key(args["transform_graph_path"])
    for i in range(2):  # i=0: the full export; i=1: weights only, into the first export's graph
        model.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
        assert np.any(model.get_layer("wide_user_id_xf_x_ad_id_xf").get_weights()[0] != 0)
        out = str(tmp_path / f"export{i}")
        ads_model.export_serving_model(model, tft_output, label, out, trainer=trainer, transform_key=key)
        assert (trainer.export_template is not None) == (key is not None)
        np.testing.assert_allclose(ServingModel(out).predict(examples), keras_predictions(), rtol=1e-5, atol=1e-6)
