"""Crash recovery on a real SQLite ML Metadata store and real serving folders, written the way TFX writes them.

A killed cycle leaves executions RUNNING; `recover_interrupted` finishes an
interrupted push (records the version the rename put in place, or pushes the
blessed model) or leaves it undone when the gate said no, and marks the rest
CANCELED; `untrained_spans` names the spans a resumed cycle must train on.
The controller crash test (test_controller_crash.py) kills real cycles.
"""
import os
import shutil

from ml_metadata.proto import metadata_store_pb2 as pb

from mlmd_history import History
from pipelines import lineage
from pipelines.config import PusherConfig, default_config
from pipelines.recovery import RECOVERY_PROPERTY, recover_interrupted, untrained_spans


def config_for(h: History):
    return default_config(h.home).replace(pipeline_name=h.pipeline,
                                          pusher=PusherConfig(keep_versions=h.keep_versions))


def untrained(h: History):
    return [a.id for a in untrained_spans(h.store, h.pipeline)]


def test_untrained_spans_are_those_no_judged_model_trained_on(tmp_path):
    h = History(str(tmp_path))
    h.ingest(h.new_run())  # an ingest-only run before the first cycle: replay material, never resumed
    h.cycle()
    h.cycle(blessed=False)  # a rejected model's spans were judged too
    assert untrained(h) == []
    # Killed after ingesting two spans, while training: the spans are committed but untrained.
    run = h.new_run()
    spans = h.ingest(run, n_spans=2)
    h.execute(run, "WarmStartTrainer", {"examples": spans}, {"model": [("Model", {})]}, state=pb.Execution.RUNNING)
    assert untrained(h) == spans
    # A resumed cycle trains on them; until the gate has judged that model they stay untrained.
    run = h.new_run()
    _, out = h.execute(run, "WarmStartTrainer", {"examples": spans}, {"model": [("Model", {})]})
    assert untrained(h) == spans
    h.execute(run, "Evaluator", {"examples": spans}, {"blessing": [("ModelBlessing", {
        "blessed": 1, "current_model_id": out["model"][0]})]})
    assert untrained(h) == []


def interrupted_push(h: History, blessed: bool = True, renamed: bool = True, infra_blessed=None,
                     challenger_mode: bool = False):
    """A cycle whose evaluator finished and whose pusher was killed, before or after its rename.

    `infra_blessed` (0 or 1): the pusher also took the LatencyValidator's InfraBlessing.
    """
    h.cycle()  # version 1
    run = h.new_run()
    examples = h.ingest(run)
    _, out = h.execute(run, "WarmStartTrainer", {"examples": examples}, {"model": [("Model", {})]})
    model = out["model"][0]
    h.put_model_files(os.path.join(h.artifact(model).uri, "Format-Serving"), content=b"the new model")
    _, ev = h.execute(run, "Evaluator", {"examples": examples, "model": [model]}, {"blessing": [(
        "ModelBlessing", {"blessed": int(blessed), "current_model_id": model, "reason": "verdict"})]})
    inputs = {"model": [model], "model_blessing": ev["blessing"]}
    if infra_blessed is not None:
        _, lv = h.execute(run, "Evaluator", {"model": [model]}, {"infra": [(
            "InfraBlessing", {"blessed": infra_blessed, "reason": "p99 over the SLO"})]})
        inputs["infra_blessing"] = lv["infra"]
    pusher, _ = h.execute(run, "BlessingPusher", inputs,
                          {"pushed_model": [("PushedModel", {})]}, state=pb.Execution.RUNNING,
                          exec_props={"serving_dir": h.serving_dir, "keep_versions": h.keep_versions,
                                      **({"challenger_mode": 1} if challenger_mode else {})})
    if renamed:
        shutil.copytree(os.path.join(h.artifact(model).uri, "Format-Serving"), os.path.join(h.serving_dir, "2"))
    return model, pusher


def versions(h: History):
    return sorted(int(v) for v in os.listdir(h.serving_dir) if v.isdigit())


