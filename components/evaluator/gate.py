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

Paired statistics, from the same rows (`gate_metrics`, `paired`): every model's
`auc_se` (DeLong standard error of its AUC) and, on the candidate's metrics
when a baseline exists, `auc_diff` / `auc_diff_se` (candidate - baseline,
DeLong) and `log_loss_diff` / `log_loss_diff_se` (paired per-example
differences), overall and per slice.

The rules (thresholds from `pipelines.config.GateConfig`):

1. evidence: at least min_eval_positives positives and min_eval_negatives
   negatives (so the AUC is defined), and the AUC interval no wider than
   max_auc_interval_width: the interval of the AUC difference when a
   baseline exists, else of the candidate's AUC; each end is a one-sided
   bound at `confidence`. (With a baseline, a wider interval that lies
   wholly above or wholly below -max_auc_drop has decided already and
   passes; below, rule 3 refuses the candidate.) Otherwise not blessed, "too
   little evidence".
   (min_eval_examples, deprecated, is an extra floor when set.)
2. absolute bounds: AUC >= min_auc, min_calibration <= calibration <=
   max_calibration, and log loss <= max_log_loss_factor x the no-skill log
   loss of the split's label rate (or <= max_log_loss when that is set).
3. change, only when a baseline exists (the first model is judged by the
   absolute bounds alone): refused only when the candidate is worse WITH
   CONFIDENCE: the upper bound of the AUC difference is below
   -max_auc_drop, or the lower bound of the log loss difference is above
   max_log_loss_increase (one-sided, at `confidence`). Plus the label shift
   (suspect data): the span's label rate against what the baseline predicts
   on it, and, when the trainer recorded them, against the label rate of the
   vetted spans the candidate trained on; within the fold of either passes.
4. per slice: every slice with >= min_slice_examples examples has AUC >=
   min_slice_auc and, with a baseline, passes the AUC test of rule 3 in that
   slice, at the confidence Bonferroni-corrected for the number of slices
   judged; smaller slices are ignored (and listed as such).
5. data, when the cycle's ingest counts are known (`Ingested`, from the
   `Examples` properties): dead-lettered lines / all lines read <=
   max_dead_letter_fraction.
6. training, when the candidate's record is known (`Trained`, from the
   `Model` properties): a cold start must have trained on at least one
   example (an untrained model knows nothing, whatever its AUC by chance).
7. online, predicted offline, when `off_policy_min_ratio` is set and the
   off-policy estimate exists (join mode, an exploring server:
   `off_policy`): the lower bound of (the candidate's estimated CTR / the
   served CTR) must reach it. Fewer than `off_policy_min_explored_requests`
   explored requests, or no estimate, is said in the verdict's `off_policy`
   note and does not block.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from components.evaluator import paired
from components.evaluator.config import GateConfig

METRIC_NAMES = ("auc", "example_count", "positive_count", "calibration", "log_loss",
                "mean_label", "mean_prediction", "auc_se", "auc_diff", "auc_diff_se", "log_loss_diff",
                "log_loss_diff_se")
