"""The gate's metrics as one TFMA metric: a vectorised combiner in place of six per-example ones.

TFMA computes metrics on unbatched extracts, and each stock metric
(`AUC`, `BinaryCrossEntropy`, `Calibration`, ...) runs its own combiner,
which looks up the label, prediction and weight of every example through
the generic `to_label_prediction_example_weight` path. For a two-model gate
with a slice that is about 1.5 ms of CPU per example (measured on a
20,000-example eval split: 30 of the evaluator's 36 s). `GateMetrics` reads
each example once for every model, buffers (label, prediction, weight), and
folds the buffer into a fixed histogram with numpy, so its cost per example
is a few dict lookups.

It writes the same metric names as the stock metrics (`example_count`,
`auc`, `binary_crossentropy`, `calibration`, `mean_label`,
`mean_prediction`), into standard TFMA output, sliced and per model like any
TFMA metric. Its values agree with the stock metrics' (a test compares
them on the same examples):
- `auc` is the ROC AUC over `num_buckets` equal-width prediction buckets,
  with ties within a bucket counted as half, which is what stock `AUC`
  computes from its confusion matrices at as many thresholds.
- `binary_crossentropy` clips predictions to [1e-7, 1 - 1e-7], as Keras
  does; stock TFMA takes log(0) to infinity for a saturated prediction.

Binary labels and one probability per example only: that is the trainer's
contract (`tfma_run.PREDICTION_KEY`).

Paired statistics, for the gate's tests (`paired`): the combiner also keeps
every row's label and each model's prediction (8 bytes a number: 2.4 MB for
100,000 rows and two models) and, at the end, writes each model's `auc_se`
(DeLong standard error of its exact AUC) and, under the candidate's name
when the EvalConfig has a baseline, `auc_diff` and `auc_diff_se`
(candidate - baseline, DeLong's test for correlated AUCs, exact midrank AUCs)
and `log_loss_diff` and `log_loss_diff_se` (the mean of the per-example log
loss differences and its standard error). Per slice like every metric. They
need one row per example: with example weights they are NaN.

`GateMetrics(batched=True)` reads extracts that each hold many rows (arrays
with the batch dimension first), as `batched_slices.SliceBatches` makes them,
and folds every extract into the histogram in one numpy call. That is the
mode `tfma_run` uses; the default reads TFMA's usual one-example extracts.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import config_pb2

from components.evaluator import paired

GATE_METRICS_NAME = "gate_metrics"
EXAMPLE_COUNT = "example_count"
AUC = "auc"
BINARY_CROSSENTROPY = "binary_crossentropy"
CALIBRATION = "calibration"
MEAN_LABEL = "mean_label"
MEAN_PREDICTION = "mean_prediction"
METRIC_NAMES = (EXAMPLE_COUNT, AUC, BINARY_CROSSENTROPY, CALIBRATION, MEAN_LABEL, MEAN_PREDICTION)
AUC_SE = "auc_se"
AUC_DIFF = "auc_diff"
AUC_DIFF_SE = "auc_diff_se"
LOG_LOSS_DIFF = "log_loss_diff"
LOG_LOSS_DIFF_SE = "log_loss_diff_se"
PAIRED_NAMES = (AUC_DIFF, AUC_DIFF_SE, LOG_LOSS_DIFF, LOG_LOSS_DIFF_SE)
_ROWS = "__rows__"  # the accumulator's entry for the buffered rows (not a model name: TFMA's are "" or named)

# As many buckets as stock AUC's default thresholds.
DEFAULT_NUM_BUCKETS = 10000
_EPSILON = 1e-7
# Buffered examples per model before they are folded into the histogram:
# large enough that numpy's per-call cost is amortised, small enough to
# keep an accumulator's memory bounded.
_FLUSH_EVERY = 4096


class GateMetrics(metric_types.Metric):
    """example_count, auc, binary_crossentropy, calibration, mean_label and mean_prediction for every model."""

    def __init__(self, name: str = GATE_METRICS_NAME, num_buckets: int = DEFAULT_NUM_BUCKETS,
                 batched: bool = False):
        super().__init__(_gate_metrics, name=name, num_buckets=num_buckets, batched=batched)

    @property
    def compute_confidence_interval(self) -> bool:
        return False


metric_types.register_metric(GateMetrics)


def _gate_metrics(name: str = GATE_METRICS_NAME, num_buckets: int = DEFAULT_NUM_BUCKETS, batched: bool = False,
                  eval_config: Optional[config_pb2.EvalConfig] = None,
                  model_names: Optional[List[str]] = None, output_names: Optional[List[str]] = None,
                  sub_keys: Optional[List[Optional[metric_types.SubKey]]] = None,
                  aggregation_type: Optional[metric_types.AggregationType] = None,
                  class_weights: Optional[Dict[int, float]] = None,
                  example_weighted: bool = False) -> metric_types.MetricComputations:
    del name  # the metrics carry their own names
    if any(output_names or []) or any(key is not None for key in (sub_keys or [])) or aggregation_type \
            or class_weights:
        raise ValueError("GateMetrics is for a binary classifier with one output: configure it without "
                         "output names, sub keys (class ids, top k), aggregation or class weights")
    if num_buckets < 2:
        raise ValueError(f"GateMetrics num_buckets must be >= 2, got {num_buckets}")
    model_names = list(model_names or [""])
    baseline = _baseline_name(eval_config, model_names)
    candidate = next((m for m in model_names if m != baseline), None) if baseline is not None else None
    keys = {model: {metric: metric_types.MetricKey(name=metric, model_name=model,
                                                   example_weighted=example_weighted)
                    for metric in METRIC_NAMES + (AUC_SE,) + (PAIRED_NAMES if model == candidate else ())}
            for model in model_names}
    prediction_keys = {model: _prediction_key(eval_config, model) for model in model_names}
    combiner = _GateMetricsCombiner(keys, prediction_keys, num_buckets, example_weighted, batched,
                                    pair=(candidate, baseline) if candidate is not None else None)
    return [metric_types.MetricComputation(
        keys=[key for per_model in keys.values() for key in per_model.values()],
        preprocessors=None, combiner=combiner)]


def _baseline_name(eval_config: Optional[config_pb2.EvalConfig], model_names: List[str]) -> Optional[str]:
    """The baseline model's name when the EvalConfig has one among two models (None otherwise)."""
    if eval_config is None or len(model_names) != 2:
        return None
    names = [spec.name for spec in eval_config.model_specs if spec.is_baseline and spec.name in model_names]
    return names[0] if len(names) == 1 else None


