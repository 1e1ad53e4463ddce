"""`pipelines.lineage`, `driftline status` / `driftline lineage` and the lineage plot.

The tests marked e2e read the real ML Metadata store of the five cycles that
the session fixture `continuous_run` (tests/conftest.py) runs: a cold start,
a warm one, a poisoned span the gate rejects, another warm one followed by a
rollback to version 2, and a feature-set cold start. Expectations are
computed from that fixture's CycleReports, never hard-coded. The rest are
fast tests of the pure helpers and of a small hand-built MLMD store.
"""
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import pytest

from pipelines import lineage

e2e = pytest.mark.e2e


# -- fast: pure helpers -----------------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0, "0 s"), (42.4, "42 s"), (185, "3 min 5 s"), (7800, "2 h 10 min"),
    (86400 * 326 + 3600 * 17 + 59, "326 d 17 h"), (-90, "-1 min 30 s")])
def test_format_duration(seconds, text):
    assert lineage.format_duration(seconds) == text


@pytest.mark.parametrize("spans, text", [
    ([], "none"), ([7], "7"), ([1, 2], "1,2"), ([1, 2, 3, 5], "1-3,5"), ([5, 4, 3, 1, 2], "1-5"),
    ([1, 2, 4, 5, 6, 7, 9], "1,2,4-7,9")])
def test_spans_are_collapsed_into_runs(spans, text):
    assert lineage._spans(spans) == text


def test_eval_metrics_read_verdict_json_numbers():
    m = lineage.EvalMetrics.from_overall({"auc": 0.7, "log_loss": "inf", "calibration": None, "example_count": 1000})
    assert m.auc == 0.7 and m.log_loss == math.inf and m.calibration is None and m.example_count == 1000
    assert lineage.EvalMetrics.from_overall(None) is None


def record(model_id, base=None, start=None, created_ms=None, blessed=True, auc=0.7, base_auc=None,
           pushed_version=None, pushed_at_ms=None, rollbacks=(), max_event_time_ms=1_000):
    return lineage.ModelRecord(
        model_id=model_id, uri=f"/m/{model_id}", created_ms=created_ms or model_id * 1000,
        start=start or ("cold" if base is None else "warm"),
        start_reason="cold start: no blessed base model yet" if base is None else f"warm start from model {base}",
        base_model_id=base, newest_span=model_id, trained_spans=[model_id], trained_examples=100,
        trained_examples_by_role={"new": 80, "replay": 20}, max_event_time_ms=max_event_time_ms,
        train_wall_seconds=1.0, train_cpu_seconds=1.5, final_loss=0.3, blessed=blessed,
        blessing_reason=("blessed: fine" if blessed else "not blessed: AUC 0.380 below the minimum 0.550")
        if blessed is not None else None,
        eval_span=model_id, candidate=lineage.EvalMetrics(auc=auc, calibration=1.0, log_loss=0.3, example_count=900)
        if auc is not None else None,
        baseline=lineage.EvalMetrics(auc=base_auc) if base_auc is not None else None,
        pushed_version=pushed_version, pushed_at_ms=pushed_at_ms, rollbacks=list(rollbacks))


def test_walk_chain_stops_at_the_cold_start_a_missing_base_and_a_loop():
    by_id = {1: record(1), 2: record(2, base=1), 3: record(3, base=2), 4: record(4, base=2), 9: record(9, base=8)}
    assert [m.model_id for m in lineage.walk_chain(by_id, 3)] == [3, 2, 1]
    assert [m.model_id for m in lineage.walk_chain(by_id, 4)] == [4, 2, 1]
    assert [m.model_id for m in lineage.walk_chain(by_id, 9)] == [9]  # base 8 unknown: the chain ends
    loop = {5: record(5, base=6), 6: record(6, base=5)}
    assert [m.model_id for m in lineage.walk_chain(loop, 5)] == [5, 6]


def test_chain_from_records_raises_for_an_unknown_model():
    records = [record(1), record(2, base=1, pushed_version="2", pushed_at_ms=5)]
    assert [m.model_id for m in lineage.chain(None, "p", records=records)] == [2, 1]
    with pytest.raises(lineage.LineageError, match="model 7 is not a model of pipeline 'p'"):
        lineage.chain(None, "p", model_id=7, records=records)