AUC_TEST = "DeLong"
LOG_LOSS_TEST = "paired t"

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
        return {"name": self.name, "value": _json_number(self.value), "threshold": _json_number(self.threshold),
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
    # The paired tests against the baseline, overall: {"auc": {...}, "log_loss": {...}} with the test's
    # name, the difference (candidate - baseline), its standard error, the one-sided bounds at the
    # confidence, the p-value of "worse by more than the margin" and the margin (`paired_test`). Empty
    # without a baseline.
    tests: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # The off-policy estimate (`off_policy.OffPolicyEstimate.to_dict()` plus what the run skipped), with
    # `gated` (whether rule 7 judged it) and `note` (why not, or what it found). Empty when none was made.
    off_policy: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def failed_checks(self) -> List[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def evidence_insufficient(self) -> bool:
        """True when an evidence check failed ("too little evidence") and no data check did: the eval splits
        decided nothing and are carried to the next cycle, and the span is not quarantined
        (`training_inputs.carried_and_released`, `quarantine.rejected_spans`). Suspect data (a label shift,
        malformed lines) is never carried: its span stays quarantined, thin or not."""
        failed = {c.name for c in self.failed_checks}
        return bool(failed & EVIDENCE_CHECKS) and not failed & DATA_CHECKS

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
            "tests": {k: {kk: _json_number(vv) for kk, vv in v.items()} for k, v in self.tests.items()},
            "off_policy": _json_tree(self.off_policy),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Verdict":
        checks = [Check(name=c["name"], value=_from_json_number(c["value"]), threshold=_from_json_number(c["threshold"]),
                        passed=c["passed"], comparison=c["comparison"], message=c["message"]) for c in d["checks"]]
        baseline = d.get("baseline_metrics")
        return cls(blessed=d["blessed"], reason=d["reason"], checks=checks,
                   candidate_metrics=_from_json_metrics(d["candidate_metrics"]),
                   baseline_metrics=_from_json_metrics(baseline) if baseline is not None else None,
                   thresholds=dict(d["thresholds"]), ignored_slices=dict(d.get("ignored_slices", {})),
                   tests={k: {kk: (_from_json_number(vv) if kk not in ("test",) else vv) for kk, vv in v.items()}
                          for k, v in d.get("tests", {}).items()},
                   off_policy=dict(d.get("off_policy") or {}))

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
    """What the candidate's trainer recorded: warm or cold, on how many examples, and how many of them (and
    of their positives) came from spans already vetted (`mlmd_vocabulary.VETTED_TRAINING_ROLES`: the
    previous eval split, released splits, replay): the recent label rate. None: not recorded."""

    warm: bool
    examples: int
    vetted_examples: Optional[int] = None
    vetted_positives: Optional[int] = None


def decide(candidate: SlicedMetrics, baseline: Optional[SlicedMetrics], gate: GateConfig,
           ingested: Optional[Ingested] = None, trained: Optional[Trained] = None,
           off_policy: Optional[Mapping[str, Any]] = None) -> Verdict:
    """The verdict on `candidate`, given the `baseline` (None for the first model) scored on the same data.

    `ingested`: the cycle's ingest counts (None when the examples carry none, as stock ExampleGen's);
    `trained`: the candidate's training record (None when the model carries none, as stock Trainer's);
    `off_policy`: the off-policy estimate's record (`off_policy_run.estimate_span`), None when none was made.
    """
    overall = candidate.get("overall", {})
    has_baseline = baseline is not None
    evidence = evidence_checks(overall, gate, has_baseline)
    bounds = absolute_checks(overall, gate)
    tests: Dict[str, Any] = {}
    change: List[Check] = []
    if has_baseline:
        tests = paired_tests(overall, gate)
        change = change_checks(overall, baseline.get("overall", {}), gate, tests) \
            + label_shift_checks(baseline.get("overall", {}), gate, trained)
    slices, ignored = slice_checks(candidate.get("slices", {}), gate, has_baseline)
    data = data_checks(ingested, gate) if ingested is not None else []
    training = training_checks(trained) if trained is not None else []
    online, off_policy_record = off_policy_checks(off_policy, gate)
    checks = evidence + bounds + change + slices + data + training + online

    failed_evidence = [c for c in evidence if not c.passed]
    failed = [c for c in checks if not c.passed]
    if failed_evidence:
        reason = "not blessed: too little evidence: " + ", ".join(c.message for c in failed_evidence)
    elif failed:
        reason = "not blessed: " + "; ".join(c.message for c in failed)
        misfit = _base_rate_misfit(failed, overall, gate)
        if misfit:
            reason += "; " + misfit
    else:
        reason = blessed_reason(overall, baseline.get("overall", {}) if has_baseline else None, tests, gate)
        if online:
            reason += "; " + online[0].message
    return Verdict(blessed=not failed, reason=reason, checks=checks, candidate_metrics=candidate,
                   baseline_metrics=baseline, thresholds=gate.to_dict(), ignored_slices=ignored, tests=tests,
                   off_policy=off_policy_record)


def off_policy_checks(record: Optional[Mapping[str, Any]], gate: GateConfig) -> Tuple[List[Check], Dict[str, Any]]:
    """Rule 7: ([the off_policy_min_ratio check] or [], the record with `gated` and `note` added).

    Not judged (no check, said in the note) without `off_policy_min_ratio`, without an estimate, with fewer
    than `off_policy_min_explored_requests` explored requests, or when the ratio's lower bound is undefined
    (no click served, no matched impression): too little to predict from must not block a candidate.
    """
    out: Dict[str, Any] = dict(record or {})
    name = gate.off_policy_estimator
    ratio = (out.get("ratios") or {}).get(name) or {}
    est = (out.get("estimates") or {}).get(name) or {}
    served = out.get("served") or {}
    if not record or "estimates" not in record:
        note = "no off-policy estimate: " + str(out.get("why") or "none was made")
    elif gate.off_policy_min_ratio is None:
        note = "recorded, not gated (gate.off_policy_min_ratio is unset)"
    elif out.get("explored_requests", 0) < gate.off_policy_min_explored_requests:
        note = (f"too little exploration to judge: {out.get('explored_requests', 0)} explored requests (need >= "
                f"{gate.off_policy_min_explored_requests}, gate.off_policy_min_explored_requests); not gated")
    elif not _is_number(ratio.get("lower")):
        note = f"the {name} estimate's ratio to the served CTR is undefined on these requests; not gated"
    else:
        lower = float(ratio["lower"])
        message = (f"off-policy {name.upper()} CTR {_f4(est.get('estimate'))} (bounds [{_f4(est.get('lower'))}, "
                   f"{_f4(est.get('upper'))}]) against the served {_f4(served.get('estimate'))}: ratio "
                   f"{_f3(ratio.get('estimate'))}, lower bound {_f3(lower)} at {_percent(out.get('confidence', gate.confidence))} "
                   f"on {out.get('requests', 0)} requests ({out.get('explored_requests', 0)} explored)")
        check = _at_least("off_policy_min_ratio", lower, gate.off_policy_min_ratio,
                          message + f" (need >= {_f3(gate.off_policy_min_ratio)})")
        out.update(gated=True, note=check.message)
        return [check], out
    out.update(gated=False, note=note)
    return [], out


# The names of the checks `evidence_checks` makes: failing any of them is "too little evidence".
EVIDENCE_CHECKS = frozenset({"min_eval_examples", "min_eval_positives", "min_eval_negatives",
                             "max_auc_interval_width"})
# Checks that find the DATA suspect, not the model (label_shift_checks, data_checks).
DATA_CHECKS = frozenset({"max_label_shift", "max_dead_letter_fraction"})


def evidence_checks(overall: Metrics, gate: GateConfig, has_baseline: bool = False) -> List[Check]:
    """Both classes present, and an AUC interval narrow enough to decide on (see the module docstring)."""
    examples = _metric(overall, "example_count", default=0.0)
    positives = _metric(overall, "positive_count", default=0.0)
    negatives = examples - positives
    checks = []
    if gate.min_eval_examples is not None:  # deprecated fixed count, still honoured while set
        checks.append(_at_least("min_eval_examples", examples, gate.min_eval_examples,
                                f"{_count(examples)} eval examples (need >= {gate.min_eval_examples})"))
    checks += [
        _at_least("min_eval_positives", positives, gate.min_eval_positives,
                  f"{_count(positives)} positives (need >= {gate.min_eval_positives})"),
        _at_least("min_eval_negatives", negatives, gate.min_eval_negatives,
                  f"{_count(negatives)} negatives (need >= {gate.min_eval_negatives})"),
    ]
    what = "AUC difference" if has_baseline else "AUC"
    width = auc_interval_width(overall, gate, has_baseline)
    if _is_number(width):
        message = (f"the {what}'s interval at {_percent(gate.confidence)} is {_f3(width)} wide on "
                   f"{_count(examples)} examples (need <= {_f3(gate.max_auc_interval_width)})")
    else:
        message = f"the {what}'s interval is undefined on {_count(examples)} examples (needs both classes)"
    check = _at_most("max_auc_interval_width", width, gate.max_auc_interval_width, message)
    if has_baseline and not check.passed and _is_number(width):
        # A wide interval that lies wholly on one side of -max_auc_drop has decided already. Above it, the
        # candidate is confidently no worse (a good candidate against a poor baseline: their difference
        # varies most); below it, confidently worse, which max_auc_drop then refuses for quality, so its
        # eval splits are not carried as if they had decided nothing. The bounds are the AUC test's own
        # (`paired_tests`), so "decided worse" here is exactly what max_auc_drop refuses.
        auc_test = paired_tests(overall, gate)["auc"]
        lower, upper = auc_test["lower"], auc_test["upper"]
        if _is_number(lower) and lower >= -gate.max_auc_drop - _EPS:
            check = dataclasses.replace(check, passed=True, message=message + f"; but its lower bound {_s3(lower)} "
                                        f"already shows the candidate no worse")
        elif _is_number(upper) and upper < -gate.max_auc_drop - _EPS:
            check = dataclasses.replace(check, passed=True, message=message + f"; but its upper bound {_s3(upper)} "
                                        f"already shows the candidate worse")
    checks.append(check)
    return checks


def auc_interval_width(overall: Metrics, gate: GateConfig, has_baseline: bool) -> float:
    """Width between the lower and upper one-sided bounds at `confidence` (NaN when undefined)."""
    se = _metric(overall, "auc_diff_se" if has_baseline else "auc_se")
    return 2.0 * paired.quantile(gate.confidence) * se if _is_number(se) else float("nan")


def no_skill_log_loss(label_rate: float) -> float:
    """The log loss of always predicting `label_rate` on data with that label rate (its entropy)."""
    p = min(max(label_rate, paired.LOG_LOSS_EPSILON), 1.0 - paired.LOG_LOSS_EPSILON) \
        if _is_number(label_rate) else float("nan")
    return -(p * math.log(p) + (1.0 - p) * math.log1p(-p)) if _is_number(p) else float("nan")


def absolute_checks(overall: Metrics, gate: GateConfig) -> List[Check]:
    auc = _metric(overall, "auc")
    calibration = _metric(overall, "calibration")
    log_loss = _metric(overall, "log_loss")
    checks = [
        _at_least("min_auc", auc, gate.min_auc, _bound("AUC", auc, "below the minimum", gate.min_auc, _f3)),
        _at_least("min_calibration", calibration, gate.min_calibration,
                  _bound("calibration", calibration, "below the minimum", gate.min_calibration, _f2)),
        _at_most("max_calibration", calibration, gate.max_calibration,
                 _bound("calibration", calibration, "above the maximum", gate.max_calibration, _f2)),
    ]
    if gate.max_log_loss is not None:
        checks.append(_at_most("max_log_loss", log_loss, gate.max_log_loss,
                               _bound("log loss", log_loss, "above the maximum", gate.max_log_loss, _f3)))
    else:
        rate = _metric(overall, "mean_label")
        no_skill = no_skill_log_loss(rate)
        bound = gate.max_log_loss_factor * no_skill
        checks.append(_at_most(
            "max_log_loss_factor", log_loss, bound,
            _bound("log loss", log_loss, "above", bound, _f3)
            + f" ({_f2(gate.max_log_loss_factor)} x {_f3(no_skill)}, the no-skill log loss of predicting the "
              f"label rate {_f3(rate)})"))
    return checks


def paired_tests(candidate: Metrics, gate: GateConfig, confidence: Optional[float] = None) -> Dict[str, Any]:
    """The AUC and log loss tests of the candidate against the baseline on the same rows (see `Verdict.tests`)."""
    confidence = gate.confidence if confidence is None else confidence
    examples = _metric(candidate, "example_count", default=0.0)
    auc = paired.PairedEstimate(diff=_metric(candidate, "auc_diff"), se=_metric(candidate, "auc_diff_se"))
    log_loss = paired.PairedEstimate(diff=_metric(candidate, "log_loss_diff"),
                                     se=_metric(candidate, "log_loss_diff_se"),
                                     dof=examples - 1 if examples > 1 else None)
    auc_lower, auc_upper = paired.bounds(auc, confidence)
    ll_lower, ll_upper = paired.bounds(log_loss, confidence)
    return {
        "auc": {"test": AUC_TEST, "diff": auc.diff, "se": auc.se, "lower": auc_lower, "upper": auc_upper,
                "p_value": paired.p_value_below(auc, gate.max_auc_drop), "margin": gate.max_auc_drop,
                "confidence": confidence},
        "log_loss": {"test": LOG_LOSS_TEST, "diff": log_loss.diff, "se": log_loss.se, "lower": ll_lower,
                     "upper": ll_upper, "p_value": paired.p_value_above(log_loss, gate.max_log_loss_increase),
                     "margin": gate.max_log_loss_increase, "confidence": confidence},
    }


def change_checks(candidate: Metrics, baseline: Metrics, gate: GateConfig,
                  tests: Optional[Dict[str, Any]] = None) -> List[Check]:
    """Refused only when confidently worse than the baseline.

    max_auc_drop: value = the upper bound of the AUC difference (candidate -
    baseline), which must be >= -max_auc_drop. max_log_loss_increase: value =
    the lower bound of the log loss difference, which must be <= the margin.
    """
    tests = tests if tests is not None else paired_tests(candidate, gate)
    return [_auc_test_check("max_auc_drop", "AUC", candidate, baseline, tests["auc"]),
            _log_loss_test_check(candidate, baseline, tests["log_loss"])]


def _auc_test_check(name: str, what: str, candidate: Metrics, baseline: Metrics, test: Mapping[str, Any]) -> Check:
    conf = _percent(test["confidence"])
    if _is_number(test["upper"]):
        message = (f"{what} worse than the baseline's with {conf} confidence: {_f3(_metric(candidate, 'auc'))} vs "
                   f"{_f3(_metric(baseline, 'auc'))}, difference {_s3(test['diff'])} (upper bound "
                   f"{_s3(test['upper'])}, {test['test']} p={_p(test['p_value'])}; tolerated drop "
                   f"{_f3(test['margin'])})")
    else:
        message = (f"{what} cannot be compared with the baseline's ({_f3(_metric(candidate, 'auc'))} vs "
                   f"{_f3(_metric(baseline, 'auc'))}: no paired difference)")
    return _at_least(name, test["upper"], -test["margin"], message)


def _log_loss_test_check(candidate: Metrics, baseline: Metrics, test: Mapping[str, Any]) -> Check:
    if _is_number(test["lower"]):
        message = (f"log loss worse than the baseline's with {_percent(test['confidence'])} confidence: "
                   f"{_f3(_metric(candidate, 'log_loss'))} vs {_f3(_metric(baseline, 'log_loss'))}, difference "
                   f"{_s3(test['diff'])} (lower bound {_s3(test['lower'])}, {test['test']} p={_p(test['p_value'])}; "
                   f"tolerated increase {_f3(test['margin'])})")
    else:
        message = (f"log loss cannot be compared with the baseline's ({_f3(_metric(candidate, 'log_loss'))} vs "
                   f"{_f3(_metric(baseline, 'log_loss'))}: no paired difference)")
    return _at_most("max_log_loss_increase", test["lower"], test["margin"], message)


def _base_rate_misfit(failed: List[Check], overall: Metrics, gate: GateConfig) -> Optional[str]:
    """When only an absolute max_log_loss below the stream's no-skill log loss refused: say so, name the setting."""
    if [c.name for c in failed] != ["max_log_loss"] or gate.max_log_loss is None:
        return None
    rate = _metric(overall, "mean_label")
    no_skill = no_skill_log_loss(rate)
    if not (_is_number(no_skill) and gate.max_log_loss < no_skill):
        return None
    return (f"gate.max_log_loss {_f3(gate.max_log_loss)} does not fit this stream's label rate {_f3(rate)}: "
            f"even predicting that rate scores {_f3(no_skill)}; raise gate.max_log_loss or unset it (None) to "
            f"bound log loss relative to the label rate (gate.max_log_loss_factor)")


def label_shift_checks(baseline: Metrics, gate: GateConfig, trained: Optional[Trained] = None) -> List[Check]:
    """The eval data's label rate may differ at most `max_label_shift`-fold from what the baseline predicts,
    or from the recent spans' label rate.

    Relative metrics cannot catch broken labels: a candidate trained on a span
    whose labels were all flipped also scores well on that span's (flipped)
    eval split. But the serving model's calibration on the span exposes it:
    a label rate many times what it predicts is a broken producer far more
    often than real drift within one span.

    The serving model alone can be fooled the other way: covariate shift (a
    value it never saw, such as a new hour of day) can miscalibrate it on sound
    data, and every candidate after would be refused as "suspect" while it
    keeps serving. So when the candidate's trainer recorded the labels of the
    vetted spans it trained on (`Trained.vetted_positives`: both classes at
    least min_eval_positives / min_eval_negatives times), the span passes if
    its label rate is within the fold of either reference: broken labels move
    it away from both. value = the smaller fold change.
    """
    calibration = _metric(baseline, "calibration")
    fold = max(calibration, 1.0 / calibration) if _is_number(calibration) and calibration > 0 else float("nan")
    mean_label, mean_prediction = _metric(baseline, "mean_label"), _metric(baseline, "mean_prediction")
    message = (f"suspect data: the label rate {_f3(mean_label)} is {_f2(fold)}x what the serving model predicts "
               f"({_f3(mean_prediction)})")
    recent = recent_label_rate(trained, gate)
    if recent is not None:
        ratio = mean_label / recent if _is_number(mean_label) and mean_label > 0 else float("nan")
        recent_fold = max(ratio, 1.0 / ratio) if _is_number(ratio) else float("nan")
        message += (f" and {_f2(recent_fold)}x the recent spans' label rate ({_f3(recent)} on "
                    f"{trained.vetted_examples:,} vetted examples)")
        folds = [f for f in (fold, recent_fold) if _is_number(f)]
        fold = min(folds) if folds else float("nan")
    message += f"; allowed {_f2(gate.max_label_shift)}x"
    return [_at_most("max_label_shift", fold, gate.max_label_shift, message)]


def recent_label_rate(trained: Optional[Trained], gate: GateConfig) -> Optional[float]:
    """The label rate of the vetted spans the candidate trained on, or None when too few to tell (fewer than
    min_eval_positives positives or min_eval_negatives negatives among them) or not recorded."""
    if trained is None or trained.vetted_examples is None or trained.vetted_positives is None:
        return None
    positives, negatives = trained.vetted_positives, trained.vetted_examples - trained.vetted_positives
    if positives < gate.min_eval_positives or negatives < gate.min_eval_negatives:
        return None
    return positives / trained.vetted_examples


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


def slice_checks(slices: Mapping[str, Metrics], gate: GateConfig,
                 has_baseline: bool = False) -> Tuple[List[Check], Dict[str, float]]:
    """Checks for the slices with enough examples, and {value: examples} of the ignored ones.

    With a baseline each judged slice also gets the AUC test, at the confidence
    Bonferroni-corrected for the slices judged, so that a candidate no worse in
    any slice is refused in at most 1 - confidence of cycles by them together.
    """
    checks: List[Check] = []
    ignored: Dict[str, float] = {}
    if gate.slice_feature is None:
        return checks, ignored
    judged = []
    for value in sorted(slices):
        examples = _metric(slices[value], "example_count", default=0.0)
        if examples < gate.min_slice_examples:
            ignored[value] = examples
        else:
            judged.append(value)
    confidence = 1.0 - (1.0 - gate.confidence) / max(len(judged), 1)
    for value in judged:
        metrics = slices[value]
        examples = _metric(metrics, "example_count", default=0.0)
        auc = _metric(metrics, "auc")
        label = f"{gate.slice_feature}={value}"
        checks.append(_at_least(f"min_slice_auc[{label}]", auc, gate.min_slice_auc,
                                _bound(f"slice {label} AUC", auc, "below the minimum", gate.min_slice_auc, _f3)
                                + f" ({_count(examples)} examples)"))
        if has_baseline:
            test = paired_tests(metrics, gate, confidence)["auc"]
            baseline_auc = _metric(metrics, "auc") - test["diff"] if _is_number(test["diff"]) else float("nan")
            checks.append(_auc_test_check(f"max_auc_drop[{label}]", f"slice {label} AUC", metrics,
                                          {"auc": baseline_auc}, test))
    return checks, ignored


def blessed_reason(candidate: Metrics, baseline: Optional[Metrics], tests: Optional[Dict[str, Any]] = None,
                   gate: Optional[GateConfig] = None) -> str:
    if baseline is not None:
        against = f"baseline {_f3(_metric(baseline, 'auc'))}"
        auc_test = (tests or {}).get("auc")
        if auc_test and _is_number(auc_test["diff"]):
            against += (f", difference {_s3(auc_test['diff'])}, bounds [{_s3(auc_test['lower'])}, "
                        f"{_s3(auc_test['upper'])}] at {auc_test['confidence']:.0%}")
    else:
        against = "first model, no baseline"
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


def _s3(value: float) -> str:
    return f"{value:+.3f}" if _is_number(value) else "undefined"


def _percent(confidence: float) -> str:
    return f"{confidence:.0%}" if abs(confidence * 100 - round(confidence * 100)) < 1e-9 else f"{confidence:.2%}"


def _p(value: float) -> str:
    return f"{value:.3g}" if _is_number(value) else "undefined"


def _f4(value: Optional[float]) -> str:
    return f"{value:.4f}" if _is_number(value) else "n/a"


def _json_tree(value: Any) -> Any:
    """Nested dicts/lists with non-finite floats as None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _json_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_tree(v) for v in value]
    if isinstance(value, float):
        return _json_number(value)
    return value


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