def _prediction_key(eval_config: Optional[config_pb2.EvalConfig], model_name: str) -> str:
    if eval_config is not None:
        for spec in eval_config.model_specs:
            if spec.name == model_name or len(eval_config.model_specs) == 1:
                return spec.prediction_key
    return ""


class _Histogram:
    """One model's running sums: weight by prediction bucket and label, and the totals."""
    __slots__ = ("positives", "negatives", "weight", "weighted_labels", "weighted_predictions", "log_loss",
                 "labels", "predictions", "weights")

    def __init__(self, num_buckets: int):
        self.positives = np.zeros(num_buckets)
        self.negatives = np.zeros(num_buckets)
        self.weight = 0.0
        self.weighted_labels = 0.0
        self.weighted_predictions = 0.0
        self.log_loss = 0.0
        self.labels: List[float] = []
        self.predictions: List[float] = []
        self.weights: List[float] = []

    def flush(self) -> None:
        if not self.labels:
            return
        labels = np.asarray(self.labels, dtype=np.float64)
        predictions = np.asarray(self.predictions, dtype=np.float64)
        weights = np.asarray(self.weights, dtype=np.float64) if self.weights else None
        self.labels, self.predictions, self.weights = [], [], []
        self.fold(labels, predictions, weights)

    def fold(self, labels: np.ndarray, predictions: np.ndarray, weights: Optional[np.ndarray]) -> None:
        """Adds examples (1-D float64 arrays of one length; no weights: weight 1) to the sums."""
        if weights is None:
            weights = np.ones_like(labels)
        if np.any((labels != 0.0) & (labels != 1.0)):
            raise ValueError(f"GateMetrics needs 0/1 labels, got {sorted(set(labels.tolist()))[:5]}")
        if np.any(np.isnan(predictions)) or np.any((predictions < 0.0) | (predictions > 1.0)):
            raise ValueError("GateMetrics needs probabilities in [0, 1]; got a prediction outside it or NaN "
                             "(is the model's prediction_key a logit?)")
        num_buckets = len(self.positives)
        buckets = np.minimum((predictions * num_buckets).astype(np.int64), num_buckets - 1)
        self.positives += np.bincount(buckets, weights=weights * labels, minlength=num_buckets)
        self.negatives += np.bincount(buckets, weights=weights * (1.0 - labels), minlength=num_buckets)
        self.weight += float(weights.sum())
        self.weighted_labels += float((weights * labels).sum())
        self.weighted_predictions += float((weights * predictions).sum())
        clipped = np.clip(predictions, _EPSILON, 1.0 - _EPSILON)
        self.log_loss += float(-(weights * (labels * np.log(clipped) + (1.0 - labels) * np.log1p(-clipped))).sum())

    def merge(self, other: "_Histogram") -> None:
        other.flush()
        self.flush()
        self.positives += other.positives
        self.negatives += other.negatives
        self.weight += other.weight
        self.weighted_labels += other.weighted_labels
        self.weighted_predictions += other.weighted_predictions
        self.log_loss += other.log_loss

    def results(self) -> Dict[str, float]:
        self.flush()
        positives, negatives = self.positives.sum(), self.negatives.sum()
        if positives > 0 and negatives > 0:
            negatives_below = np.cumsum(self.negatives) - self.negatives
            auc = float((self.positives * (negatives_below + 0.5 * self.negatives)).sum() / (positives * negatives))
        else:
            auc = float("nan")
        weight = self.weight
        return {
            EXAMPLE_COUNT: weight,
            AUC: auc,
            BINARY_CROSSENTROPY: self.log_loss / weight if weight else float("nan"),
            MEAN_LABEL: self.weighted_labels / weight if weight else float("nan"),
            MEAN_PREDICTION: self.weighted_predictions / weight if weight else float("nan"),
            CALIBRATION: (self.weighted_predictions / self.weighted_labels
                          if self.weighted_labels else float("nan")),
        }


