"""The gate's verdict (components/evaluator/gate.py) on hand-written metrics: no TFMA, no TFX."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from components.evaluator import gate as G
from pipelines.config import GateConfig

GATE = GateConfig(min_auc=0.6, min_calibration=0.7, max_calibration=1.3, max_log_loss=0.6, max_auc_drop=0.005,
                  slice_feature="device", min_slice_auc=0.55, min_slice_examples=200,
                  min_eval_examples=500, min_eval_positives=30)


def metrics(auc=0.78, examples=2000, positives=200, calibration=1.02, log_loss=0.29, slices=None):
    overall = {"auc": auc, "example_count": float(examples), "positive_count": float(positives),
               "calibration": calibration, "log_loss": log_loss, "mean_label": positives / max(examples, 1),
               "mean_prediction": calibration * positives / max(examples, 1)}
    return {"overall": overall, "slices": slices if slices is not None else {
        "mobile": {"auc": 0.80, "example_count": 1000.0},
        "desktop": {"auc": 0.76, "example_count": 800.0},
        "tablet": {"auc": 0.70, "example_count": 200.0},
    }}


def by_name(verdict):
    return {c.name: c for c in verdict.checks}


# -- blessed ----------------------------------------------------------------------


def test_good_candidate_with_baseline_is_blessed_with_a_reason_that_names_the_numbers():
    v = G.decide(metrics(auc=0.781), metrics(auc=0.779), GATE)
    assert v.blessed, v.reason
    assert v.reason == ("blessed: AUC 0.781 (baseline 0.779), calibration 1.02, log loss 0.290 "
                        "on 2000 examples (200 positives)")
    assert all(c.passed for c in v.checks)
    assert v.failed_checks == []
    names = set(by_name(v))
    assert {"min_eval_examples", "min_eval_positives", "min_auc", "min_calibration", "max_calibration",
            "max_log_loss", "max_auc_drop", "max_label_shift", "min_slice_auc[device=mobile]",
            "min_slice_auc[device=desktop]", "min_slice_auc[device=tablet]"} == names


def test_first_model_without_baseline_is_judged_by_absolute_bounds_alone():
    # AUC 0.62: far below any plausible baseline, but above min_auc: blessed when there is no baseline.
    v = G.decide(metrics(auc=0.62), None, GATE)
    assert v.blessed, v.reason
    assert "max_auc_drop" not in by_name(v)
    assert "first model" in v.reason and "no baseline" in v.reason
    assert v.baseline_metrics is None and v.baseline_auc is None
    # The same candidate against a baseline it falls far behind is not blessed.
    assert not G.decide(metrics(auc=0.62), metrics(auc=0.78), GATE).blessed


def test_first_model_still_fails_the_absolute_bounds():
    v = G.decide(metrics(auc=0.58), None, GATE)
    assert not v.blessed
    assert [c.name for c in v.failed_checks] == ["min_auc"]
    assert v.reason == "not blessed: AUC 0.580 below the minimum 0.600"


# -- evidence -------------------------------------------------------------------------


def test_too_few_examples_is_not_blessed_for_lack_of_evidence():
    v = G.decide(metrics(examples=499, positives=100), metrics(auc=0.5), GATE)
    assert not v.blessed
    assert v.reason.startswith("not blessed: too little evidence: ")
    assert "499 eval examples (need >= 500)" in v.reason
    assert by_name(v)["min_eval_examples"].passed is False
    assert by_name(v)["min_eval_positives"].passed is True
    # Exactly the minimum is enough.
    assert G.decide(metrics(examples=500, positives=100), None, GATE).blessed


def test_too_few_positives_is_not_blessed_for_lack_of_evidence():
    v = G.decide(metrics(examples=5000, positives=29), None, GATE)
    assert not v.blessed
    assert v.reason == "not blessed: too little evidence: 29 positives (need >= 30)"
    assert G.decide(metrics(examples=5000, positives=30), None, GATE).blessed


def test_too_little_evidence_wins_over_good_metrics_and_reports_both_shortfalls():
    v = G.decide(metrics(auc=0.99, examples=40, positives=3), None, GATE)
    assert not v.blessed
    assert "40 eval examples" in v.reason and "3 positives" in v.reason
    assert {c.name for c in v.failed_checks} == {"min_eval_examples", "min_eval_positives"}


def test_empty_eval_split_is_not_blessed():
    empty = {"overall": {"example_count": 0.0, "positive_count": 0.0}, "slices": {}}
    v = G.decide(empty, empty, GATE)
    assert not v.blessed
    assert v.reason.startswith("not blessed: too little evidence: 0 eval examples")
    assert math.isnan(v.candidate_auc)
    json.loads(v.to_json())  # undefined metrics still serialise (as null)


# -- absolute bounds --------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, failed, words", [
    (dict(auc=0.599), "min_auc", "AUC 0.599 below the minimum 0.600"),
    (dict(calibration=0.69), "min_calibration", "calibration 0.69 below the minimum 0.70"),
    (dict(calibration=1.31), "max_calibration", "calibration 1.31 above the maximum 1.30"),
    (dict(log_loss=0.61), "max_log_loss", "log loss 0.610 above the maximum 0.600"),
])
def test_each_absolute_bound(kwargs, failed, words):
    v = G.decide(metrics(**kwargs), None, GATE)
    assert not v.blessed
    assert [c.name for c in v.failed_checks] == [failed]
    assert v.reason == f"not blessed: {words}"


@pytest.mark.parametrize("kwargs", [dict(auc=0.6), dict(calibration=0.7), dict(calibration=1.3),
                                    dict(log_loss=0.6)])
def test_bounds_are_inclusive(kwargs):
    assert G.decide(metrics(**kwargs), None, GATE).blessed


def test_undefined_auc_fails_its_check():
    v = G.decide(metrics(auc=float("nan")), None, GATE)
    assert not v.blessed
    assert "AUC undefined" in v.reason


def test_infinite_log_loss_fails_and_still_serialises():
    v = G.decide(metrics(log_loss=float("inf")), None, GATE)
    assert not v.blessed and [c.name for c in v.failed_checks] == ["max_log_loss"]
    back = G.Verdict.from_json(v.to_json())
    assert math.isinf(back.checks[[c.name for c in back.checks].index("max_log_loss")].value)


def test_several_failures_are_all_named_in_the_reason():
    v = G.decide(metrics(auc=0.55, calibration=1.5, log_loss=0.7), None, GATE)
    assert not v.blessed
    assert {c.name for c in v.failed_checks} == {"min_auc", "max_calibration", "max_log_loss"}
    for words in ("AUC 0.550", "calibration 1.50", "log loss 0.700"):
        assert words in v.reason


# -- change bound against the baseline ---------------------------------------------------------


def test_auc_drop_just_over_the_bound_is_not_blessed():
    v = G.decide(metrics(auc=0.780 - 0.0051), metrics(auc=0.780), GATE)
    assert not v.blessed
    assert [c.name for c in v.failed_checks] == ["max_auc_drop"]
    check = by_name(v)["max_auc_drop"]
    assert check.value == pytest.approx(0.0051) and check.threshold == 0.005
    assert v.reason.startswith("not blessed: AUC dropped 0.005 below the baseline (0.775 vs 0.780")


def test_auc_drop_just_under_or_at_the_bound_is_blessed():
    assert G.decide(metrics(auc=0.780 - 0.0049), metrics(auc=0.780), GATE).blessed
    # 0.779 - 0.005 is 0.774 only up to float noise; the bound is inclusive.
    assert G.decide(metrics(auc=0.774), metrics(auc=0.779), GATE).blessed


def test_large_auc_drop_reason_names_both_aucs():
    v = G.decide(metrics(auc=0.738), metrics(auc=0.779), GATE)
    assert not v.blessed
    assert v.reason.startswith("not blessed: AUC dropped 0.041 below the baseline (0.738 vs 0.779")
    assert v.candidate_auc == 0.738 and v.baseline_auc == 0.779


def test_better_candidate_than_baseline_passes_the_change_bound():
    v = G.decide(metrics(auc=0.80), metrics(auc=0.70), GATE)
    assert v.blessed and by_name(v)["max_auc_drop"].value == pytest.approx(-0.10)


def test_baseline_with_undefined_auc_blocks_the_candidate():
    # Both are scored on the same data: an undefined baseline AUC means the data cannot rank them.
    v = G.decide(metrics(auc=0.8), metrics(auc=float("nan")), GATE)
    assert not v.blessed and [c.name for c in v.failed_checks] == ["max_auc_drop"]


# -- slices --------------------------------------------------------------------------------


def test_slice_below_its_bound_fails():
    slices = {"mobile": {"auc": 0.80, "example_count": 1500.0}, "tablet": {"auc": 0.54, "example_count": 300.0}}
    v = G.decide(metrics(slices=slices), None, GATE)
    assert not v.blessed
    assert [c.name for c in v.failed_checks] == ["min_slice_auc[device=tablet]"]
    assert v.reason == ("not blessed: slice device=tablet AUC 0.540 below the minimum 0.550 (300 examples)")


def test_slice_with_too_few_examples_is_ignored():
    slices = {"mobile": {"auc": 0.80, "example_count": 1801.0}, "tablet": {"auc": 0.30, "example_count": 199.0}}
    v = G.decide(metrics(slices=slices), None, GATE)
    assert v.blessed, v.reason
    assert "min_slice_auc[device=tablet]" not in by_name(v)
    assert v.ignored_slices == {"tablet": 199.0}
    # At exactly min_slice_examples the slice counts.
    slices["tablet"]["example_count"] = 200.0
    assert not G.decide(metrics(slices=slices), None, GATE).blessed


def test_no_slice_feature_means_no_slice_checks():
    gate = dataclasses.replace(GATE, slice_feature=None)
    slices = {"tablet": {"auc": 0.1, "example_count": 5000.0}}
    v = G.decide(metrics(slices=slices), None, gate)
    assert v.blessed and not any(c.name.startswith("min_slice_auc") for c in v.checks)


# -- the record ------------------------------------------------------------------------


def test_verdict_json_holds_every_metric_the_thresholds_and_the_failed_checks():
    cand, base = metrics(auc=0.738), metrics(auc=0.779)
    v = G.decide(cand, base, GATE)
    d = json.loads(v.to_json())
    assert d["blessed"] is False and d["reason"] == v.reason
    assert d["thresholds"] == GATE.to_dict()
    assert d["failed_checks"] == ["max_auc_drop"]
    assert d["candidate_metrics"]["overall"] == cand["overall"]
    assert d["baseline_metrics"]["overall"]["auc"] == 0.779
    assert d["candidate_metrics"]["slices"]["tablet"] == {"auc": 0.70, "example_count": 200.0}
    assert {c["name"] for c in d["checks"]} == {c.name for c in v.checks}
    for c in d["checks"]:
        assert set(c) >= {"name", "value", "threshold", "passed"}
    assert G.Verdict.from_json(v.to_json()) == v


def test_decide_is_pure():
    cand, base = metrics(), metrics(auc=0.7)
    before = json.dumps([cand, base], sort_keys=True)
    G.decide(cand, base, GATE)
    assert json.dumps([cand, base], sort_keys=True) == before


def test_flipped_labels_fool_relative_metrics_but_not_the_label_shift_check():
    """The poisoned-span case seen in the demo: a candidate trained on flipped labels, judged on
    flipped labels, beats the serving model on every relative metric; the serving model's
    calibration on the span (a label rate 8x what it predicts) gives it away."""
    poisoned_candidate = metrics(auc=0.75, positives=1760, calibration=1.0, log_loss=0.32)
    serving_on_poison = metrics(auc=0.28, positives=1760, calibration=0.125, log_loss=1.9)
    v = G.decide(poisoned_candidate, serving_on_poison, GATE)
    assert not v.blessed
    assert [c.name for c in v.checks if not c.passed] == ["max_label_shift"]
    assert "suspect data: the label rate 0.880 is 8.00x what the serving model predicts" in v.reason
    # Ordinary drift in the base rate passes.
    v = G.decide(metrics(), metrics(calibration=0.6), GATE)
    assert by_name(v)["max_label_shift"].passed


# -- data: malformed lines ----------------------------------------------------------

def test_a_cycle_with_too_many_malformed_lines_is_not_blessed_and_says_so():
    verdict = G.decide(metrics(), metrics(auc=0.77), GATE, G.Ingested(events=9_000, dead_letters=1_000))
    check = by_name(verdict)["max_dead_letter_fraction"]
    assert not verdict.blessed and not check.passed
    assert check.value == pytest.approx(0.1) and check.threshold == GATE.max_dead_letter_fraction
    assert "1,000 of the cycle's 10,000 lines (10.0%) were malformed" in verdict.reason


def test_a_few_malformed_lines_pass_and_no_counts_means_no_check():
    few = G.decide(metrics(), metrics(auc=0.77), GATE, G.Ingested(events=9_990, dead_letters=10))
    assert few.blessed and by_name(few)["max_dead_letter_fraction"].passed
    at_bound = G.decide(metrics(), None, GATE, G.Ingested(events=95, dead_letters=5))
    assert at_bound.blessed
    # Examples from a stock ExampleGen carry no ingest counts: the gate judges the model alone.
    assert "max_dead_letter_fraction" not in by_name(G.decide(metrics(), None, GATE))
    assert json.loads(G.decide(metrics(), None, GATE).to_json())["thresholds"]["max_dead_letter_fraction"] == 0.05


def test_dead_letter_fraction_must_be_a_share():
    from components.event_schema import ad_click_schema
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="max_dead_letter_fraction"):
        dataclasses.replace(GATE, max_dead_letter_fraction=1.5).validate(ad_click_schema())


# -- training: an untrained candidate ----------------------------------------------------

def test_an_untrained_cold_candidate_is_refused_whatever_its_metrics():
    refused = G.decide(metrics(), None, GATE, trained=G.Trained(warm=False, examples=0))
    assert not refused.blessed and [c.name for c in refused.failed_checks] == ["min_trained_examples"]
    assert "untrained cold start" in refused.reason
    assert G.decide(metrics(), None, GATE, trained=G.Trained(warm=False, examples=5000)).blessed
    # A warm candidate that trained on nothing is its base model: the metrics judge it.
    assert G.decide(metrics(), metrics(auc=0.78), GATE, trained=G.Trained(warm=True, examples=0)).blessed
