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
    # Span 9's eval split is scored, never trained; its train split, which the base never learned, is
    # trained in full (and not replayed on top).
    assert [(i.span, i.split, i.role, i.fraction) for i in inputs if i.span == 9] == [
        (9, "train", "carried_train", 1.0)]
    assert [(i.span, i.role) for i in inputs if i.split == "eval"] == [(8, "previous_eval")]
    # With span 9 among the replay window's spans too, it is still trained once, in full.
    inputs = plan_training_inputs([(10, "/s10")], [(8, "/s8"), (9, "/s9")], replay_spans=2, replay_fraction=0.1,
                                  previous_eval_span=8, carried=[(9, "/s9")])
    assert [(i.span, i.role, i.fraction) for i in inputs if i.split == "train"] == [
        (10, "new", 1.0), (9, "carried_train", 1.0), (8, "replay", 0.1)]
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


# -- through TFX: three cycles on thin spans --------------------------------------------------------------


@pytest.fixture(scope="module")
def thin_run(tmp_path_factory):
    """Three cycles on 5-minute spans of ~300 eval examples each, against an evidence floor of 450.

    1. the first spans: the newest span's eval split alone is too little evidence, not blessed, nothing served;
    2. one new span: judged on the carried eval split of cycle 1's newest span plus its own (~600): decides;
    3. one new span: trains on the eval split cycle 2 released.
    """
    import dataclasses

    from pipelines.config import GateConfig, TrainerConfig, default_config
    from pipelines.local_runner import run_cycle
    from pipelines.simulator import SimulatorConfig, simulate

    home = str(tmp_path_factory.mktemp("thin"))
    config = default_config(home)
    config = config.replace(
        window=dataclasses.replace(config.window, span_seconds=300),
        trainer=TrainerConfig(cold_epochs=2, warm_epochs=1),
        # Evidence is what is under test: the deprecated count is a deterministic evidence check (the interval
        # width, which also shrinks with more examples, is off); the quality bounds are off too (a cold model
        # on one 5-minute span is no good model: it need only be decided on).
        gate=GateConfig(min_auc=0.0, min_calibration=0.01, max_calibration=100.0, max_log_loss_factor=100.0,
                        max_auc_drop=1.0, max_log_loss_increase=100.0, max_label_shift=100.0, slice_feature=None,
                        max_auc_interval_width=1.0, min_eval_examples=450, max_carried_eval_spans=5))
    sim = SimulatorConfig(minutes=11, events_per_minute=300, seed=5)
    log = config.source.log_dir
    simulate(log, sim)
    reports = [run_cycle(config)]
    for _ in range(2):
        simulate(log, dataclasses.replace(sim, minutes=5), append=True)
        reports.append(run_cycle(config))
    return config, reports


def _mlmd(config):
    from pipelines.metadata import open_store, prop

    store = open_store(config.metadata_path)
    props = lambda a: {k: prop(a, k) for k in a.custom_properties}  # noqa: E731
    models = {m.id: props(m) for m in store.get_artifacts_by_type("Model")}
    blessings = {props(b)["current_model_id"]: props(b) for b in store.get_artifacts_by_type("ModelBlessing")}
    examples = {a.properties["span"].int_value: props(a) for a in store.get_artifacts_by_type("Examples")}
    return models, blessings, examples


@pytest.mark.e2e
def test_thin_spans_carry_their_eval_splits_until_a_cycle_decides(thin_run):
    config, (r1, r2, r3) = thin_run
    models, blessings, examples = _mlmd(config)
    s1, s2, s3 = max(r1.spans), r2.spans[-1], r3.spans[-1]
    assert r2.spans == [s1 + 1] and r3.spans == [s2 + 1]
    eval_count = {s: examples[s]["eval_count"] for s in (s1, s2, s3)}
    assert all(c < 450 for c in eval_count.values()), eval_count  # every span alone is too little evidence

    b1 = blessings[r1.model_id]
    assert r1.blessed is False and "too little evidence" in r1.reason and r1.pushed_version is None
    assert b1["evidence_insufficient"] == 1 and json.loads(b1["eval_spans"]) == [s1]
    assert b1["eval_examples"] == eval_count[s1]

    # Cycle 2 is judged on span s1's eval split (carried) and its own: enough evidence, it decides and serves.
    b2, m2 = blessings[r2.model_id], models[r2.model_id]
    assert json.loads(b2["eval_spans"]) == [s1, s2] and b2["eval_span"] == s2
    assert b2["eval_examples"] == eval_count[s1] + eval_count[s2]
    assert b2["evidence_insufficient"] == 0 and r2.blessed, r2.reason
    assert r2.pushed_version == "1"
    # ... and its candidate never trained on the carried split.
    assert json.loads(m2["carried_eval_spans"]) == [s1]
    assert [(i["span"], i["role"]) for i in json.loads(m2["eval_inputs"])] == [(s1, "carried_eval"),
                                                                               (s2, "newest_eval")]
    assert not [i for i in json.loads(m2["training_inputs"]) if i["span"] == s1 and i["split"] == "eval"]
    # Too little evidence says nothing against the data: span s1 is not quarantined, and the candidate of
    # cycle 2 (whose base never learned s1) trains on its train split in full.
    assert [(i["span"], i["role"], i["fraction"]) for i in json.loads(m2["training_inputs"])
            if i["span"] == s1 and i["split"] == "train"] == [(s1, "carried_train", 1.0)]
    from components.warm_start_trainer.quarantine import rejected_spans
    from pipelines.metadata import open_store

    store = open_store(config.metadata_path)
    span_ids = {a.properties["span"].int_value: a.id for a in store.get_artifacts_by_type("Examples")}
    assert span_ids[s1] not in rejected_spans(store, span_ids.values())

    # Cycle 2 decided: cycle 3 trains on the released split s1 and on s2's (the previous eval), carries nothing.
    m3 = models[r3.model_id]
    trained_eval = {(i["span"], i["role"]) for i in json.loads(m3["training_inputs"]) if i["split"] == "eval"}
    assert trained_eval == {(s1, "released_eval"), (s2, "previous_eval")}
    assert json.loads(m3["carried_eval_spans"]) == []
    assert json.loads(blessings[r3.model_id]["eval_spans"]) == [s3]