def test_a_push_killed_after_its_rename_is_recorded_not_repeated(tmp_path):
    h = History(str(tmp_path))
    model, pusher = interrupted_push(h, renamed=True)
    config = config_for(h)
    assert lineage.serving(h.store, h.serving_dir, h.pipeline).model_id is None  # unknown to MLMD
    report = recover_interrupted(config, h.store)
    assert (report.push.how, report.push.version, report.push.model_id) == ("recorded", 2, model)
    assert versions(h) == [1, 2]
    [execution] = h.store.get_executions_by_id([pusher])
    assert execution.last_known_state == pb.Execution.COMPLETE
    assert "after its process died" in execution.custom_properties[RECOVERY_PROPERTY].string_value
    served = lineage.serving(h.store, h.serving_dir, h.pipeline)
    assert (served.version, served.model_id) == (2, model)
    st = lineage.status(config)
    assert st.last_cycle.outcome == "pushed" and st.last_cycle.pushed_version == "2"
    assert [m.model_id for m in lineage.chain(h.store, h.pipeline, serving_dir=h.serving_dir)][0] == model
    assert not recover_interrupted(config, h.store).anything  # idempotent


def test_a_push_killed_before_its_rename_is_completed(tmp_path):
    from pipelines.recovery import same_tree

    h = History(str(tmp_path))
    model, pusher = interrupted_push(h, renamed=False)
    # The copy into a hidden temporary folder had begun: TF Serving ignores it, and so does recovery.
    os.makedirs(os.path.join(h.serving_dir, ".tmp-killed"))
    report = recover_interrupted(config_for(h), h.store)
    assert (report.push.how, report.push.version) == ("pushed", 2)
    assert versions(h) == [1, 2]
    assert same_tree(os.path.join(h.artifact(model).uri, "Format-Serving"), os.path.join(h.serving_dir, "2"))
    assert lineage.serving(h.store, h.serving_dir, h.pipeline).model_id == model


def test_a_rejected_models_interrupted_push_is_not_completed(tmp_path):
    h = History(str(tmp_path))
    model, pusher = interrupted_push(h, blessed=False, renamed=False)
    report = recover_interrupted(config_for(h), h.store)
    assert report.push.how == "not pushed" and "not blessed" in report.push.reason
    assert versions(h) == [1]
    [execution] = h.store.get_executions_by_id([pusher])
    assert execution.last_known_state == pb.Execution.CANCELED
    assert lineage.serving(h.store, h.serving_dir, h.pipeline).version == 1


def test_an_interrupted_push_the_latency_gate_refused_is_not_completed(tmp_path):
    h = History(str(tmp_path))
    interrupted_push(h, renamed=False, infra_blessed=0)
    report = recover_interrupted(config_for(h), h.store)
    assert report.push.how == "not pushed" and "not blessed" in report.push.reason
    assert versions(h) == [1]


def test_an_interrupted_challenger_mode_push_is_not_pushed_over_the_champion_but_deployed_beside_it(tmp_path):
    from components.online_evaluator import record
    from pipelines import online
    from pipelines.config import LatencyConfig, OnlineEvalConfig

    h = History(str(tmp_path))
    model, pusher = interrupted_push(h, renamed=False, challenger_mode=True)
    config = config_for(h).replace(online=OnlineEvalConfig(enabled=True), latency=LatencyConfig(enabled=False))
    report = recover_interrupted(config, h.store)
    assert report.push.how == "not pushed" and "deployed as the challenger" in report.push.reason
    assert versions(h) == [1]
    # The controller's online step, run after recovery on start, deploys it from its blessing.
    step = online.reconcile(config, h.store)
    assert (step.deployed.action, step.deployed.challenger_model_id) == ("start", model)
    assert record.open_comparison(h.store, h.pipeline).champion_model_id == h.cycles[0]["model"]


def test_an_interrupted_push_overtaken_by_a_newer_one_is_not_completed(tmp_path):
    h = History(str(tmp_path))
    interrupted_push(h, renamed=False)
    newer = h.cycle()  # a later cycle pushed (version 2)
    report = recover_interrupted(config_for(h), h.store)
    assert report.push.how == "not pushed" and "a later push" in report.push.reason
    assert lineage.serving(h.store, h.serving_dir, h.pipeline).model_id == newer["model"]


