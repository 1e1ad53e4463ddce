"""The gate's verdict: plain, typed functions on plain dicts of metrics.

No TFMA, no TFX here: `tfma_run` turns TFMA's output into the dicts below and
the executor writes the `Verdict` onto the blessing. Tests call `decide`
directly with hand-written metrics.

Metrics of one model on the newest span's eval split (`SlicedMetrics`)::

    {"overall": {"auc": 0.78, "example_count": 1998, "positive_count": 201,
                 "calibration": 1.02, "log_loss": 0.29, "mean_label": 0.1,
                 "mean_prediction": 0.102},
     "slices": {"mobile": {...same keys...}, "desktop": {...}}}

`slices` holds one entry per value of `GateConfig.slice_feature` (empty when
it is None). A metric that TFMA could not compute (AUC on one class only, an
empty split) is NaN or missing; a check on it fails.

The rules (thresholds from `pipelines.config.GateConfig`):

1. evidence: eval examples >= min_eval_examples and positives >=
   min_eval_positives; otherwise not blessed, "too little evidence".
2. absolute bounds: AUC >= min_auc, min_calibration <= calibration <=
   max_calibration, log loss <= max_log_loss.
3. change bound, only when a baseline exists (the first model is judged by
   the absolute bounds alone): AUC >= baseline AUC - max_auc_drop.
4. per slice: every slice with >= min_slice_examples examples has AUC >=
   min_slice_auc; smaller slices are ignored (and listed as such).
5. data, when the cycle's ingest counts are known (`Ingested`, from the
   `Examples` properties): dead-lettered lines / all lines read <=
   max_dead_letter_fraction.
6. training, when the candidate's record is known (`Trained`, from the
   `Model` properties): a cold start must have trained on at least one
   example (an untrained model knows nothing, whatever its AUC by chance).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from components.evaluator.config import GateConfig

METRIC_NAMES = ("auc", "example_count", "positive_count", "calibration", "log_loss",
                "mean_label", "mean_prediction")

Metrics = Dict[str, float]
SlicedMetrics = Dict[str, Any]  # {"overall": Metrics, "slices": {value: Metrics}}

# Bounds are inclusive; this absorbs float noise at the bound (0.779 - 0.005 vs 0.774).
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Check:
    """One rule applied to one number: `value <comparison> threshold`."""

    name: str  # the GateConfig field it enforces, e.g. "min_auc", "min_slice_auc[device=tablet]"
    value: Optional[float]  # None/NaN: the metric could not be computed, so the check fails
    threshold: float
    passed: bool
    comparison: str  # ">=" or "<="
    message: str  # why it failed, in words (also set when it passed)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "value": _json_number(self.value), "threshold": self.threshold,
                "passed": self.passed, "comparison": self.comparison, "message": self.message}


@dataclasses.dataclass(frozen=True)
class Verdict:
    blessed: bool
    reason: str  # one human sentence, starting "blessed: " or "not blessed: "
    checks: List[Check]
    candidate_metrics: SlicedMetrics
    baseline_metrics: Optional[SlicedMetrics]
    thresholds: Dict[str, Any]  # GateConfig.to_dict()
    # Slices below min_slice_examples: {slice value: example count}; not judged.
    ignored_slices: Dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def failed_checks(self) -> List[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def eval_examples(self) -> float:
        return _metric(self.candidate_metrics.get("overall", {}), "example_count", default=0.0)

    @property
    def eval_positives(self) -> float:
        return _metric(self.candidate_metrics.get("overall", {}), "positive_count", default=0.0)

    @property
    def candidate_auc(self) -> float:
        return _metric(self.candidate_metrics.get("overall", {}), "auc")

    @property
    def baseline_auc(self) -> Optional[float]:
        if self.baseline_metrics is None:
            return None
        return _metric(self.baseline_metrics.get("overall", {}), "auc")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "blessed": self.blessed,
            "reason": self.reason,
            "checks": [c.to_dict() for c in self.checks],
            "failed_checks": [c.name for c in self.failed_checks],
            "candidate_metrics": _json_metrics(self.candidate_metrics),
            "baseline_metrics": _json_metrics(self.baseline_metrics) if self.baseline_metrics is not None else None,
            "thresholds": dict(self.thresholds),
            "ignored_slices": dict(self.ignored_slices),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Verdict":
        checks = [Check(name=c["name"], value=_from_json_number(c["value"]), threshold=c["threshold"],
                        passed=c["passed"], comparison=c["comparison"], message=c["message"]) for c in d["checks"]]
        baseline = d.get("baseline_metrics")
        return cls(blessed=d["blessed"], reason=d["reason"], checks=checks,
                   candidate_metrics=_from_json_metrics(d["candidate_metrics"]),
                   baseline_metrics=_from_json_metrics(baseline) if baseline is not None else None,
                   thresholds=dict(d["thresholds"]), ignored_slices=dict(d.get("ignored_slices", {})))

    @classmethod
    def from_json(cls, text: str) -> "Verdict":
        return cls.from_dict(json.loads(text))


# -- the rules -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ingested:
    """What ingestion read for the cycle's spans: valid events and dead-lettered (malformed) lines."""

    events: int
    dead_letters: int