def test_serving_events_are_in_time_order_and_name_the_model():
    rb = lineage.RollbackRecord(new_version=4, to_version=2, from_version=3, at_ms=40, model_id=2, pushed_model_id=99)
    records = [record(1, pushed_version="1", pushed_at_ms=10), record(2, base=1, pushed_version="2", pushed_at_ms=20,
                                                                      rollbacks=[rb]),
               record(3, base=2, blessed=False), record(4, base=2, pushed_version="3", pushed_at_ms=30)]
    events = lineage.serving_events(records)
    assert [(e["kind"], e["version"], e["model_id"]) for e in events] == [
        ("push", 1, 1), ("push", 2, 2), ("push", 3, 4), ("rollback", 4, 2)]
    assert events[-1]["rollback_of"] == 2
    assert lineage.latest_pushed_model_id(records) == 2


def test_to_json_turns_non_finite_numbers_into_json():
    r = record(1, auc=float("nan"))
    data = json.loads(lineage.to_json([r, dataclasses.replace(r, final_loss=float("inf"))]))
    assert data[0]["candidate"]["auc"] is None and data[1]["final_loss"] == "inf"


def test_format_lineage_shows_metrics_verdicts_and_pushes():
    rb = lineage.RollbackRecord(new_version=4, to_version=2, from_version=3, at_ms=40_000, model_id=2,
                                pushed_model_id=9)
    chain = [record(2, base=1, base_auc=0.69, pushed_version="2", pushed_at_ms=20_000, rollbacks=[rb]),
             record(1, pushed_version="1", pushed_at_ms=10_000)]
    serving = lineage.ServingInfo(serving_dir="/s", versions=[1, 2, 3, 4], version=4, model_id=2, rollback_of=2)
    text = lineage.format_lineage(chain, serving)
    assert text.startswith("Lineage of model 2, serving as version 4, back to its last cold start: 2 models")
    assert "0.700 / 0.690" in text and "2 (again as 4)" in text
    assert "warm start from model 1" in text and "rollback: version 4 serves it again" in text
    assert lineage.format_lineage([]).startswith("no models")
    # The gate's paired tests, when the verdict has them: difference, bounds, test and p-value.
    tests = {"auc": {"test": "DeLong", "diff": -0.004, "lower": -0.012, "upper": 0.004, "p_value": 0.21,
                     "margin": 0.0, "confidence": 0.95},
             "log_loss": {"test": "paired t", "diff": 0.002, "lower": None, "upper": None, "p_value": 0.3,
                          "margin": 0.0, "confidence": 0.95}}
    text = lineage.format_lineage([dataclasses.replace(chain[0], gate_tests=tests), chain[1]], serving)
    assert ("  tests: candidate - baseline: AUC -0.004 [-0.012, +0.004] at 95% (DeLong, p=0.21 for worse by > 0.000); "
            "log loss +0.002 [-, -] at 95% (paired t, p=0.3 for worse by > 0.000)") in text.splitlines()


# -- fast: the controller lock ----------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(home, pid):
    with open(os.path.join(str(home), lineage.CONTROLLER_LOCK_FILE), "w") as f:
        json.dump({"pid": pid, "started_at": 1_700_000_000_000}, f)


def test_controller_lock_states(tmp_path):
    assert lineage.controller_state(str(tmp_path)).describe() == "not running"
    write_lock(tmp_path, os.getpid())
    state = lineage.controller_state(str(tmp_path))
    assert state.running and state.describe() == f"running (pid {os.getpid()})"
    assert state.started_at == 1_700_000_000_000
    pid = dead_pid()
    write_lock(tmp_path, pid)
    state = lineage.controller_state(str(tmp_path))
    assert state.state == "stale" and not state.running
    assert state.describe() == f"not running (stale lock from pid {pid})"
    for garbage in ("{not json", json.dumps({"pid": 0}), json.dumps({"started_at": 1}), json.dumps({"pid": "12"})):
        (tmp_path / lineage.CONTROLLER_LOCK_FILE).write_text(garbage)
        assert lineage.controller_state(str(tmp_path)).state == "unknown"