class _Rows:
    """Every row's label and each model's prediction, in chunks, for the paired statistics."""
    __slots__ = ("labels", "predictions")

    def __init__(self, models: Sequence[str]):
        self.labels: List[np.ndarray] = []
        self.predictions: Dict[str, List[np.ndarray]] = {model: [] for model in models}

    def add(self, label: np.ndarray, predictions: Dict[str, np.ndarray]) -> None:
        self.labels.append(label)
        for model, prediction in predictions.items():
            self.predictions[model].append(prediction)

    def compact(self) -> None:
        if len(self.labels) > 1:
            self.labels = [np.concatenate(self.labels)]
            self.predictions = {m: [np.concatenate(p)] for m, p in self.predictions.items()}

    def merge(self, other: "_Rows") -> None:
        self.labels.extend(other.labels)
        for model, chunks in other.predictions.items():
            self.predictions[model].extend(chunks)

    def arrays(self):
        self.compact()
        if not self.labels:
            return np.zeros(0), {m: np.zeros(0) for m in self.predictions}
        return self.labels[0], {m: p[0] for m, p in self.predictions.items()}


def paired_results(labels: np.ndarray, predictions: Dict[str, np.ndarray],
                   pair: Optional[tuple]) -> Dict[str, Dict[str, float]]:
    """{model: {auc_se, and for the candidate of `pair` (candidate, baseline) the paired differences}}."""
    out = {model: {AUC_SE: paired.auc_with_se(labels, p).se} for model, p in predictions.items()}
    if pair is not None:
        candidate, baseline = pair
        auc = paired.auc_difference(labels, predictions[candidate], predictions[baseline])
        log_loss = paired.log_loss_difference(labels, predictions[candidate], predictions[baseline])
        out[candidate].update({AUC_DIFF: auc.diff, AUC_DIFF_SE: auc.se,
                               LOG_LOSS_DIFF: log_loss.diff, LOG_LOSS_DIFF_SE: log_loss.se})
    return out