@dataclasses.dataclass(frozen=True)
class Trained:
    """What the candidate's trainer recorded: warm or cold, and on how many examples."""

    warm: bool
    examples: int


def decide(candidate: SlicedMetrics, baseline: Optional[SlicedMetrics], gate: GateConfig,
           ingested: Optional[Ingested] = None, trained: Optional[Trained] = None) -> Verdict:
    """The verdict on `candidate`, given the `baseline` (None for the first model) scored on the same data.

    `ingested`: the cycle's ingest counts (None when the examples carry none, as stock ExampleGen's);
    `trained`: the candidate's training record (None when the model carries none, as stock Trainer's).
    """
    overall = candidate.get("overall", {})
    evidence = evidence_checks(overall, gate)
    bounds = absolute_checks(overall, gate)
    change = (change_checks(overall, baseline.get("overall", {}), gate)
              + label_shift_checks(baseline.get("overall", {}), gate)) if baseline is not None else []
    slices, ignored = slice_checks(candidate.get("slices", {}), gate)
    data = data_checks(ingested, gate) if ingested is not None else []
    training = training_checks(trained) if trained is not None else []
    checks = evidence + bounds + change + slices + data + training

    failed_evidence = [c for c in evidence if not c.passed]
    failed = [c for c in checks if not c.passed]
    if failed_evidence:
        reason = "not blessed: too little evidence: " + ", ".join(c.message for c in failed_evidence)
    elif failed:
        reason = "not blessed: " + "; ".join(c.message for c in failed)
    else:
        reason = blessed_reason(overall, baseline.get("overall", {}) if baseline is not None else None)
    return Verdict(blessed=not failed, reason=reason, checks=checks, candidate_metrics=candidate,
                   baseline_metrics=baseline, thresholds=gate.to_dict(), ignored_slices=ignored)


def evidence_checks(overall: Metrics, gate: GateConfig) -> List[Check]:
    examples = _metric(overall, "example_count", default=0.0)
    positives = _metric(overall, "positive_count", default=0.0)
    return [
        _at_least("min_eval_examples", examples, gate.min_eval_examples,
                  f"{_count(examples)} eval examples (need >= {gate.min_eval_examples})"),
        _at_least("min_eval_positives", positives, gate.min_eval_positives,
                  f"{_count(positives)} positives (need >= {gate.min_eval_positives})"),
    ]


def absolute_checks(overall: Metrics, gate: GateConfig) -> List[Check]:
    auc = _metric(overall, "auc")
    calibration = _metric(overall, "calibration")
    log_loss = _metric(overall, "log_loss")
    return [
        _at_least("min_auc", auc, gate.min_auc, _bound("AUC", auc, "below the minimum", gate.min_auc, _f3)),
        _at_least("min_calibration", calibration, gate.min_calibration,
                  _bound("calibration", calibration, "below the minimum", gate.min_calibration, _f2)),
        _at_most("max_calibration", calibration, gate.max_calibration,
                 _bound("calibration", calibration, "above the maximum", gate.max_calibration, _f2)),
        _at_most("max_log_loss", log_loss, gate.max_log_loss,
                 _bound("log loss", log_loss, "above the maximum", gate.max_log_loss, _f3)),
    ]


def change_checks(candidate: Metrics, baseline: Metrics, gate: GateConfig) -> List[Check]:
    """The candidate may lose at most `max_auc_drop` AUC against the baseline; value = the drop."""
    auc, base_auc = _metric(candidate, "auc"), _metric(baseline, "auc")
    drop = base_auc - auc
    if _is_number(drop):
        message = (f"AUC dropped {_f3(drop)} below the baseline ({_f3(auc)} vs {_f3(base_auc)}, "
                   f"allowed drop {_f3(gate.max_auc_drop)})")
    else:
        message = f"AUC cannot be compared with the baseline ({_f3(auc)} vs {_f3(base_auc)})"
    return [_at_most("max_auc_drop", drop, gate.max_auc_drop, message)]


def label_shift_checks(baseline: Metrics, gate: GateConfig) -> List[Check]:
    """The eval data's label rate may differ at most `max_label_shift`-fold from what the baseline predicts.

    Relative metrics cannot catch broken labels: a candidate trained on a span
    whose labels were all flipped also scores well on that span's (flipped)
    eval split. But the serving model's calibration on the span exposes it:
    a label rate many times what it predicts is a broken producer far more
    often than real drift within one span. value = the fold change.
    """
    calibration = _metric(baseline, "calibration")
    fold = max(calibration, 1.0 / calibration) if _is_number(calibration) and calibration > 0 else float("nan")
    mean_label, mean_prediction = _metric(baseline, "mean_label"), _metric(baseline, "mean_prediction")
    message = (f"suspect data: the label rate {_f3(mean_label)} is {_f2(fold)}x what the serving model predicts "
               f"({_f3(mean_prediction)}; allowed {_f2(gate.max_label_shift)}x)")
    return [_at_most("max_label_shift", fold, gate.max_label_shift, message)]