def test_status_of_an_empty_home_creates_nothing(tmp_path):
    st = lineage.status(str(tmp_path))
    assert not st.metadata_exists and st.serving.version is None and st.last_cycle is None
    assert st.spans_ingested == 0 and st.controller.state == "not running"
    assert not os.path.exists(os.path.join(str(tmp_path), "metadata.sqlite"))
    assert "nothing has run here yet" in lineage.format_status(st)
    with pytest.raises(lineage.LineageError, match="no ML Metadata"):
        lineage.models(os.path.join(str(tmp_path), "metadata.sqlite"))
    assert not os.path.exists(os.path.join(str(tmp_path), "metadata.sqlite"))


# -- fast: cycle outcomes from run_outputs-shaped dicts -----------------------------------------


def artifact(**props):
    from ml_metadata.proto import metadata_store_pb2

    a = metadata_store_pb2.Artifact(id=props.pop("id", 1))
    for key, value in props.items():
        if isinstance(value, str):
            a.custom_properties[key].string_value = value
        elif isinstance(value, float):
            a.custom_properties[key].double_value = value
        else:
            a.custom_properties[key].int_value = value
    return a


def nodes(examples=(), model=None, blessing=None, pushed=None, states=None):
    states = states or {}
    result = {"StreamingExampleGen": {"state": "COMPLETE", "outputs": {"examples": list(examples)}}}
    for node, key, value in (("WarmStartTrainer", "model", model), ("Evaluator", "blessing", blessing),
                             ("BlessingPusher", "pushed_model", pushed)):
        if value is not None:
            result[node] = {"state": "COMPLETE", "outputs": {key: [value]}}
    for node, state in states.items():
        result.setdefault(node, {"outputs": {}})["state"] = state
    return result


def test_cycle_outcomes():
    span = artifact(span=7, event_count=5000)
    model = artifact(id=70, start="warm")
    outcome = lineage.cycle_outcome("r", 1, nodes())
    assert outcome.outcome == "no new span" and outcome.spans == [] and outcome.events == 0
    outcome = lineage.cycle_outcome("r", 1, nodes([span]))
    assert outcome.outcome == "ingested" and outcome.spans == [7]
    rejected = lineage.cycle_outcome("r", 1, nodes([span], model, artifact(blessed=0, reason="not blessed: AUC low"),
                                                   artifact(pushed=0, reason="not pushed: ...")))
    assert (rejected.outcome, rejected.reason, rejected.model_id, rejected.blessed) == (
        "rejected", "not blessed: AUC low", 70, False)
    pushed = lineage.cycle_outcome("r", 1, nodes([span], model, artifact(blessed=1, reason="blessed: AUC 0.7"),
                                                 artifact(pushed=1, pushed_version="5")))
    assert pushed.outcome == "pushed" and pushed.pushed_version == "5" and pushed.events == 5000
    assert pushed.reason == "trained warm on spans 7, blessed: AUC 0.7; pushed as version 5"
    held = lineage.cycle_outcome("r", 1, nodes([span], model, artifact(blessed=1, reason="blessed"),
                                               artifact(pushed=0, reason="not pushed: latency")))
    assert held.outcome == "not pushed" and held.reason == "not pushed: latency"
    failed = lineage.cycle_outcome("r", 1, nodes([span], states={"Transform": "FAILED"}))
    assert failed.outcome == "failed" and failed.reason.startswith("Transform failed")
    running = lineage.cycle_outcome("r", 1, nodes([span], model, states={"Evaluator": "RUNNING"}))
    assert running.outcome == "running"


# -- fast: a small hand-built ML Metadata store -------------------------------------------------


