"""GateMetrics' combiner on its own: exact values against plain numpy, merging, and its errors.

The same metric through TFMA, against the stock metrics on the same examples,
is in test_evaluator_component.
"""
from __future__ import annotations

import numpy as np
import pytest

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)


def _combiner(models=("",), prediction_key="probability", example_weighted=False, num_buckets=10000, batched=False,
              baseline=None):
    import tensorflow_model_analysis as tfma

    from components.evaluator import gate_metrics

    config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(name=m, prediction_key=prediction_key,
                                                         is_baseline=m == baseline) for m in models])
    [computation] = gate_metrics.GateMetrics(num_buckets=num_buckets, batched=batched).computations(
        eval_config=config, model_names=list(models), example_weighted=example_weighted)
    return computation


def _inputs(label, predictions, weight=None):
    from tensorflow_model_analysis.metrics import metric_types

    extracts = {"labels": np.array([label], dtype=np.float32), "predictions": predictions}
    if weight is not None:
        extracts["example_weights"] = np.array([weight], dtype=np.float32)
    return metric_types.StandardMetricInputs(extracts)


def _run(combiner, elements, parts=1):
    # `parts` accumulators merged, as Beam combines bundles.
    accumulators = []
    for part in np.array_split(np.arange(len(elements)), parts):
        accumulator = combiner.create_accumulator()
        for i in part:
            accumulator = combiner.add_input(accumulator, elements[i])
        accumulators.append(combiner.compact(accumulator) if parts > 1 else accumulator)
    return combiner.extract_output(combiner.merge_accumulators(accumulators))


def _by_name(output, model=""):
    return {key.name: value for key, value in output.items() if key.model_name == model}


def _exact_auc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def _data(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    labels = (rng.random(n) < scores * 0.6).astype(np.float64)
    return labels, scores


def test_values_equal_plain_numpy_on_the_same_examples():
    labels, scores = _data()
    computation = _combiner()
    # More than one flush (4096 examples), and each prediction a dict keyed by the prediction_key.
    elements = [_inputs(y, {"probability": np.array([p], dtype=np.float32)}) for y, p in zip(labels, scores)]
    out = _by_name(_run(computation.combiner, elements))
    p = scores.astype(np.float32).astype(np.float64)
    assert set(out) == {"example_count", "auc", "binary_crossentropy", "calibration", "mean_label",
                        "mean_prediction", "auc_se"}
    assert {key.name for key in computation.keys} == set(out)
    assert out["example_count"] == len(labels)
    assert out["mean_label"] == pytest.approx(labels.mean(), rel=1e-12)
    assert out["mean_prediction"] == pytest.approx(p.mean(), rel=1e-12)
    assert out["calibration"] == pytest.approx(p.mean() / labels.mean(), rel=1e-12)
    log_loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert out["binary_crossentropy"] == pytest.approx(log_loss, rel=1e-9)
    # Bucketed: pairs within one of 10,000 buckets count as ties, so a bounded difference from the exact AUC.
    assert out["auc"] == pytest.approx(_exact_auc(labels, p), abs=5e-4)
    assert 0.6 < out["auc"] < 0.9


def test_auc_is_exact_when_no_two_classes_share_a_bucket():
    labels = np.array([0, 1, 0, 1, 1, 0, 1], dtype=np.float64)
    scores = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.95])
    out = _by_name(_run(_combiner(num_buckets=10).combiner, [_inputs(y, np.array([s])) for y, s in zip(labels, scores)]))
    assert out["auc"] == pytest.approx(_exact_auc(labels, scores), abs=1e-12) == pytest.approx(8 / 12)
    # A positive and a negative in one bucket: a tie, half a pair.
    out = _by_name(_run(_combiner(num_buckets=10).combiner, [_inputs(1, np.array([0.51])), _inputs(0, np.array([0.59]))]))
    assert out["auc"] == 0.5