def data_checks(ingested: Ingested, gate: GateConfig) -> List[Check]:
    """At most `max_dead_letter_fraction` of the lines read for the cycle may be malformed; value = the share."""
    lines = ingested.events + ingested.dead_letters
    share = ingested.dead_letters / lines if lines else 0.0
    message = (f"suspect data: {ingested.dead_letters:,} of the cycle's {lines:,} lines ({share:.1%}) were malformed "
               f"and dead-lettered (allowed {gate.max_dead_letter_fraction:.1%})")
    return [_at_most("max_dead_letter_fraction", share, gate.max_dead_letter_fraction, message)]


def training_checks(trained: Trained) -> List[Check]:
    """A cold candidate trained on no example is refused; value = the examples it trained on."""
    if trained.warm:
        return []  # the base model's weights as they are: judged by the metrics like any candidate
    return [_at_least("min_trained_examples", float(trained.examples), 1.0,
                      f"the candidate is an untrained cold start ({trained.examples} training examples)")]


def slice_checks(slices: Mapping[str, Metrics], gate: GateConfig) -> Tuple[List[Check], Dict[str, float]]:
    """Checks for the slices with enough examples, and {value: examples} of the ignored ones."""
    checks: List[Check] = []
    ignored: Dict[str, float] = {}
    if gate.slice_feature is None:
        return checks, ignored
    for value in sorted(slices):
        metrics = slices[value]
        examples = _metric(metrics, "example_count", default=0.0)
        if examples < gate.min_slice_examples:
            ignored[value] = examples
            continue
        auc = _metric(metrics, "auc")
        label = f"{gate.slice_feature}={value}"
        checks.append(_at_least(f"min_slice_auc[{label}]", auc, gate.min_slice_auc,
                                _bound(f"slice {label} AUC", auc, "below the minimum", gate.min_slice_auc, _f3)
                                + f" ({_count(examples)} examples)"))
    return checks, ignored


def blessed_reason(candidate: Metrics, baseline: Optional[Metrics]) -> str:
    against = f"baseline {_f3(_metric(baseline, 'auc'))}" if baseline is not None else "first model, no baseline"
    return (f"blessed: AUC {_f3(_metric(candidate, 'auc'))} ({against}), "
            f"calibration {_f2(_metric(candidate, 'calibration'))}, log loss {_f3(_metric(candidate, 'log_loss'))} "
            f"on {_count(_metric(candidate, 'example_count', 0.0))} examples "
            f"({_count(_metric(candidate, 'positive_count', 0.0))} positives)")


# -- helpers ----------------------------------------------------------------------


def _at_least(name: str, value: Optional[float], threshold: float, message: str) -> Check:
    ok = _is_number(value) and value >= threshold - _EPS
    return Check(name=name, value=value, threshold=threshold, passed=bool(ok), comparison=">=", message=message)


def _at_most(name: str, value: Optional[float], threshold: float, message: str) -> Check:
    ok = _is_number(value) and value <= threshold + _EPS
    return Check(name=name, value=value, threshold=threshold, passed=bool(ok), comparison="<=", message=message)


def _bound(what: str, value: float, relation: str, threshold: float, fmt) -> str:
    if not _is_number(value):
        return f"{what} undefined (needs both labels in the eval data)" if "AUC" in what else f"{what} undefined"
    return f"{what} {fmt(value)} {relation} {fmt(threshold)}"


def _is_number(value: Optional[float]) -> bool:
    return value is not None and not math.isnan(value)


def _metric(metrics: Mapping[str, Any], name: str, default: float = float("nan")) -> float:
    value = metrics.get(name)
    return default if value is None else float(value)


def _f3(value: float) -> str:
    return f"{value:.3f}" if _is_number(value) else "undefined"


def _f2(value: float) -> str:
    return f"{value:.2f}" if _is_number(value) else "undefined"


def _count(value: float) -> str:
    return str(int(round(value))) if _is_number(value) else "undefined"


def _json_number(value: Optional[float]) -> Optional[float]:
    # JSON has no NaN/inf: an undefined metric is null, an infinite one (log loss of a
    # prediction of exactly 0 or 1 on the wrong label) a string.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"  # type: ignore[return-value]
    return value


def _from_json_number(value: Any) -> Optional[float]:
    if value is None:
        return float("nan")
    if isinstance(value, str):
        return float(value)
    return value


def _json_metrics(metrics: SlicedMetrics) -> Dict[str, Any]:
    def one(m: Mapping[str, Any]) -> Dict[str, Any]:
        return {k: _json_number(v) for k, v in m.items()}

    return {"overall": one(metrics.get("overall", {})),
            "slices": {k: one(v) for k, v in metrics.get("slices", {}).items()}}


def _from_json_metrics(metrics: Mapping[str, Any]) -> SlicedMetrics:
    def one(m: Mapping[str, Any]) -> Dict[str, float]:
        return {k: _from_json_number(v) for k, v in m.items()}

    return {"overall": one(metrics.get("overall", {})),
            "slices": {k: one(v) for k, v in metrics.get("slices", {}).items()}}
