"""TFMA for the gate: the EvalConfig, one Beam run that scores the candidate and
the baseline on the same examples, and the metrics read back as plain dicts.

The metrics are one TFMA metric, `gate_metrics.GateMetrics`, TFMA gets only
the columns it reads (the label, the slice feature and the serialized
examples for the models), and it slices whole batches
(`batched_slices.SliceBatches`) instead of single examples. All three are
for speed: at 20,000 eval examples and two models the first two took the
evaluator from 36 s to about 7 s, the third took it from 9.8 s to 4.1 s
(2026-12-02), with the stock metrics' values.

The same combiner keeps the rows' labels and both models' predictions, so the
gate's paired tests (DeLong for the AUC difference, paired t for the log
loss difference, `paired`) run on exactly the examples both models scored,
per slice, in the same Beam run.

The output folder is standard TFMA output (what stock TFX Evaluator writes
into a `ModelEvaluation`), so `tfma.load_eval_result(uri)` reads it. With a
baseline the models are "candidate" and "baseline", as in stock TFX; a lone
candidate is TFMA's unnamed model "" (TFMA renames a single model so).
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.extractors import slice_key_extractor, unbatch_extractor
from tfx import types
from tfx.components.util import tfxio_utils
from tfx.utils import io_utils, path_utils

from components.evaluator import batched_slices, gate_metrics
from components.evaluator.gate import SlicedMetrics

CANDIDATE = "candidate"
BASELINE = "baseline"
# The trainer's contract: `serving_default(examples: tf.string[None]) -> {"probability": float32[None, 1]}`.
SIGNATURE_NAME = "serving_default"
PREDICTION_KEY = "probability"

# The names TFMA writes -> ours in gate.SlicedMetrics. One TFMA metric,
# gate_metrics.GateMetrics, computes them all (why: its docstring).
_TFMA_TO_OURS = {
    gate_metrics.EXAMPLE_COUNT: "example_count",
    gate_metrics.AUC: "auc",
    gate_metrics.CALIBRATION: "calibration",
    gate_metrics.BINARY_CROSSENTROPY: "log_loss",
    gate_metrics.MEAN_LABEL: "mean_label",
    gate_metrics.MEAN_PREDICTION: "mean_prediction",
    # The paired statistics for the gate's tests (the differences under the candidate's name).
    gate_metrics.AUC_SE: "auc_se",
    gate_metrics.AUC_DIFF: "auc_diff",
    gate_metrics.AUC_DIFF_SE: "auc_diff_se",
    gate_metrics.LOG_LOSS_DIFF: "log_loss_diff",
    gate_metrics.LOG_LOSS_DIFF_SE: "log_loss_diff_se",
}
_TELEMETRY = ["DriftlineEvaluator"]


def tfma_model_names(has_baseline: bool) -> Dict[str, str]:
    """{our name: TFMA's name}. TFMA names a lone model "" whatever its spec says; two are named."""
    return {CANDIDATE: CANDIDATE, BASELINE: BASELINE} if has_baseline else {CANDIDATE: ""}


def build_eval_config(label_key: str, slice_feature: Optional[str], has_baseline: bool,
                      prediction_key: str = PREDICTION_KEY) -> tfma.EvalConfig:
    """Model specs for the candidate (and the baseline), our metrics, overall and per `slice_feature`.

    No TFMA thresholds: the verdict is `gate.decide`'s, one rule set in one place.
    """
    names = tfma_model_names(has_baseline)
    model_specs = [tfma.ModelSpec(name=names[CANDIDATE], signature_name=SIGNATURE_NAME, model_type=tfma.TF_GENERIC,
                                  label_key=label_key, prediction_key=prediction_key)]
    if has_baseline:
        model_specs.append(tfma.ModelSpec(name=names[BASELINE], signature_name=SIGNATURE_NAME,
                                          model_type=tfma.TF_GENERIC, label_key=label_key,
                                          prediction_key=prediction_key, is_baseline=True))
    metrics = [tfma.MetricConfig(class_name=gate_metrics.GateMetrics.__name__, module=gate_metrics.__name__,
                                 config=json.dumps({"batched": True}))]
    metrics_spec = tfma.MetricsSpec(metrics=metrics, model_names=[spec.name for spec in model_specs])
    slicing_specs = [tfma.SlicingSpec()]
    if slice_feature:
        slicing_specs.append(tfma.SlicingSpec(feature_keys=[slice_feature]))
    return tfma.EvalConfig(model_specs=model_specs, metrics_specs=[metrics_spec], slicing_specs=slicing_specs)


def split_file_pattern(examples: types.Artifact, split: str) -> Optional[str]:
    """The glob of `split`'s files in `examples`, or None when the split holds no file."""
    split_uri = os.path.join(examples.uri, f"Split-{split}")
    if not tf.io.gfile.exists(split_uri) or not tf.io.gfile.listdir(split_uri):
        return None
    return io_utils.all_files_pattern(split_uri)


def run_tfma(make_beam_pipeline: Callable[[], beam.Pipeline], examples: types.Artifact, split: str,
             eval_config: tfma.EvalConfig, model_paths: Dict[str, str], output_path: str) -> None:
    """Scores every model of `model_paths` ({TFMA model name: SavedModel dir}) on `split` of `examples`.

    One Beam pipeline, one read of the data: TFMA feeds the same record
    batches to both models, so they are judged on identical examples.
    """
    pattern = split_file_pattern(examples, split)
    models = [tfma.default_eval_shared_model(eval_saved_model_path=model_paths[spec.name], model_name=spec.name,
                                             eval_config=eval_config)
              for spec in eval_config.model_specs]
    with make_beam_pipeline() as pipeline:
        if pattern is None:
            # No file: no examples, but still a standard (empty) TFMA output.
            batches = pipeline | f"NoFiles[{split}]" >> beam.Create([])
        else:
            tfxio = tfxio_utils.get_tfxio_factory_from_artifact(
                examples=[examples], telemetry_descriptors=_TELEMETRY,
                raw_record_column_name=tfma.ARROW_INPUT_COLUMN)(pattern)
            batches = (pipeline | f"Read[{split}]" >> tfxio.BeamSource()
                       | "KeepGateColumns" >> beam.Map(keep_columns, gate_columns(eval_config)))
        shared = models[0] if len(models) == 1 else models
        _ = batches | "ExtractEvaluateAndWriteResults" >> tfma.ExtractEvaluateAndWriteResults(
            eval_shared_model=shared, eval_config=eval_config, output_path=output_path,
            extractors=gate_extractors(shared, eval_config), evaluators=gate_evaluators(shared, eval_config))


def gate_columns(eval_config: tfma.EvalConfig) -> List[str]:
    """The columns TFMA needs besides the serialized examples the models read: labels and slice features."""
    columns = {spec.label_key for spec in eval_config.model_specs if spec.label_key}
    for slicing_spec in eval_config.slicing_specs:
        columns.update(slicing_spec.feature_keys)
        columns.update(slicing_spec.feature_values)
    return sorted(columns) + [tfma.ARROW_INPUT_COLUMN]


def keep_columns(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    """`batch` with only `columns` (those it has).

    TFMA's extractors split every column of every batch into per-example
    values, and the models read only the serialized examples. Dropping the
    columns no metric or slice reads cut this split to a third.
    """
    names = batch.schema.names
    keep = [name for name in columns if name in names]
    return pa.RecordBatch.from_arrays([batch.column(names.index(name)) for name in keep], names=keep)


def is_batched(eval_config: tfma.EvalConfig) -> bool:
    """True when every configured metric is a batched GateMetrics, so the evaluation may run on
    `batched_slices.SliceBatches` extracts (rows of a batch, not single examples)."""
    metrics = [m for spec in eval_config.metrics_specs for m in spec.metrics]
    return bool(metrics) and all(
        m.class_name == gate_metrics.GateMetrics.__name__ and m.module == gate_metrics.__name__
        and _metric_kwargs(m.config).get("batched") is True
        for m in metrics)


def _metric_kwargs(config: str) -> Dict[str, object]:
    # As TFMA reads MetricConfig.config: JSON keyword arguments, the braces optional.
    config = config.strip()
    return json.loads(config if config.startswith("{") else "{" + config + "}")


def gate_extractors(shared_models, eval_config: tfma.EvalConfig) -> List[tfma.extractors.Extractor]:
    """TFMA's default extractors; for batched metrics, with its unbatching and slicing done per batch.

    TFMA splits every batch into single examples before slicing, and that
    per-example path cost more than both models' predictions (see
    `batched_slices`). Metrics that read whole batches get
    `SliceBatches` in place of the last two stages.
    """
    extractors = tfma.default_extractors(eval_shared_model=shared_models, eval_config=eval_config)
    if not is_batched(eval_config):
        return extractors
    names = [e.stage_name for e in extractors]
    tail = [unbatch_extractor.UNBATCH_EXTRACTOR_STAGE_NAME, slice_key_extractor.SLICE_KEY_EXTRACTOR_STAGE_NAME]
    if names[-2:] != tail:
        raise RuntimeError(f"TFMA's default extractors end with {names[-2:]}, not {tail}: this TFMA is not the "
                           f"one SliceBatches was written for (see constraints.txt)")
    return extractors[:-2] + [batched_slices.SliceBatches(eval_config)]


def gate_evaluators(shared_models, eval_config: tfma.EvalConfig) -> Optional[List[tfma.evaluators.Evaluator]]:
    """TFMA's default evaluators, run after `SliceBatches` where `gate_extractors` put it (None: TFMA's own)."""
    if not is_batched(eval_config):
        return None
    return [e._replace(run_after=batched_slices.SLICE_BATCHES_STAGE_NAME)
            if e.run_after == slice_key_extractor.SLICE_KEY_EXTRACTOR_STAGE_NAME else e
            for e in tfma.default_evaluators(eval_shared_model=shared_models, eval_config=eval_config)]


def read_metrics(output_path: str, slice_feature: Optional[str]) -> Dict[str, SlicedMetrics]:
    """{TFMA model name: SlicedMetrics} from TFMA's output ("" for a lone model)."""
    result: Dict[str, SlicedMetrics] = {}
    for metrics_for_slice in tfma.load_metrics(output_path):
        slice_value = _slice_value(metrics_for_slice, slice_feature)
        if slice_value is _OTHER_SLICE:
            continue
        for kv in metrics_for_slice.metric_keys_and_values:
            ours = _TFMA_TO_OURS.get(kv.key.name)
            if ours is None or kv.key.is_diff:
                continue
            model = result.setdefault(kv.key.model_name, {"overall": {}, "slices": {}})
            target = model["overall"] if slice_value is None else model["slices"].setdefault(slice_value, {})
            target[ours] = _value(kv.value)
    for model in result.values():
        for metrics in [model["overall"], *model["slices"].values()]:
            _add_positive_count(metrics)
    return result


_OTHER_SLICE = object()


def _slice_value(metrics_for_slice, slice_feature: Optional[str]):
    """None for the overall slice, the value as str for a slice of `slice_feature`, else _OTHER_SLICE."""
    if metrics_for_slice.HasField("cross_slice_key"):
        return _OTHER_SLICE
    keys = metrics_for_slice.slice_key.single_slice_keys
    if not keys:
        return None
    if len(keys) != 1 or keys[0].column != slice_feature:
        return _OTHER_SLICE
    key = keys[0]
    kind = key.WhichOneof("kind")
    value = getattr(key, kind)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _value(metric_value) -> float:
    kind = metric_value.WhichOneof("type")
    if kind == "double_value":
        return float(metric_value.double_value.value)
    if kind == "bounded_value":
        return float(metric_value.bounded_value.value.value)
    return float("nan")


def _add_positive_count(metrics: Dict[str, float]) -> None:
    # Labels are 0/1 and unweighted: positives = mean label x examples.
    count, mean_label = metrics.get("example_count"), metrics.get("mean_label")
    if count is not None and mean_label is not None and not math.isnan(mean_label):
        metrics["positive_count"] = float(round(mean_label * count))
    elif count is not None:
        metrics["positive_count"] = 0.0


def evaluate(make_beam_pipeline: Callable[[], beam.Pipeline], examples: types.Artifact, split: str,
             label_key: str, slice_feature: Optional[str], candidate_path: str, baseline_path: Optional[str],
             output_path: str) -> Dict[str, SlicedMetrics]:
    """Runs TFMA on `split` of `examples` and returns {"candidate": ..., "baseline": ...} metrics.

    An empty split (no file, or files without records) is not an error but no
    evidence: the models get `example_count` 0, and the gate refuses the candidate.
    """
    has_baseline = baseline_path is not None
    names = tfma_model_names(has_baseline)
    eval_config = build_eval_config(label_key, slice_feature, has_baseline)
    paths = {names[CANDIDATE]: candidate_path, **({names[BASELINE]: baseline_path} if has_baseline else {})}
    run_tfma(make_beam_pipeline, examples, split, eval_config, paths, output_path)
    metrics = read_metrics(output_path, slice_feature)
    missing = set(paths) - set(metrics)
    if metrics and missing:
        raise RuntimeError(f"TFMA wrote metrics for models {sorted(metrics)} but not for {sorted(missing)} "
                           f"(output {output_path})")
    # No metrics at all: the split holds no examples (no evidence; the gate refuses the candidate).
    empty: SlicedMetrics = {"overall": {"example_count": 0.0, "positive_count": 0.0}, "slices": {}}
    return {ours: metrics.get(theirs, empty) for ours, theirs in names.items()}


def serving_model_path(model: types.Artifact) -> str:
    """The SavedModel of a `Model` artifact (`<uri>/Format-Serving`, stock TFX layout)."""
    return path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))