def test_merged_accumulators_give_what_one_pass_gives():
    labels, scores = _data(3000, seed=1)
    elements = [_inputs(y, np.array([p])) for y, p in zip(labels, scores)]
    combiner = _combiner().combiner
    one, merged = _by_name(_run(combiner, elements)), _by_name(_run(combiner, elements, parts=7))
    assert one.keys() == merged.keys()
    for name in one:
        assert merged[name] == pytest.approx(one[name], rel=1e-12)


def test_two_models_are_read_from_one_pass_by_model_name():
    labels, scores = _data(2000, seed=2)
    elements = [_inputs(y, {"candidate": {"probability": np.array([p])}, "baseline": {"probability": np.array([1 - p])}})
                for y, p in zip(labels, scores)]
    out = _run(_combiner(models=("candidate", "baseline")).combiner, elements)
    candidate, baseline = _by_name(out, "candidate"), _by_name(out, "baseline")
    assert candidate["auc"] == pytest.approx(1 - baseline["auc"], abs=1e-9)
    assert candidate["mean_prediction"] + baseline["mean_prediction"] == pytest.approx(1.0)
    assert candidate["example_count"] == baseline["example_count"] == 2000


def test_paired_statistics_of_candidate_and_baseline_on_the_same_rows(tmp_path):
    """With a baseline in the EvalConfig the candidate gets DeLong's AUC difference and the paired log loss
    difference of exactly the rows it saw, in one pass or batched and merged."""
    from scipy import stats

    from tensorflow_model_analysis.metrics import metric_types

    labels, scores = _data(1500, seed=5)
    rng = np.random.default_rng(6)
    other = np.clip(scores + rng.normal(0, 0.15, len(scores)), 0.001, 0.999)
    models = ("candidate", "baseline")
    elements = [_inputs(y, {"candidate": {"probability": np.array([p])}, "baseline": {"probability": np.array([q])}})
                for y, p, q in zip(labels, scores, other)]
    computation = _combiner(models=models, baseline="baseline")
    one = _run(computation.combiner, elements)
    batches = [metric_types.StandardMetricInputs({
        "labels": {m: labels[part][:, None] for m in models},
        "predictions": {"candidate": {"probability": scores[part][:, None]},
                        "baseline": {"probability": other[part][:, None]}}})
        for part in np.array_split(np.arange(1500), 7)]
    merged = _run(_combiner(models=models, baseline="baseline", batched=True).combiner, batches, parts=3)
    for out in (one, merged):
        cand, base = _by_name(out, "candidate"), _by_name(out, "baseline")
        assert {"auc_diff", "auc_diff_se", "log_loss_diff", "log_loss_diff_se"} <= set(cand)
        assert "auc_diff" not in base and "auc_se" in base
        # The exact (pairwise) AUCs, not the bucketed ones.
        assert cand["auc_diff"] == pytest.approx(_exact_auc(labels, scores) - _exact_auc(labels, other), abs=1e-12)
        ll = lambda p: -(labels * np.log(p) + (1 - labels) * np.log(1 - p))  # noqa: E731
        d = ll(scores) - ll(other)
        assert cand["log_loss_diff"] == pytest.approx(d.mean(), rel=1e-9)
        assert cand["log_loss_diff_se"] == pytest.approx(stats.sem(d), rel=1e-9)
        assert 0 < cand["auc_diff_se"] < 0.05
    # Without a baseline in the EvalConfig: no differences, only each model's own auc_se.
    alone = _by_name(_run(_combiner(models=models).combiner, elements), "candidate")
    assert "auc_diff" not in alone and alone["auc_se"] > 0