def test_other_interrupted_executions_are_cancelled_and_the_cycle_reads_interrupted(tmp_path):
    h = History(str(tmp_path))
    h.cycle()
    run = h.new_run()
    spans = h.ingest(run)
    trainer, _ = h.execute(run, "WarmStartTrainer", {"examples": spans}, {"model": [("Model", {})]},
                           state=pb.Execution.RUNNING)
    config = config_for(h)
    # No controller holds the home, so no one runs that cycle any more: status says so.
    st = lineage.status(config)
    assert st.last_cycle.outcome == "interrupted" and "next controller start resumes" in st.last_cycle.reason
    report = recover_interrupted(config, h.store)
    assert report.cancelled == [{"execution_id": trainer, "node": "WarmStartTrainer"}] and report.push is None
    [execution] = h.store.get_executions_by_id([trainer])
    assert execution.last_known_state == pb.Execution.CANCELED
    assert "process running it died" in execution.custom_properties[RECOVERY_PROPERTY].string_value
    outcome = lineage.last_cycle(h.store, h.pipeline)
    assert outcome.outcome == "interrupted" and outcome.reason.startswith("WarmStartTrainer interrupted")
    assert untrained(h) == spans  # what the resumed cycle will train on


def test_a_resumed_cycle_reads_its_spans_from_the_resume_resolver():
    from ml_metadata.proto import metadata_store_pb2

    def artifact(**props):
        a = metadata_store_pb2.Artifact(id=props.pop("id", 1))
        for key, value in props.items():
            if isinstance(value, str):
                a.custom_properties[key].string_value = value
            else:
                a.custom_properties[key].int_value = value
        return a

    nodes = {"untrained_spans_resolver": {"state": "COMPLETE", "outputs": {"examples": [
                 artifact(span=7, event_count=10), artifact(span=8, event_count=5)]}},
             "WarmStartTrainer": {"state": "COMPLETE", "outputs": {"model": [artifact(id=9, start="warm")]}},
             "Evaluator": {"state": "COMPLETE", "outputs": {"blessing": [artifact(blessed=1, reason="ok")]}},
             "BlessingPusher": {"state": "COMPLETE", "outputs": {"pushed_model": [
                 artifact(pushed=1, pushed_version="4")]}}}
    outcome = lineage.cycle_outcome("r", 1, nodes)
    assert (outcome.outcome, outcome.spans, outcome.events, outcome.resumed) == ("pushed", [7, 8], 15, True)
    assert "resumed after an interrupted cycle" in lineage.format_status(lineage.Status(
        home="h", pipeline_name="p", now_ms=0, metadata_exists=True,
        serving=lineage.ServingInfo("s", [], None, None), newest_event_ms=None, freshness_seconds=None,
        last_cycle=outcome, spans_ingested=2, events_ingested=15, late_events=0, dead_lettered_events=0,
        newest_span=8, models_trained=1, models_blessed=1, models_rejected=0, pushes=1, rollbacks=0,
        controller=lineage.ControllerState(state="not running", lock_path="x")))


def test_the_controller_recovers_and_applies_retention_before_its_first_cycle(tmp_path):
    import dataclasses

    from pipelines.controller import due, run_continuous

    h = History(str(tmp_path))
    for _ in range(5):
        h.cycle()
    run = h.new_run()
    spans = h.ingest(run)
    trainer, _ = h.execute(run, "WarmStartTrainer", {"examples": spans}, {"model": [("Model", {})]},
                           state=pb.Execution.RUNNING)
    config = config_for(h)
    config = config.replace(retention=dataclasses.replace(config.retention, keep_cycles=1))
    said, emitted = [], []
    assert run_continuous(config, max_cycles=0, say=said.append, emit=emitted.append) == 0
    assert h.store.get_executions_by_id([trainer])[0].last_known_state == pb.Execution.CANCELED
    assert any(m.startswith("recovery: marked interrupted executions CANCELED: WarmStartTrainer") for m in said)
    assert any(m.startswith("retention (keep 1 cycles): deleted the payload of") for m in said)
    assert h.artifact(spans[0]).state == pb.Artifact.LIVE  # untrained: kept for the resumed cycle
    check = due(config)
    assert check.run and check.resume and "never trained: resuming" in check.why