class _GateMetricsCombiner(beam.CombineFn):
    """One pass over the examples for all models: {model: _Histogram}."""

    def __init__(self, keys: Dict[str, Dict[str, metric_types.MetricKey]], prediction_keys: Dict[str, str],
                 num_buckets: int, example_weighted: bool, batched: bool = False, pair: Optional[tuple] = None):
        self._keys = keys
        self._pair = pair
        self._batched = batched
        self._models = list(keys)
        self._prediction_keys = prediction_keys
        self._num_buckets = num_buckets
        self._example_weighted = example_weighted

    def create_accumulator(self) -> Dict[str, Any]:
        accumulator: Dict[str, Any] = {model: _Histogram(self._num_buckets) for model in self._models}
        accumulator[_ROWS] = _Rows(self._models)
        return accumulator

    def add_input(self, accumulator: Dict[str, _Histogram],
                  element: metric_types.StandardMetricInputs) -> Dict[str, _Histogram]:
        labels = element.get(constants.LABELS_KEY)
        predictions = element.get(constants.PREDICTIONS_KEY)
        weights = element.get(constants.EXAMPLE_WEIGHTS_KEY) if self._example_weighted else None
        if self._batched:
            row_predictions = {}
            for model in self._models:
                label = _column(_for_model(labels, model, ""), "label", model)
                prediction = _column(_for_model(predictions, model, self._prediction_keys[model]), "prediction",
                                     model, rows=len(label))
                weight = (_column(_for_model(weights, model, ""), "example weight", model, rows=len(label))
                          if self._example_weighted else None)
                accumulator[model].fold(label, prediction, weight)
                row_predictions[model] = prediction
                row_labels = label
            if not self._example_weighted:
                accumulator[_ROWS].add(row_labels, row_predictions)
            return accumulator
        row_predictions = {}
        for model in self._models:
            histogram = accumulator[model]
            label = _scalar(_for_model(labels, model, ""), "label", model)
            prediction = _scalar(_for_model(predictions, model, self._prediction_keys[model]), "prediction", model)
            histogram.labels.append(label)
            histogram.predictions.append(prediction)
            if self._example_weighted:
                histogram.weights.append(_scalar(_for_model(weights, model, ""), "example weight", model))
            row_predictions[model] = np.array([prediction])
            row_label = np.array([label])
            if len(histogram.labels) >= _FLUSH_EVERY:
                histogram.flush()
        if not self._example_weighted:
            accumulator[_ROWS].add(row_label, row_predictions)
            if len(accumulator[_ROWS].labels) >= _FLUSH_EVERY:
                accumulator[_ROWS].compact()
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[Dict[str, _Histogram]]) -> Dict[str, _Histogram]:
        accumulators = iter(accumulators)
        result = next(accumulators)
        for accumulator in accumulators:
            for model in self._models:
                result[model].merge(accumulator[model])
            result[_ROWS].merge(accumulator[_ROWS])
        return result

    def compact(self, accumulator: Dict[str, _Histogram]) -> Dict[str, _Histogram]:
        for model in self._models:
            accumulator[model].flush()
        accumulator[_ROWS].compact()
        return accumulator

    def extract_output(self, accumulator: Dict[str, _Histogram]) -> metric_types.MetricsDict:
        output: Dict[metric_types.MetricKey, Any] = {}
        for model in self._models:
            for metric, value in accumulator[model].results().items():
                output[self._keys[model][metric]] = value
        if self._example_weighted:
            stats = {model: {name: float("nan") for name in self._keys[model] if name not in METRIC_NAMES}
                     for model in self._models}
        else:
            labels, predictions = accumulator[_ROWS].arrays()
            stats = paired_results(labels, predictions, self._pair)
        for model in self._models:
            for metric, value in stats[model].items():
                output[self._keys[model][metric]] = value
        return output


def _for_model(value: Any, model: str, output_key: str) -> Any:
    # With several models TFMA keys labels, predictions and weights by model
    # name; a dict-valued prediction is keyed by the model spec's prediction_key.
    if isinstance(value, Mapping) and model in value:
        value = value[model]
    if isinstance(value, Mapping) and output_key and output_key in value:
        value = value[output_key]
    return value


def _scalar(value: Any, what: str, model: str) -> float:
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(()))
    if isinstance(value, (float, int, np.floating, np.integer)):
        return float(value)
    raise ValueError(f"GateMetrics needs one {what} per example for model {model!r}, got {_describe(value)}")


def _column(value: Any, what: str, model: str, rows: Optional[int] = None) -> np.ndarray:
    """A batched extract's values, one per row: shape [rows] or [rows, 1]."""
    if isinstance(value, np.ndarray) and (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)) \
            and (rows is None or len(value) == rows):
        return value.reshape(-1).astype(np.float64, copy=False)
    expected = "" if rows is None else f" for {rows} rows"
    raise ValueError(f"GateMetrics(batched=True) needs one {what} per row{expected} for model {model!r}, "
                     f"got {_describe(value)}")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(value)}"
    return type(value).__name__


__all__: Sequence[str] = ("GateMetrics", "METRIC_NAMES", "DEFAULT_NUM_BUCKETS")
