"""DriftlineEvaluator on real parts: gzipped TFRecords of tf.Examples, real SavedModels, TFMA on Beam.

The data follows a known logistic model: P(click) = sigmoid(BIAS + W_PRICE * (price - CENTER)
+ W_MOBILE * [device == mobile]). The models under test are SavedModels of the trainer's
contract (`serving_default(examples: string[None]) -> {"probability": float32[None, 1]}`):

- good:       the true model;
- price_only: ignores the device (calibrated, but ~0.02-0.04 less AUC overall);
- inverted:   the true logit negated (AUC ~ 1 - good's);
- damped:     the device weight shrunk to DAMPED of its value (the rest spread over all devices):
              slightly worse than good, by an amount that a 400-example eval split cannot resolve.

Expectations are computed here from the data written (counts, positives, an exact AUC
by ranking), not read back from the component's own arithmetic.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

BIAS, W_PRICE, W_MOBILE, CENTER = -1.6, 1.2, 1.2, 1.8
DEVICES = ("mobile", "desktop", "tablet")
LABEL = "clicked"
N_EVAL = 1000  # newest span's eval split: enough for the default GateConfig, ~330 per device
N_SMALL = 400  # a small eval split (below the old fixed minimum of 500)
DAMPED = 0.6


# -- data -------------------------------------------------------------------------------


def _events(n, seed):
    rng = np.random.default_rng(seed)
    device = rng.choice(DEVICES, n)
    price = rng.lognormal(0.5, 0.5, n).astype(np.float32)
    logit = BIAS + W_PRICE * (price - CENTER) + W_MOBILE * (device == "mobile")
    clicked = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return {"device": device, "price": price, "clicked": clicked, "event_id": np.arange(n) + seed * 100_000}


def _write_tfrecords(path, ev, lo, hi):
    import tensorflow as tf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for i in range(lo, hi):
            f = {"event_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"e{ev['event_id'][i]}".encode()])),
                 "device": tf.train.Feature(bytes_list=tf.train.BytesList(value=[ev["device"][i].encode()])),
                 "price": tf.train.Feature(float_list=tf.train.FloatList(value=[float(ev["price"][i])])),
                 "clicked": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(ev["clicked"][i])]))}
            w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())


def _examples_dir(root, name, n_train, n_eval, seed):
    """<root>/<name>/Split-{train,eval}/*.gz; eval written as two files. Returns (uri, eval events)."""
    uri = os.path.join(root, name)
    train, ev = _events(n_train, seed), _events(n_eval, seed + 1)
    _write_tfrecords(os.path.join(uri, "Split-train", "data-00000-of-00001.gz"), train, 0, n_train)
    half = n_eval // 2
    _write_tfrecords(os.path.join(uri, "Split-eval", "data-00000-of-00002.gz"), ev, 0, half)
    _write_tfrecords(os.path.join(uri, "Split-eval", "data-00001-of-00002.gz"), ev, half, n_eval)
    return uri, ev


def _examples_artifact(uri, span, artifact_id=0):
    from tfx.types import artifact_utils, standard_artifacts

    a = standard_artifacts.Examples()
    a.uri = uri
    a.span = span
    a.version = 0
    a.split_names = artifact_utils.encode_split_names(["train", "eval"])
    a.id = artifact_id
    return a


# -- models ------------------------------------------------------------------------------


def _true_logit_np(ev, use_device=True, damped=False):
    mobile = (ev["device"] == "mobile").astype(np.float64)
    if damped:
        return (BIAS + W_PRICE * (ev["price"].astype(np.float64) - CENTER)
                + W_MOBILE * (DAMPED * mobile + (1 - DAMPED) / 3.0))
    return (BIAS + W_PRICE * (ev["price"].astype(np.float64) - CENTER)
            + (W_MOBILE * mobile if use_device else W_MOBILE / 3.0))


def _parse(examples):
    import tensorflow as tf

    f = tf.io.parse_example(examples, {"price": tf.io.FixedLenFeature([1], tf.float32),
                                       "device": tf.io.FixedLenFeature([1], tf.string)})
    return f["price"], tf.cast(tf.equal(f["device"], "mobile"), tf.float32)


def _save_module(path, sign, use_device, damped=False):
    import tensorflow as tf

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            p, m = _parse(examples)
            device_term = W_MOBILE * m if use_device else tf.fill(tf.shape(p), W_MOBILE / 3.0)
            if damped:
                device_term = W_MOBILE * (DAMPED * m + (1 - DAMPED) / 3.0)
            logit = BIAS + W_PRICE * (p - CENTER) + device_term
            return {"probability": tf.sigmoid(sign * logit)}

    scorer = Scorer()
    tf.saved_model.save(scorer, path, signatures={"serving_default": scorer.serve})


def _model_artifact(uri, artifact_id):
    from tfx.types import standard_artifacts

    a = standard_artifacts.Model()
    a.uri = uri
    a.id = artifact_id
    return a


def _exact_auc(labels, scores):
    """Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = np.asarray(scores)[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("evaluator_world"))
    models = {}
    for name, model_id in (("good", 101), ("price_only", 102), ("inverted", 103), ("damped", 104)):
        uri = os.path.join(root, "models", name)
        serving = os.path.join(uri, "Format-Serving")
        _save_module(serving, sign=-1.0 if name == "inverted" else 1.0, use_device=name != "price_only",
                     damped=name == "damped")
        models[name] = uri
    # span 7: older, with an eval split far too small to bless anything; span 8: the newest.
    old_uri, _ = _examples_dir(root, "span7", 50, 40, seed=7)
    new_uri, new_eval = _examples_dir(root, "span8", 200, N_EVAL, seed=8)
    tiny_uri, tiny_eval = _examples_dir(root, "span9_tiny", 50, 120, seed=9)
    small_uri, small_eval = _examples_dir(root, "span11_small", 50, N_SMALL, seed=10)
    return {"root": root, "models": models, "old_uri": old_uri, "new_uri": new_uri, "new_eval": new_eval,
            "tiny_uri": tiny_uri, "tiny_eval": tiny_eval, "small_uri": small_uri, "small_eval": small_eval,
            "model_ids": {"good": 101, "price_only": 102, "inverted": 103, "damped": 104}}


def _run(world, tmp_path, examples, candidate, baseline=None, gate=None, eval_split="eval", carried=None,
         beam_config=None):
    """Runs the executor's Do() on real artifacts; returns (evaluation, blessing)."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts

    from components.evaluator.executor import Executor
    from pipelines.config import BeamConfig, GateConfig

    evaluation = standard_artifacts.ModelEvaluation()
    evaluation.uri = str(tmp_path / "evaluation")
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    os.makedirs(blessing.uri)
    inputs = {"examples": examples,
              "model": [_model_artifact(world["models"][candidate], world["model_ids"][candidate])]}
    if baseline is not None:
        inputs["baseline_model"] = [_model_artifact(world["models"][baseline], world["model_ids"][baseline])]
    if carried is not None:
        inputs["carried_examples"] = carried
    props = {"gate_config": json.dumps((gate or GateConfig()).to_dict()), "label_key": LABEL, "eval_split": eval_split}
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=(beam_config or BeamConfig(direct_num_workers=1)).args(), tmp_dir=str(tmp_path / "tmp"),
        unique_id="1")
    Executor(context).Do(inputs, {"evaluation": [evaluation], "blessing": [blessing]}, props)
    return evaluation, blessing


def _verdict(artifact):
    return json.loads(artifact.get_string_custom_property("verdict_json"))


@pytest.fixture(scope="module")
def blessed_run(world, tmp_path_factory):
    # Both spans are given, older first in neither order: the newest span (8) must be the one used.
    examples = [_examples_artifact(world["new_uri"], 8, 2), _examples_artifact(world["old_uri"], 7, 1)]
    return _run(world, tmp_path_factory.mktemp("blessed"), examples, "good", baseline="inverted")


# -- Do() on real artifacts -------------------------------------------------------------------


def _same_numbers(a, b, path="") -> None:
    """a == b, floats to 1e-9 relative (bundles may sum in another order), everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, a, b)
        for k in a:
            _same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12, nan_ok=True), path
    else:
        assert a == b, path


def test_the_tfma_graph_under_the_portable_runner_gives_direct_runners_metrics_and_blessing(
        world, blessed_run, tmp_path):
    # The same Do() as blessed_run (DirectRunner), under PortableRunner: TFMA's extractors, combiners and
    # our GateMetrics pickled and run through the Fn API, as on Dataflow.
    from components.evaluator import tfma_run
    from pipelines.config import BeamConfig

    examples = [_examples_artifact(world["new_uri"], 8, 2), _examples_artifact(world["old_uri"], 7, 1)]
    evaluation, blessing = _run(world, tmp_path, examples, "good", baseline="inverted",
                                beam_config=BeamConfig(runner="PortableRunner"))
    direct_evaluation, direct_blessing = blessed_run
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    _same_numbers(_verdict(direct_blessing), _verdict(blessing))
    _same_numbers(tfma_run.read_metrics(direct_evaluation.uri, "device"), tfma_run.read_metrics(evaluation.uri, "device"))
    direct_props = {k: v for k, v in direct_blessing.mlmd_artifact.custom_properties.items()}
    props = {k: v for k, v in blessing.mlmd_artifact.custom_properties.items()}
    assert set(props) == set(direct_props)
    for key, value in direct_props.items():
        if value.HasField("double_value"):
            assert props[key].double_value == pytest.approx(value.double_value, rel=1e-9, abs=1e-12), key
        else:
            assert props[key] == value, key


def test_good_candidate_vs_bad_baseline_is_blessed_on_the_newest_span(world, blessed_run):
    evaluation, blessing = blessed_run
    ev = world["new_eval"]
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED")), blessing.get_string_custom_property("reason")
    assert not os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    # Stock properties, as TFX Evaluator writes them for LatestBlessedModelStrategy.
    assert blessing.get_int_custom_property("blessed") == 1
    assert blessing.get_string_custom_property("current_model") == world["models"]["good"]
    assert blessing.get_int_custom_property("current_model_id") == 101
    assert blessing.get_string_custom_property("baseline_model") == world["models"]["inverted"]
    assert blessing.get_int_custom_property("baseline_model_id") == 103
    # Ours: the newest span's eval split, counted exactly.
    assert blessing.get_int_custom_property("eval_span") == 8
    assert blessing.get_float_custom_property("eval_examples") == len(ev["clicked"]) == N_EVAL
    assert blessing.get_float_custom_property("eval_positives") == int(ev["clicked"].sum())
    # TFMA's AUC agrees with an exact AUC of the same predictions.
    good_auc = _exact_auc(ev["clicked"], _true_logit_np(ev))
    assert blessing.get_float_custom_property("candidate_auc") == pytest.approx(good_auc, abs=2e-3)
    assert blessing.get_float_custom_property("baseline_auc") == pytest.approx(1 - good_auc, abs=2e-3)
    reason = blessing.get_string_custom_property("reason")
    assert reason.startswith("blessed: AUC ") and "(baseline " in reason and f"on {N_EVAL} examples" in reason

    verdict = _verdict(blessing)
    assert verdict["blessed"] is True and verdict["failed_checks"] == [] and verdict["reason"] == reason
    assert verdict == _verdict(evaluation)
    cand, base = verdict["candidate_metrics"], verdict["baseline_metrics"]
    assert set(cand["overall"]) == {"auc", "example_count", "positive_count", "calibration", "log_loss",
                                    "mean_label", "mean_prediction", "auc_se", "auc_diff", "auc_diff_se",
                                    "log_loss_diff", "log_loss_diff_se"}
    # The paired test on the same rows: the exact AUC difference, recorded on the blessing.
    expected_diff = good_auc - _exact_auc(ev["clicked"], -_true_logit_np(ev))
    assert cand["overall"]["auc_diff"] == pytest.approx(expected_diff, abs=2e-3)
    assert blessing.get_float_custom_property("auc_diff") == pytest.approx(expected_diff, abs=2e-3)
    assert blessing.get_string_custom_property("auc_test") == "DeLong"
    assert blessing.get_float_custom_property("gate_confidence") == 0.95
    assert (blessing.get_float_custom_property("auc_diff_lower") < expected_diff
            < blessing.get_float_custom_property("auc_diff_upper"))
    assert blessing.get_float_custom_property("auc_diff_p_value") == pytest.approx(1.0)
    assert blessing.get_float_custom_property("log_loss_diff") < 0
    assert verdict["tests"]["auc"]["diff"] == cand["overall"]["auc_diff"]
    assert cand["overall"]["mean_label"] == pytest.approx(ev["clicked"].mean())
    p_good = 1 / (1 + np.exp(-_true_logit_np(ev)))
    assert cand["overall"]["mean_prediction"] == pytest.approx(p_good.mean(), rel=1e-4)
    assert cand["overall"]["calibration"] == pytest.approx(p_good.mean() / ev["clicked"].mean(), rel=1e-4)
    log_loss = -np.mean(ev["clicked"] * np.log(p_good) + (1 - ev["clicked"]) * np.log(1 - p_good))
    assert cand["overall"]["log_loss"] == pytest.approx(log_loss, rel=1e-3)
    assert base["overall"]["example_count"] == N_EVAL
    # Sliced by device, with exact per-slice counts; every slice is judged (all have >= 200 examples).
    for device in DEVICES:
        mask = ev["device"] == device
        assert cand["slices"][device]["example_count"] == mask.sum()
        assert cand["slices"][device]["positive_count"] == ev["clicked"][mask].sum()
        assert cand["slices"][device]["auc"] == pytest.approx(
            _exact_auc(ev["clicked"][mask], _true_logit_np(ev)[mask]), abs=2e-3)
    assert {c["name"] for c in verdict["checks"]} >= {f"min_slice_auc[device={d}]" for d in DEVICES}
    assert verdict["thresholds"]["max_auc_drop"] == 0.0


def test_tfma_load_eval_result_reads_both_models(world, blessed_run):
    import tensorflow_model_analysis as tfma

    evaluation, blessing = blessed_run
    result = tfma.load_eval_result(evaluation.uri)  # the candidate, by default
    overall = dict(result.slicing_metrics)[()][""][""]
    assert overall["example_count"]["doubleValue"] == N_EVAL
    assert overall["auc"]["doubleValue"] == pytest.approx(blessing.get_float_custom_property("candidate_auc"))
    assert "auc_diff" in overall  # TFMA's own diff against the baseline
    baseline = dict(tfma.load_eval_result(evaluation.uri, model_name="baseline").slicing_metrics)[()][""][""]
    assert baseline["auc"]["doubleValue"] == pytest.approx(blessing.get_float_custom_property("baseline_auc"))
    slices = {k for k, _ in result.slicing_metrics}
    assert {(("device", d),) for d in DEVICES} <= slices
    models = tfma.load_eval_results([evaluation.uri])
    assert len(models.get_results()) == 2


def test_clearly_worse_candidate_vs_good_baseline_is_not_blessed(world, tmp_path):
    ev = world["new_eval"]
    evaluation, blessing = _run(world, tmp_path, [_examples_artifact(world["new_uri"], 8)], "price_only",
                                baseline="good")
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    assert not os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    assert blessing.get_int_custom_property("blessed") == 0
    verdict = _verdict(blessing)
    # The price-only model is calibrated and above every absolute bound: only the paired tests against the
    # baseline fail, overall (AUC, log loss) and in the mobile slice, where the device matters most.
    assert "max_auc_drop" in verdict["failed_checks"]
    assert all(name.startswith(("max_auc_drop", "max_log_loss_increase")) for name in verdict["failed_checks"])
    reason = blessing.get_string_custom_property("reason")
    assert reason.startswith("not blessed: AUC worse than the baseline's with 95% confidence: ")
    expected_drop = (_exact_auc(ev["clicked"], _true_logit_np(ev))
                     - _exact_auc(ev["clicked"], _true_logit_np(ev, use_device=False)))
    assert expected_drop > 0.01
    assert verdict["tests"]["auc"]["diff"] == pytest.approx(-expected_drop, abs=3e-3)
    assert verdict["tests"]["auc"]["upper"] < 0 and verdict["tests"]["auc"]["p_value"] < 0.05
    assert blessing.get_float_custom_property("auc_diff_upper") < 0
    assert blessing.get_int_custom_property("baseline_model_id") == 101


def test_slightly_worse_on_a_small_split_but_not_significantly_is_blessed(world, tmp_path):
    """400 eval examples (the old fixed minimum was 500) and an AUC 0.005 below the baseline's (the old
    fixed max_auc_drop was 0.005): not significant by DeLong's test on the same rows, so blessed."""
    ev = world["small_eval"]
    expected_diff = (_exact_auc(ev["clicked"], _true_logit_np(ev, damped=True))
                     - _exact_auc(ev["clicked"], _true_logit_np(ev)))
    assert -0.01 < expected_diff < -0.004  # worse on these rows, by more than the old fixed drop
    _, blessing = _run(world, tmp_path, [_examples_artifact(world["small_uri"], 11)], "damped", baseline="good")
    verdict = _verdict(blessing)
    assert blessing.get_int_custom_property("blessed") == 1, verdict["reason"]
    assert blessing.get_float_custom_property("eval_examples") == N_SMALL
    assert verdict["tests"]["auc"]["diff"] == pytest.approx(expected_diff, abs=1e-3)
    assert verdict["tests"]["auc"]["lower"] < expected_diff < 0 < verdict["tests"]["auc"]["upper"]
    assert 0.05 < blessing.get_float_custom_property("auc_diff_p_value") < 0.5
    assert blessing.get_string_custom_property("reason").startswith("blessed: AUC ")


def test_too_small_eval_split_is_not_blessed_for_lack_of_evidence(world, tmp_path):
    _, blessing = _run(world, tmp_path, [_examples_artifact(world["tiny_uri"], 9)], "good")
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    assert blessing.get_int_custom_property("blessed") == 0
    reason = blessing.get_string_custom_property("reason")
    # No baseline: the candidate's own AUC interval is too wide to judge it (26 positives).
    assert reason.startswith("not blessed: too little evidence: the AUC's interval at 95% is ")
    assert "on 120 examples (need <= 0.100)" in reason
    width = [c for c in _verdict(blessing)["checks"] if c["name"] == "max_auc_interval_width"][0]["value"]
    assert width > 0.1
    assert blessing.get_float_custom_property("eval_examples") == 120
    assert blessing.get_float_custom_property("baseline_auc") == -1.0
    assert "baseline_model" not in blessing.mlmd_artifact.custom_properties
    assert _verdict(blessing)["baseline_metrics"] is None


def test_a_verdict_without_evidence_is_flagged_and_carried_splits_are_scored_with_the_newest(world, tmp_path):
    _, thin = _run(world, tmp_path / "thin", [_examples_artifact(world["tiny_uri"], 9)], "good")
    assert thin.get_int_custom_property("evidence_insufficient") == 1
    assert json.loads(thin.get_string_custom_property("eval_spans")) == [9]
    # The next cycle (span 11) gets span 9 carried: both eval splits (120 + N_SMALL examples) are one data set.
    _, pooled = _run(world, tmp_path / "pooled", [_examples_artifact(world["small_uri"], 11, 3)], "good",
                     carried=[_examples_artifact(world["tiny_uri"], 9)])
    assert json.loads(pooled.get_string_custom_property("eval_spans")) == [9, 11]
    assert pooled.get_int_custom_property("eval_span") == 11
    assert pooled.get_float_custom_property("eval_examples") == 120 + N_SMALL


def test_eval_split_without_files_is_no_evidence_but_still_a_readable_evaluation(world, tmp_path):
    import tensorflow_model_analysis as tfma

    uri = str(tmp_path / "span10_quiet")
    os.makedirs(os.path.join(uri, "Split-eval"))  # a quiet span: the eval split folder holds nothing
    evaluation, blessing = _run(world, tmp_path, [_examples_artifact(uri, 10)], "good", baseline="inverted")
    assert blessing.get_int_custom_property("blessed") == 0
    assert blessing.get_string_custom_property("reason") == (
        "not blessed: too little evidence: 0 positives (need >= 10), 0 negatives (need >= 10), "
        "the AUC difference's interval is undefined on 0 examples (needs both classes)")
    assert "auc_diff" not in blessing.mlmd_artifact.custom_properties  # undefined: not recorded
    assert blessing.get_float_custom_property("candidate_auc") == -1.0
    assert tfma.load_eval_result(evaluation.uri).slicing_metrics == []


def test_unknown_eval_split_is_a_configuration_error(world, tmp_path):
    # Raised by Do() before any Beam work.
    with pytest.raises(ValueError, match="eval split 'holdout' is not a split"):
        _run(world, tmp_path, [_examples_artifact(world["new_uri"], 8)], "good", eval_split="holdout")


def test_component_spec_from_config():
    from tfx import types
    from tfx.types import standard_artifacts

    from components.evaluator import DriftlineEvaluator
    from pipelines.config import ConfigError, DriftlineConfig, GateConfig

    examples, model = types.Channel(type=standard_artifacts.Examples), types.Channel(type=standard_artifacts.Model)
    config = DriftlineConfig(home="h", gate=GateConfig(min_auc=0.65, slice_feature="ad_category"))
    evaluator = DriftlineEvaluator.from_config(config.gate, config.source.schema, examples=examples, model=model)
    props = evaluator.exec_properties
    assert GateConfig.from_dict(json.loads(props["gate_config"])) == config.gate
    assert props["label_key"] == config.source.schema.label_field == LABEL
    assert props["eval_split"] == "eval"
    assert "baseline_model" not in evaluator.inputs or evaluator.inputs["baseline_model"] is None
    assert set(evaluator.outputs) == {"evaluation", "blessing"}
    assert evaluator.outputs["blessing"].type is standard_artifacts.ModelBlessing
    with pytest.raises(ConfigError, match="slice_feature"):
        DriftlineEvaluator.from_config(GateConfig(slice_feature="nope"), config.source.schema, examples, model)
    with pytest.raises(ConfigError, match="label_key"):  # no ad-stream default for another stream's label
        DriftlineEvaluator(examples=examples, model=model, gate=config.gate)


# -- as a TFX component: LocalDagRunner, SQLite ML Metadata -------------------------------------


@pytest.mark.e2e
def test_runs_as_a_tfx_component_in_a_local_dag(world, tmp_path):
    import tensorflow_model_analysis as tfma
    from ml_metadata.metadata_store import metadata_store
    from tfx.dsl.components.common.importer import Importer
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.types import standard_artifacts

    from components.evaluator import DriftlineEvaluator
    from pipelines.config import BeamConfig, GateConfig

    # (The same classes as tfx.v1.dsl.Importer, tfx.v1.orchestration.LocalDagRunner, without tfx.v1's imports.)
    examples = Importer(
        source_uri=world["new_uri"], artifact_type=standard_artifacts.Examples,
        properties={"span": 8, "version": 0, "split_names": '["train", "eval"]'}).with_id("examples")
    model = Importer(source_uri=world["models"]["good"], artifact_type=standard_artifacts.Model).with_id("candidate")
    # The first model: no baseline channel at all.
    evaluator = DriftlineEvaluator(examples=examples.outputs["result"], model=model.outputs["result"],
                                   gate=GateConfig(), label_key=LABEL).with_id("evaluator")
    metadata_path = str(tmp_path / "metadata.sqlite")
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name="evaluator_e2e", pipeline_root=str(tmp_path / "root"),
        components=[examples, model, evaluator],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=BeamConfig(direct_num_workers=1).args()))

    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))
    [blessing] = store.get_artifacts_by_type("ModelBlessing")
    [evaluation] = store.get_artifacts_by_type("ModelEvaluation")
    [model_artifact] = store.get_artifacts_by_type("Model")
    props = blessing.custom_properties
    assert props["blessed"].int_value == 1
    assert props["current_model_id"].int_value == model_artifact.id  # what LatestBlessedModelStrategy joins on
    assert props["current_model"].string_value == model_artifact.uri
    assert props["eval_span"].int_value == 8
    assert props["eval_examples"].double_value == N_EVAL
    assert props["baseline_auc"].double_value == -1.0
    assert "first model, no baseline" in props["reason"].string_value
    assert json.loads(props["verdict_json"].string_value)["blessed"] is True
    assert json.loads(evaluation.custom_properties["verdict_json"].string_value)["blessed"] is True
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    overall = dict(tfma.load_eval_result(evaluation.uri).slicing_metrics)[()][""][""]
    assert overall["example_count"]["doubleValue"] == N_EVAL


def test_a_cycle_with_too_many_malformed_lines_is_not_blessed(world, tmp_path):
    # StreamingExampleGen's counts on the cycle's spans (its dead letters ride on the first span emitted).
    older, newest = _examples_artifact(world["old_uri"], 7, 1), _examples_artifact(world["new_uri"], 8, 2)
    for artifact, events, dead in ((older, 90, 150), (newest, 1200, 0)):
        artifact.set_int_custom_property("event_count", events)
        artifact.set_int_custom_property("dead_letter_count", dead)
    _, blessing = _run(world, tmp_path, [newest, older], "good", baseline="inverted")
    verdict = _verdict(blessing)
    assert blessing.get_int_custom_property("blessed") == 0
    # The model itself passes everything else: only the data check fails, and the reason says why.
    assert verdict["failed_checks"] == ["max_dead_letter_fraction"]
    check = [c for c in verdict["checks"] if c["name"] == "max_dead_letter_fraction"][0]
    assert check["value"] == pytest.approx(150 / 1440)
    assert "150 of the cycle's 1,440 lines (10.4%) were malformed" in blessing.get_string_custom_property("reason")


def test_gate_metrics_agree_with_stock_tfma_metrics_on_the_same_examples(world, tmp_path):
    # GateMetrics replaces six stock TFMA metrics for speed: run both through
    # TFMA on the same eval split, two models and the device slice, and compare.
    import apache_beam as beam
    import tensorflow_model_analysis as tfma

    from components.evaluator import tfma_run
    from pipelines.config import BeamConfig

    def make_pipeline():
        return beam.Pipeline(argv=BeamConfig(direct_num_workers=1).args())

    examples = _examples_artifact(world["new_uri"], 8)
    paths = {"candidate": os.path.join(world["models"]["good"], "Format-Serving"),
             "baseline": os.path.join(world["models"]["price_only"], "Format-Serving")}
    ours_config = tfma_run.build_eval_config(LABEL, "device", has_baseline=True)
    stock_config = tfma.EvalConfig()
    stock_config.CopyFrom(ours_config)
    del stock_config.metrics_specs[:]
    stock_config.metrics_specs.add().CopyFrom(tfma.MetricsSpec(
        metrics=[tfma.MetricConfig(class_name=name) for name in (
            "ExampleCount", "AUC", "BinaryCrossEntropy", "Calibration", "MeanLabel", "MeanPrediction")],
        model_names=["candidate", "baseline"]))
    results = {}
    for name, config in (("ours", ours_config), ("stock", stock_config)):
        out = str(tmp_path / name)
        tfma_run.run_tfma(make_pipeline, examples, "eval", config, paths, out)
        results[name] = tfma_run.read_metrics(out, "device")
    ours, stock = results["ours"], results["stock"]
    assert set(ours) == set(stock) == {"candidate", "baseline"}
    for model in ours:
        assert set(ours[model]["slices"]) == set(stock[model]["slices"]) == set(DEVICES)
        for slice_name in [None, *DEVICES]:
            a = ours[model]["overall"] if slice_name is None else ours[model]["slices"][slice_name]
            b = stock[model]["overall"] if slice_name is None else stock[model]["slices"][slice_name]
            # Ours adds the paired statistics for the gate's tests (no stock counterpart).
            assert set(a) - {"auc_se", "auc_diff", "auc_diff_se", "log_loss_diff", "log_loss_diff_se"} == set(b)
            assert a["example_count"] == b["example_count"] and a["positive_count"] == b["positive_count"]
            # Stock AUC is float32 and interpolates over 10,000 thresholds; ours is the same histogram in float64.
            assert a["auc"] == pytest.approx(b["auc"], abs=1e-5)
            for metric in ("log_loss", "calibration", "mean_label", "mean_prediction"):
                assert a[metric] == pytest.approx(b[metric], rel=1e-6), (model, slice_name, metric)