def test_example_weights_weigh_every_metric():
    # Weight 3 on an example equals three copies of it.
    labels, scores = _data(400, seed=3)
    weights = np.where(np.arange(400) % 2 == 0, 3.0, 1.0)
    weighted = _by_name(_run(_combiner(example_weighted=True).combiner,
                             [_inputs(y, np.array([p]), w) for y, p, w in zip(labels, scores, weights)]))
    copies = [_inputs(y, np.array([p])) for y, p, w in zip(labels, scores, weights) for _ in range(int(w))]
    repeated = _by_name(_run(_combiner().combiner, copies))
    assert weighted["example_count"] == 800
    for name in weighted:
        if name == "auc_se":  # the paired statistics need one row per example: undefined when weighted
            assert np.isnan(weighted[name])
            continue
        assert weighted[name] == pytest.approx(repeated[name], rel=1e-9)


def test_saturated_predictions_give_a_finite_log_loss():
    out = _by_name(_run(_combiner().combiner, [_inputs(1, np.array([0.0])), _inputs(0, np.array([0.5]))]))
    assert np.isfinite(out["binary_crossentropy"])
    assert out["binary_crossentropy"] == pytest.approx((-np.log(1e-7) - np.log(0.5)) / 2)


def test_one_class_only_has_no_auc_and_no_examples_has_no_means():
    out = _by_name(_run(_combiner().combiner, [_inputs(0, np.array([0.2])), _inputs(0, np.array([0.4]))]))
    assert np.isnan(out["auc"]) and np.isnan(out["calibration"]) and out["mean_label"] == 0.0
    empty = _by_name(_run(_combiner().combiner, []))
    assert empty["example_count"] == 0 and np.isnan(empty["mean_prediction"]) and np.isnan(empty["auc"])


@pytest.mark.parametrize("label, prediction, message", [
    (2.0, np.array([0.5]), "0/1 labels"),
    (1.0, np.array([1.5]), "probabilities in \\[0, 1\\]"),
    (1.0, np.array([0.2, 0.8]), "one prediction per example"),
    (1.0, {"logits": np.array([0.2])}, "one prediction per example .* dict with keys \\['logits'\\]"),
])
def test_bad_inputs_are_refused_with_what_is_wrong(label, prediction, message):
    combiner = _combiner().combiner
    with pytest.raises(ValueError, match=message):
        _run(combiner, [_inputs(label, prediction)])


def test_multi_class_configuration_is_refused():
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.metrics import metric_types

    from components.evaluator import gate_metrics

    with pytest.raises(ValueError, match="binary classifier with one output"):
        gate_metrics.GateMetrics().computations(eval_config=tfma.EvalConfig(), model_names=[""],
                                                sub_keys=[metric_types.SubKey(class_id=1)])


def test_tfma_builds_it_from_the_eval_config():
    # The path TFMA takes: the MetricConfig's module and class name, no import by us.
    from tensorflow_model_analysis.metrics import metric_specs

    from components.evaluator import tfma_run

    config = tfma_run.build_eval_config("clicked", "device", has_baseline=True)
    computations = metric_specs.to_computations(config.metrics_specs, eval_config=config)
    names = {(key.name, key.model_name) for c in computations for key in c.keys}
    assert {("auc", "candidate"), ("auc", "baseline"), ("binary_crossentropy", "candidate")} <= names


def test_tfma_reads_only_the_labels_slices_and_serialized_examples():
    import pyarrow as pa
    import tensorflow_model_analysis as tfma

    from components.evaluator import tfma_run

    config = tfma_run.build_eval_config("clicked", "device", has_baseline=True)
    assert tfma_run.gate_columns(config) == ["clicked", "device", tfma.ARROW_INPUT_COLUMN]
    batch = pa.RecordBatch.from_arrays(
        [pa.array([[1.0]]), pa.array([[b"mobile"]]), pa.array([[0]]), pa.array([b"serialized"])],
        names=["price", "device", "clicked", tfma.ARROW_INPUT_COLUMN])
    kept = tfma_run.keep_columns(batch, tfma_run.gate_columns(config))
    assert kept.schema.names == ["clicked", "device", tfma.ARROW_INPUT_COLUMN]
    assert kept.column(1).to_pylist() == [[b"mobile"]] and kept.num_rows == 1