def build_store(path, serving_dir):
    """A pipeline "p" in MLMD: models 1 (cold) <- 2 <- 3 (rejected), 4 (warm from 2); pushes 1, 2, 4;
    a rollback to version 2 recorded without a model id; a second pipeline "other" with its own model."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from pipelines.metadata import open_store

    store = open_store(path)
    types = {name: store.put_artifact_type(pb.ArtifactType(name=name))
             for name in ("Model", "ModelBlessing", "PushedModel")}
    ctx_type = store.put_context_type(pb.ContextType(name="pipeline"))
    rollback_type = store.put_execution_type(pb.ExecutionType(name=lineage.ROLLBACK_EXECUTION_TYPE,
                                                              properties={"from_version": pb.INT}))
    ctx_ids = store.put_contexts([pb.Context(type_id=ctx_type, name="p"), pb.Context(type_id=ctx_type, name="other")])

    def put(type_name, ctx=0, **props):
        a = artifact(id=0, **props)
        a.ClearField("id")
        a.type_id, a.uri, a.state = types[type_name], f"/{type_name}", pb.Artifact.LIVE
        [aid] = store.put_artifacts([a])
        store.put_attributions_and_associations([pb.Attribution(artifact_id=aid, context_id=ctx_ids[ctx])], [])
        return aid

    verdict = lambda auc, base: json.dumps({"candidate_metrics": {"overall": {"auc": auc, "example_count": 900.0}},
                                            "baseline_metrics": {"overall": {"auc": base}} if base else None,
                                            "failed_checks": [] if auc > 0.5 else ["min_auc"]})
    m1 = put("Model", start="cold", base_model_id=-1, max_event_time_ms=1000, trained_spans="[0, 1, 2]",
             final_loss=-1.0)
    m2 = put("Model", start="warm", base_model_id=m1, max_event_time_ms=2000, trained_spans="[3]")
    m3 = put("Model", start="warm", base_model_id=m2, max_event_time_ms=3000, trained_spans="[4]")
    m4 = put("Model", start="warm", base_model_id=m2, max_event_time_ms=4000, trained_spans="[5]")
    put("Model", ctx=1, start="cold", base_model_id=-1)
    put("ModelBlessing", blessed=0, current_model_id=m1, reason="an older verdict", verdict_json=verdict(0.1, None))
    put("ModelBlessing", blessed=1, current_model_id=m1, reason="blessed: first", verdict_json=verdict(0.7, None))
    put("ModelBlessing", blessed=1, current_model_id=m2, baseline_model_id=m1, reason="blessed: second",
        verdict_json=verdict(0.72, 0.7))
    put("ModelBlessing", blessed=0, current_model_id=m3, baseline_model_id=m2, reason="not blessed: poisoned",
        verdict_json=verdict(0.38, 0.36))
    put("ModelBlessing", blessed=1, current_model_id=m4, baseline_model_id=m2, reason="blessed: fourth",
        verdict_json=verdict(0.74, 0.71))
    for version, model, at in ((1, m1, 100), (2, m2, 200), (3, m4, 400)):
        put("PushedModel", pushed=1, pushed_version=str(version), model_id=model, pushed_at_ms=at,
            pushed_destination=os.path.join(serving_dir, str(version)), reason=f"pushed as version {version}")
        os.makedirs(os.path.join(serving_dir, str(version)))
    put("PushedModel", pushed=0, model_id=m3, reason="not pushed: model_blessing is not blessed")
    # The rollback: version 4 serves version 2's model again; recorded without a model id.
    rb = artifact(id=0, pushed=1, pushed_version="4", rollback_of=2, pushed_at_ms=500,
                  pushed_destination=os.path.join(serving_dir, "4"))
    rb.ClearField("id")
    rb.type_id, rb.uri, rb.state = types["PushedModel"], "/rb", pb.Artifact.LIVE
    execution = pb.Execution(type_id=rollback_type, last_known_state=pb.Execution.COMPLETE)
    execution.properties["from_version"].int_value = 3
    event = pb.Event(type=pb.Event.OUTPUT)
    event.path.steps.add().key = "pushed_model"
    store.put_execution(execution, [(rb, event)], store.get_contexts_by_id([ctx_ids[0]]))
    os.makedirs(os.path.join(serving_dir, "4"))
    os.makedirs(os.path.join(serving_dir, ".tmp-abc"))
    return store, (m1, m2, m3, m4)


def test_models_chain_and_serving_from_a_hand_built_store(tmp_path):
    serving_dir = str(tmp_path / "serving")
    store, (m1, m2, m3, m4) = build_store(str(tmp_path / "metadata.sqlite"), serving_dir)
    records = lineage.models(store, "p")
    assert [m.model_id for m in records] == [m1, m2, m3, m4]  # oldest first; not the other pipeline's
    by_id = {m.model_id: m for m in records}
    assert by_id[m1].blessed is True and by_id[m1].blessing_reason == "blessed: first"  # the newest blessing
    assert by_id[m1].base_model_id is None and by_id[m1].final_loss is None and by_id[m1].trained_spans == [0, 1, 2]
    assert by_id[m1].candidate.auc == 0.7 and by_id[m1].baseline is None
    assert by_id[m2].baseline.auc == 0.7 and by_id[m2].baseline_model_id == m1
    assert (by_id[m3].blessed, by_id[m3].pushed_version, by_id[m3].failed_checks) == (False, None, ["min_auc"])
    assert by_id[m3].push_reason.startswith("not pushed")
    [rb] = by_id[m2].rollbacks
    assert (rb.new_version, rb.to_version, rb.from_version, rb.model_id) == (4, 2, 3, m2)
    assert by_id[m4].pushed_version == "3" and by_id[m4].pushed_at_ms == 400

    served = lineage.serving(store, serving_dir, "p")
    assert (served.version, served.model_id, served.rollback_of, served.versions) == (4, m2, 2, [1, 2, 3, 4])
    assert [m.model_id for m in lineage.chain(store, "p", serving_dir=serving_dir)] == [m2, m1]
    assert [m.model_id for m in lineage.chain(store, "p")] == [m2, m1]  # newest push or rollback in MLMD
    assert [m.model_id for m in lineage.chain(store, "p", model_id=m3)] == [m3, m2, m1]
    # Another folder with the same version numbers (a moved home): matched on the version alone.
    moved = str(tmp_path / "moved")
    os.makedirs(os.path.join(moved, "3"))
    assert lineage.serving(store, moved, "p").model_id == m4
    assert lineage.serving(store, str(tmp_path / "nothing"), "p").version is None


def test_plot_of_synthetic_records(tmp_path):
    from pipelines.lineage_plot import plot_lineage

    rb = lineage.RollbackRecord(new_version=4, to_version=2, from_version=3, at_ms=95_000, model_id=2,
                                pushed_model_id=9)
    records = [record(1, created_ms=10_000, pushed_version="1", pushed_at_ms=20_000),
               record(2, base=1, created_ms=40_000, base_auc=0.69, pushed_version="2", pushed_at_ms=50_000,
                      rollbacks=[rb]),
               record(3, base=2, created_ms=60_000, blessed=False, auc=0.38, base_auc=0.36),
               record(4, base=2, created_ms=80_000, base_auc=0.7, auc=0.72, pushed_version="3", pushed_at_ms=90_000),
               record(5, created_ms=100_000, blessed=None, auc=None)]
    path = str(tmp_path / "lineage.png")
    assert plot_lineage(records, path, serving_model_id=2) == path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    plot_lineage([], str(tmp_path / "empty.png"))
    assert os.path.getsize(str(tmp_path / "empty.png")) > 0


# -- e2e: the real store of the five cycles -------------------------------------------------------


@pytest.fixture(scope="module")
def run(continuous_run):
    return continuous_run


def expected_serving(run):
    """(version, model id) serving now: cycle 5's model if it was pushed, else the rollback's (cycle 2's)."""
    r2, r5 = run["reports"][1], run["reports"][4]
    if r5.pushed_version is not None:
        return int(r5.pushed_version), r5.model_id
    return run["rolled"].new_version, r2.model_id


def expected_chain(reports, model_id):
    """The chain computed from the CycleReports' start reasons ("warm start from model N")."""
    base = {r.model_id: (int(r.start_reason.rsplit(" ", 1)[-1]) if r.start == "warm" else None)
            for r in reports if r.trained}
    chain = []
    while model_id is not None:
        chain.append(model_id)
        model_id = base[model_id]
    return chain


@e2e
def test_models_match_the_cycle_reports(run):
    config, reports = run["config"], run["reports"]
    records = lineage.models(config.metadata_connection, config.pipeline_name)
    assert [m.model_id for m in records] == [r.model_id for r in reports]
    for m, r in zip(records, reports):
        assert (m.start, m.start_reason, m.blessed, m.blessing_reason) == (r.start, r.start_reason, r.blessed, r.reason)
        assert m.pushed_version == r.pushed_version and m.pushed_at_ms == r.pushed_at_ms
        assert m.max_event_time_ms == r.newest_event_ms and m.newest_span == max(r.spans)
        # The blessing's float properties are rounded by MLMD's SQLite; verdict_json keeps every digit.
        assert m.candidate_auc == pytest.approx(r.candidate_auc, abs=1e-5)
        assert (m.baseline_auc is None) == (r.baseline_auc is None)
        if r.baseline_auc is not None:
            assert m.baseline_auc == pytest.approx(r.baseline_auc, abs=1e-5)
        assert m.candidate.example_count >= 400 and math.isfinite(m.candidate.log_loss)
        assert m.trained_examples == sum(m.trained_examples_by_role.values()) > 0
        assert m.train_wall_seconds > 0 and m.final_loss > 0 and set(r.spans) <= set(m.trained_spans)
        assert m.eval_span == max(r.spans)
    assert records[0].base_model_id is None and records[1].base_model_id == reports[0].model_id
    assert records[1].baseline_model_id == reports[0].model_id
    # The gate's paired tests against the baseline are on the record (none for the first model).
    assert records[0].gate_tests == {}
    auc_test = records[1].gate_tests["auc"]
    assert auc_test["test"] == "DeLong" and auc_test["lower"] <= auc_test["diff"] <= auc_test["upper"]
    assert 0.0 <= auc_test["p_value"] <= 1.0 and records[1].gate_tests["log_loss"]["test"] == "paired t"


@e2e
def test_rejected_poisoned_model_has_its_reason_and_no_push(run):
    config, reports = run["config"], run["reports"]
    by_id = {m.model_id: m for m in lineage.models(config.metadata_connection, config.pipeline_name)}
    rejected = by_id[reports[2].model_id]
    assert rejected.blessed is False and rejected.blessing_reason == reports[2].reason
    assert rejected.blessing_reason.startswith("not blessed") and "min_auc" in rejected.failed_checks
    assert rejected.pushed_version is None and rejected.pushed_at_ms is None and not rejected.rollbacks
    assert rejected.push_reason.startswith("not pushed")
    assert rejected.candidate_auc < 0.5 and rejected.baseline_model_id == reports[1].model_id


@e2e
def test_serving_and_the_chain_from_it(run, tmp_path):
    config, reports, rolled = run["config"], run["reports"], run["rolled"]
    version, model_id = expected_serving(run)
    served = lineage.serving(config.metadata_connection, config.serving_dir, config.pipeline_name)
    assert (served.version, served.model_id) == (version, model_id)
    assert served.rollback_of == (None if reports[4].pushed_version else rolled.to_version)

    chain = lineage.chain(config.metadata_connection, config.pipeline_name, serving_dir=config.serving_dir)
    assert [m.model_id for m in chain] == expected_chain(reports, model_id)
    assert chain[-1].start == "cold" and all(m.start == "warm" for m in chain[:-1])
    assert [m.base_model_id for m in chain] == [m.model_id for m in chain[1:]] + [None]
    # MLMD alone agrees: the newest push or rollback names the same model.
    assert [m.model_id for m in lineage.chain(config.metadata_connection, config.pipeline_name)] == \
        [m.model_id for m in chain]

    # Cycle 4's chain skips the rejected model and reaches the first cold start.
    chain4 = lineage.chain(config.metadata_connection, config.pipeline_name, model_id=reports[3].model_id)
    assert [m.model_id for m in chain4] == [reports[3].model_id, reports[1].model_id, reports[0].model_id]

    # Right after the rollback (the serving folder as it was then), cycle 2's model served.
    then = tmp_path / "serving_after_rollback"
    then.mkdir()
    for v in range(1, rolled.new_version + 1):
        os.symlink(os.path.join(config.serving_dir, str(v)), str(then / str(v)))
    after = lineage.serving(config.metadata_connection, str(then), config.pipeline_name)
    assert (after.version, after.model_id, after.rollback_of) == (rolled.new_version, reports[1].model_id, 2)
    by_id = {m.model_id: m for m in lineage.models(config.metadata_connection, config.pipeline_name)}
    [rb] = by_id[reports[1].model_id].rollbacks
    assert (rb.new_version, rb.to_version, rb.from_version) == (rolled.new_version, 2, rolled.from_version)


@e2e
def test_status_totals_freshness_and_last_cycle(run):
    from pipelines.metadata import open_store, prop

    config, reports = run["config"], run["reports"]
    before_ms = int(time.time() * 1000)
    st = lineage.status(config)
    after_ms = int(time.time() * 1000)
    store = open_store(config.metadata_connection)
    examples = [a for a in store.get_artifacts_by_type("Examples") if "committed_state" in a.custom_properties]
    assert st.spans_ingested == len(examples) == sum(len(r.spans) for r in reports)
    assert st.events_ingested == sum(prop(a, "event_count") for a in examples) == sum(r.events for r in reports)
    assert st.late_events == sum(prop(a, "late_count") for a in examples)
    assert st.dead_lettered_events == sum(prop(a, "dead_letter_count") for a in examples)
    assert st.newest_span == max(reports[-1].spans)

    version, model_id = expected_serving(run)
    assert (st.serving_version, st.serving_model_id) == (version, model_id)
    [model] = store.get_artifacts_by_id([model_id])
    newest = prop(model, "max_event_time_ms")
    assert st.newest_event_ms == newest and st.freshness_seconds > 0
    assert (before_ms - newest) / 1000 <= st.freshness_seconds <= (after_ms - newest) / 1000
    assert lineage.status(config, now_ms=newest + 90_500).freshness_seconds == pytest.approx(90.5)

    r5 = reports[4]
    cycle = st.last_cycle
    assert cycle.outcome == ("pushed" if r5.pushed_version else "rejected")
    assert (cycle.model_id, cycle.spans, cycle.events, cycle.start) == (r5.model_id, r5.spans, r5.events, "cold")
    assert r5.reason in cycle.reason and cycle.run_id == r5.run_id
    assert (st.models_trained, st.models_blessed, st.models_rejected) == (
        len(reports), sum(1 for r in reports if r.blessed), sum(1 for r in reports if r.blessed is False))
    assert st.pushes == sum(1 for r in reports if r.pushed_version) and st.rollbacks == 1

    text = lineage.format_status(st)
    assert f"version {version}, model {model_id}" in text and "controller:  not running" in text
    assert f"{st.spans_ingested} spans, {st.events_ingested:,} events" in text


@e2e
def test_status_reports_the_controller_lock(run):
    config = run["config"]
    lock = os.path.join(config.home, lineage.CONTROLLER_LOCK_FILE)
    assert not os.path.exists(lock)
    try:
        write_lock(config.home, os.getpid())
        assert lineage.status(config).controller.describe() == f"running (pid {os.getpid()})"
        pid = dead_pid()
        write_lock(config.home, pid)
        assert f"stale lock from pid {pid}" in lineage.format_status(lineage.status(config))
    finally:
        os.remove(lock)
    assert lineage.status(config).controller.state == "not running"


@e2e
def test_cli_status_and_lineage(run, tmp_path, capsys):
    from pipelines.cli import main

    config, reports = run["config"], run["reports"]
    version, model_id = expected_serving(run)

    assert main(["status", "--home", config.home, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data.pop("servers") == []  # no `driftline serve` runs for this home (tests/test_serve_status.py)
    assert data.pop("online_decision") is None  # no online comparison ran (tests/test_online_record.py)
    st = lineage.status(config).to_dict()
    for volatile in ("now_ms", "freshness_seconds"):
        assert data.pop(volatile) > 0 and st.pop(volatile) > 0
    assert data == st and data["serving"]["model_id"] == model_id

    assert main(["status", "--home", config.home]) == 0
    assert f"serving:     version {version}, model {model_id}" in capsys.readouterr().out

    assert main(["lineage", "--home", config.home, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["model_id"] for m in data["chain"]] == expected_chain(reports, model_id)
    assert data["serving"]["version"] == version
    head = data["chain"][0]
    assert head["blessed"] is True and head["candidate"]["auc"] == pytest.approx(
        next(r.candidate_auc for r in reports if r.model_id == model_id), abs=1e-5)

    plot = str(tmp_path / "lineage.png")
    assert main(["lineage", "--home", config.home, "--model", str(reports[3].model_id), "--plot", plot]) == 0
    out = capsys.readouterr().out
    assert f"Lineage of model {reports[3].model_id}" in out and "back to its last cold start: 3 models" in out
    assert "rollback: version" in out and reports[1].reason in out
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(plot) > 10_000

    assert main(["lineage", "--home", config.home, "--model", "999999"]) == 1
    assert "model 999999 is not a model of pipeline" in capsys.readouterr().err
    assert main(["lineage", "--home", str(tmp_path / "empty")]) == 1
    assert "no ML Metadata" in capsys.readouterr().err
    assert main(["status", "--home", str(tmp_path / "empty")]) == 0
    assert "nothing has run here yet" in capsys.readouterr().out