# -- the resolver, over a real SQLite ML Metadata store ------------------------------------------------------


def _set_blessing(history, blessing_id, **props):
    from mlmd_history import _set

    artifact = history.store.get_artifacts_by_id([blessing_id])[0]
    for key, value in props.items():
        _set(artifact.custom_properties[key], value)
    history.store.put_artifacts([artifact])


def _tfx_examples(history, ids):
    from tfx.types import standard_artifacts

    result = []
    for mlmd in history.store.get_artifacts_by_id(list(ids)):
        a = standard_artifacts.Examples()
        a.set_mlmd_artifact(mlmd)
        result.append(a)
    return result


def test_the_resolver_reads_the_newest_blessing_and_bounds_the_carry(tmp_path):
    from components.warm_start_trainer.resolvers import CarriedEvalSpansStrategy, newest_judged_cycle
    from mlmd_history import History

    history = History(str(tmp_path))
    assert newest_judged_cycle(history.store, "driftline") == ([], False)
    cycles = [history.cycle(blessed=False, push=False) for _ in range(3)]  # spans 100, 101, 102
    for i, c in enumerate(cycles):
        _set_blessing(history, c["blessing"], eval_span=100 + i, eval_spans=json.dumps(list(range(100, 101 + i))),
                      evidence_insufficient=1)
    assert newest_judged_cycle(history.store, "driftline") == ([100, 101, 102], True)
    examples = _tfx_examples(history, [e for c in cycles for e in c["examples"]])
    resolved = CarriedEvalSpansStrategy("driftline", max_spans=2).resolve_artifacts(
        history.store, {"carried": examples, "released": examples})
    assert [a.span for a in resolved["carried"]] == [101, 102]
    assert [a.span for a in resolved["released"]] == [100]
    off = CarriedEvalSpansStrategy("driftline", max_spans=0).resolve_artifacts(
        history.store, {"carried": examples, "released": examples})
    assert off == {"carried": [], "released": []}

    # A blessing from before carrying existed: its eval span alone, and decided (nothing carried, none released).
    legacy = history.cycle(blessed=True, push=False)
    _set_blessing(history, legacy["blessing"], eval_span=103)
    assert newest_judged_cycle(history.store, "driftline") == ([103], False)


def test_suspect_data_is_never_carried_even_when_the_evidence_is_thin():
    """A thin span whose labels are flipped: too little evidence AND a label shift. It is refused as suspect,
    stays quarantined, and its eval split is not carried (the data, not the sample size, is the problem)."""
    from components.evaluator import gate as G

    def check(name, passed):
        return G.Check(name=name, value=1.0, threshold=0.5, passed=passed, comparison="<=", message=name)

    def verdict(*checks):
        return G.Verdict(blessed=False, reason="not blessed", checks=list(checks), candidate_metrics={},
                         baseline_metrics=None, thresholds={})

    assert verdict(check("max_auc_interval_width", False), check("max_label_shift", True)).evidence_insufficient
    assert verdict(check("min_eval_positives", False), check("min_auc", False)).evidence_insufficient
    assert not verdict(check("max_auc_interval_width", False), check("max_label_shift", False)).evidence_insufficient
    assert not verdict(check("min_eval_positives", False),
                       check("max_dead_letter_fraction", False)).evidence_insufficient
    assert not verdict(check("min_auc", False)).evidence_insufficient