def test_batched_rows_give_what_the_same_examples_give_one_by_one():
    # SliceBatches hands GateMetrics arrays of rows ([n, 1], keyed by model); the
    # sums must be those of the examples fed one at a time.
    labels, scores = _data(3000, seed=4)
    scores = scores.astype(np.float32)
    opposite = (1 - scores).astype(np.float32)
    weights = np.where(np.arange(3000) % 3 == 0, 2.0, 1.0)
    models = ("candidate", "baseline")
    single = _run(_combiner(models=models, example_weighted=True).combiner, [
        _inputs(y, {"candidate": {"probability": np.array([p])}, "baseline": {"probability": np.array([q])}}, w)
        for y, p, q, w in zip(labels, scores, opposite, weights)])
    from tensorflow_model_analysis.metrics import metric_types

    batches = []
    for part in np.array_split(np.arange(3000), 11):  # uneven batches, as slicing leaves them
        batches.append(metric_types.StandardMetricInputs({
            "labels": {m: labels[part].astype(np.int64)[:, None] for m in models},
            "predictions": {"candidate": {"probability": scores[part][:, None]},
                            "baseline": {"probability": opposite[part][:, None]}},
            "example_weights": {m: weights[part] for m in models}}))
    batched = _run(_combiner(models=models, example_weighted=True, batched=True).combiner, batches, parts=3)
    assert batched.keys() == single.keys()
    for key in single:
        assert batched[key] == pytest.approx(single[key], rel=1e-9, nan_ok=True), key


@pytest.mark.parametrize("labels, predictions, message", [
    (np.zeros([4, 1]), np.zeros([3, 1]), "one prediction per row for 4 rows"),
    (np.zeros([4, 1]), np.zeros([4, 2]), "one prediction per row .* shape \\(4, 2\\)"),
    (np.zeros([4, 3]), np.zeros([4, 1]), "one label per row"),
])
def test_batched_rows_of_the_wrong_shape_are_refused(labels, predictions, message):
    from tensorflow_model_analysis.metrics import metric_types

    element = metric_types.StandardMetricInputs({"labels": labels, "predictions": predictions})
    with pytest.raises(ValueError, match=message):
        _run(_combiner(batched=True).combiner, [element])


def test_the_gate_runs_tfma_on_sliced_batches_not_single_examples(tmp_path):
    import tensorflow as tf
    import tensorflow_model_analysis as tfma

    from components.evaluator import batched_slices, tfma_run

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            return {"probability": tf.fill([tf.shape(examples)[0], 1], 0.5)}

    scorer = Scorer()
    path = str(tmp_path / "model")
    tf.saved_model.save(scorer, path, signatures={"serving_default": scorer.serve})
    config = tfma_run.build_eval_config("clicked", "device", has_baseline=False)
    assert tfma_run.is_batched(config)
    shared = tfma.default_eval_shared_model(eval_saved_model_path=path, eval_config=config)
    stages = [e.stage_name for e in tfma_run.gate_extractors(shared, config)]
    assert stages[-2:] == ["ExtractPredictions", batched_slices.SLICE_BATCHES_STAGE_NAME]
    assert "ExtractUnbatchedInputs" not in stages and "ExtractSliceKeys" not in stages
    evaluators = tfma_run.gate_evaluators(shared, config)
    assert [e.run_after for e in evaluators] == [batched_slices.SLICE_BATCHES_STAGE_NAME]
    # Stock metrics need single examples: with them, TFMA's own extractors and evaluators.
    stock = tfma.EvalConfig()
    stock.CopyFrom(config)
    stock.metrics_specs[0].metrics.add(class_name="AUC")
    assert not tfma_run.is_batched(stock)
    assert tfma_run.gate_evaluators(shared, stock) is None
    assert [e.stage_name for e in tfma_run.gate_extractors(shared, stock)][-2:] == [
        "ExtractUnbatchedInputs", "ExtractSliceKeys"]
