"""Thin spans do not stall serving: eval splits whose verdict lacked evidence are carried to the next cycle.

The plain planning (`training_inputs.carried_and_released`, `plan_training_inputs`, `eval_files`) first,
then the whole pipeline on thin spans through TFX, read back from ML Metadata.
"""
import json

import pytest

from components.warm_start_trainer.training_inputs import carried_and_released, eval_files, plan_training_inputs


def test_a_verdict_without_evidence_carries_every_split_it_was_judged_on():
    assert carried_and_released([5], evidence_insufficient=True, max_carried=5) == ([5], [])
    # Cycle 6 was judged on 5 (carried) and 6, and lacked evidence again: both go on.
    assert carried_and_released([6, 5], evidence_insufficient=True, max_carried=5) == ([5, 6], [])


def test_the_carry_is_bounded_and_what_falls_out_is_released():
    assert carried_and_released([3, 4, 5, 6], evidence_insufficient=True, max_carried=2) == ([5, 6], [3, 4])


def test_a_decided_verdict_releases_the_carried_splits_but_not_its_newest():
    # Blessed or refused for quality: 4 and 5 were carried, 6 is the previous-eval rule's.
    assert carried_and_released([4, 5, 6], evidence_insufficient=False, max_carried=5) == ([], [4, 5])
    assert carried_and_released([6], evidence_insufficient=False, max_carried=5) == ([], [])


def test_nothing_judged_or_carrying_off_changes_nothing():
    assert carried_and_released([], evidence_insufficient=True, max_carried=5) == ([], [])
    assert carried_and_released([5, 6], evidence_insufficient=True, max_carried=0) == ([], [])
    with pytest.raises(ValueError):
        carried_and_released([5], True, -1)


def test_carried_splits_are_scored_not_trained_and_released_ones_are_trained():
    inputs = plan_training_inputs([(10, "/s10")], [(7, "/s7"), (8, "/s8")], replay_spans=2, replay_fraction=0.1,
                                  previous_eval_span=8, carried=[(9, "/s9")])
    assert not [i for i in inputs if i.span == 9]
    assert [(i.span, i.role) for i in inputs if i.split == "eval"] == [(8, "previous_eval")]
    assert eval_files([(10, "/s10")], carried=[(9, "/s9")]) == ["/s9/Split-eval/*", "/s10/Split-eval/*"]
    # Cycle 10 decided; cycle 11 trains on span 9's eval split (released) and span 10's (previous).
    inputs = plan_training_inputs([(11, "/s11")], [(8, "/s8"), (10, "/s10")], replay_spans=2, replay_fraction=0.1,
                                  previous_eval_span=10, released=[(9, "/s9")])
    assert [(i.span, i.role, i.fraction) for i in inputs if i.split == "eval"] == [
        (10, "previous_eval", 1.0), (9, "released_eval", 1.0)]


def test_a_carried_span_is_never_trained_even_when_another_rule_names_it():
    # Defensive: a carried span that is also this cycle's older span, the previous eval, or released.
    inputs = plan_training_inputs([(10, "/s10"), (9, "/s9")], [(8, "/s8")], replay_spans=1, replay_fraction=0.1,
                                  previous_eval_span=8, carried=[(9, "/s9"), (8, "/s8")], released=[(8, "/s8")])
    assert [(i.span, i.split) for i in inputs if i.split == "eval"] == []
