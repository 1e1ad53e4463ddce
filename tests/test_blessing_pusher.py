"""BlessingPusher: its executor on real artifacts, the component in a LocalDagRunner pipeline with SQLite
ML Metadata, and `rollback_and_record` writing a rollback into ML Metadata."""
import hashlib
import os

import pytest

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from components.blessing_pusher import serving
from test_serving import save_model, served_scale, tree

PIPELINE = "pusher-test"
PUSHER_ID = "BlessingPusher"


@pytest.fixture(scope="module")
def model_roots(tmp_path_factory):
    """Model artifact folders in the stock layout: the SavedModel under `<uri>/Format-Serving`."""
    root = tmp_path_factory.mktemp("model_artifacts")
    out = {}
    for s in (1, 2):
        uri = root / f"model{s}"
        save_model(str(uri / "Format-Serving"), float(s))
        out[s] = str(uri)
    return out


def make_artifacts(tmp_path, model_uri, blessing_props, latency_props=None):
    from tfx.types import standard_artifacts

    model = standard_artifacts.Model()
    model.uri = model_uri
    model.id = 41
    input_dict = {"model": [model]}
    for key, props, artifact_id, kind, markers in (
            ("model_blessing", blessing_props, 42, standard_artifacts.ModelBlessing, ("BLESSED", "NOT_BLESSED")),
            ("infra_blessing", latency_props, 43, standard_artifacts.InfraBlessing,
             ("INFRA_BLESSED", "INFRA_NOT_BLESSED"))):
        if props is None:
            continue
        blessing = kind()
        blessing.uri = str(tmp_path / key)
        blessing.id = artifact_id
        os.makedirs(blessing.uri, exist_ok=True)
        with open(os.path.join(blessing.uri, markers[0] if props.get("blessed") == 1 else markers[1]), "w"):
            pass
        for k, v in props.items():
            if isinstance(v, int):
                blessing.set_int_custom_property(k, v)
            else:
                blessing.set_string_custom_property(k, v)
        input_dict[key] = [blessing]
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed_model")
    os.makedirs(pushed.uri)
    return input_dict, {"pushed_model": [pushed]}, pushed


def run_executor(input_dict, output_dict, serving_dir, keep=5):
    from components.blessing_pusher.executor import Executor

    Executor().Do(input_dict, output_dict, {"serving_dir": serving_dir, "keep_versions": keep})


def test_blessed_model_is_pushed_with_the_stock_and_driftline_properties(model_roots, tmp_path):
    sd = str(tmp_path / "serving")
    input_dict, output_dict, pushed = make_artifacts(tmp_path, model_roots[1],
                                                     {"blessed": 1, "current_model_id": 41, "reason": "auc 0.71"})
    run_executor(input_dict, output_dict, sd)
    assert serving.versions(sd) == [1]
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == os.path.join(sd, "1")
    assert pushed.get_string_custom_property("pushed_version") == "1"
    assert pushed.get_int_custom_property("model_id") == 41
    assert pushed.get_int_custom_property("pushed_at_ms") > 1_600_000_000_000
    reason = pushed.get_string_custom_property("reason")
    assert "pushed as version 1" in reason and "auc 0.71" in reason
    assert served_scale(os.path.join(sd, "1")) == 1.0


def test_retention_is_applied_after_a_push(model_roots, tmp_path):
    sd = str(tmp_path / "serving")
    for i in range(4):
        d = tmp_path / f"run{i}"
        d.mkdir()
        run_executor(*make_artifacts(d, model_roots[1], {"blessed": 1, "reason": "ok"})[:2], sd, keep=2)
    assert serving.versions(sd) == [3, 4]


def test_not_blessed_leaves_serving_untouched(model_roots, tmp_path):
    sd = str(tmp_path / "serving")
    serving.push(os.path.join(model_roots[1], "Format-Serving"), sd)
    before = tree(sd)
    input_dict, output_dict, pushed = make_artifacts(
        tmp_path, model_roots[2], {"blessed": 0, "reason": "auc 0.55 < min_auc 0.6"})
    run_executor(input_dict, output_dict, sd)  # does not raise: a no from the gate is not a failed run
    assert tree(sd) == before
    assert pushed.get_int_custom_property("pushed") == 0
    assert not pushed.has_custom_property("pushed_version")
    assert pushed.get_int_custom_property("model_id") == 41
    reason = pushed.get_string_custom_property("reason")
    assert "model_blessing" in reason and "auc 0.55 < min_auc 0.6" in reason


def test_latency_blessing_not_blessed_blocks_the_push(model_roots, tmp_path):
    sd = str(tmp_path / "serving")
    input_dict, output_dict, pushed = make_artifacts(
        tmp_path, model_roots[1], {"blessed": 1, "reason": "auc 0.71"},
        latency_props={"blessed": 0, "reason": "p99 latency 31 ms > 20 ms"})
    run_executor(input_dict, output_dict, sd)
    assert serving.versions(sd) == [] and not os.path.exists(os.path.join(sd, "1"))
    assert pushed.get_int_custom_property("pushed") == 0
    reason = pushed.get_string_custom_property("reason")
    assert "infra_blessing" in reason and "p99 latency 31 ms > 20 ms" in reason

    # Both blessed: pushed, and the reason carries both gates' reasons.
    d = tmp_path / "both"
    d.mkdir()
    input_dict, output_dict, pushed = make_artifacts(
        d, model_roots[1], {"blessed": 1, "reason": "auc 0.71"},
        latency_props={"blessed": 1, "reason": "p99 latency 12 ms"})
    run_executor(input_dict, output_dict, sd)
    assert serving.versions(sd) == [1]
    assert "p99 latency 12 ms" in pushed.get_string_custom_property("reason")


# ---------------------------------------------------------------------------
# The component in a real LocalDagRunner pipeline, then a rollback recorded in the same ML Metadata.


def run_pipeline(home, model_uri, blessing_props):
    # Direct imports rather than `tfx.v1`, which loads every stock component's extras too.
    from tfx.dsl.components.common.importer import Importer
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.types import standard_artifacts

    from components.blessing_pusher import BlessingPusher

    model = Importer(source_uri=model_uri, artifact_type=standard_artifacts.Model,
                     reimport=True).with_id("model_importer")
    blessing_uri = os.path.join(home, "blessings", hashlib.sha1(repr(blessing_props).encode()).hexdigest()[:8])
    os.makedirs(blessing_uri, exist_ok=True)
    blessing = Importer(source_uri=blessing_uri, artifact_type=standard_artifacts.ModelBlessing,
                        reimport=True, custom_properties=blessing_props).with_id("blessing_importer")
    pusher = BlessingPusher(model=model.outputs["result"], model_blessing=blessing.outputs["result"],
                            serving_dir=os.path.join(home, "serving"), keep_versions=5).with_id(PUSHER_ID)
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name=PIPELINE, pipeline_root=os.path.join(home, "root"), components=[model, blessing, pusher],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(os.path.join(home, "metadata.sqlite"))))


def custom(artifact, key):
    value = artifact.custom_properties[key]
    return getattr(value, value.WhichOneof("value"))


@pytest.fixture(scope="module")
def pipeline_home(model_roots, tmp_path_factory):
    """Three runs: model 1 blessed (pushed as 1), model 2 blessed (pushed as 2), model 2 not blessed."""
    home = str(tmp_path_factory.mktemp("pipeline_home"))
    run_pipeline(home, model_roots[1], {"blessed": 1, "reason": "auc 0.71 >= 0.6"})
    run_pipeline(home, model_roots[2], {"blessed": 1, "reason": "auc 0.73 >= 0.6"})
    run_pipeline(home, model_roots[2], {"blessed": 0, "reason": "auc 0.52 < min_auc 0.6"})
    return home


def pusher_outputs(store):
    from components.streaming_example_gen.committed_state import node_context_name

    context = store.get_context_by_type_and_name("node", node_context_name(PIPELINE, PUSHER_ID))
    return sorted((a for a in store.get_artifacts_by_context(context.id) if a.type == "PushedModel"),
                  key=lambda a: a.id)


@pytest.mark.e2e
def test_local_dag_runner_pushes_only_blessed_models_and_records_them(pipeline_home, model_roots):
    from ml_metadata.proto import metadata_store_pb2

    from pipelines.metadata import open_store

    sd = os.path.join(pipeline_home, "serving")
    assert serving.versions(sd) == [1, 2]
    assert served_scale(os.path.join(sd, "1")) == 1.0 and served_scale(os.path.join(sd, "2")) == 2.0

    store = open_store(os.path.join(pipeline_home, "metadata.sqlite"))
    first, second, third = pusher_outputs(store)
    assert all(a.state == metadata_store_pb2.Artifact.LIVE for a in (first, second, third))
    models = sorted(store.get_artifacts_by_type("Model"), key=lambda a: a.id)
    assert [m.uri for m in models] == [model_roots[1], model_roots[2], model_roots[2]]
    for pushed, version, model in ((first, "1", models[0]), (second, "2", models[1])):
        assert custom(pushed, "pushed") == 1
        assert custom(pushed, "pushed_version") == version
        assert custom(pushed, "pushed_destination") == os.path.join(sd, version)
        assert custom(pushed, "model_id") == model.id
        assert custom(pushed, "pushed_at_ms") > 0
        assert f"pushed as version {version}" in custom(pushed, "reason")
    assert custom(third, "pushed") == 0
    assert custom(third, "model_id") == models[2].id
    assert "auc 0.52 < min_auc 0.6" in custom(third, "reason")
    assert "pushed_version" not in third.custom_properties
    # The run that did not push completed: a gate's "no" is not a failed pipeline.
    [producer] = store.get_executions_by_id([e.execution_id for e in store.get_events_by_artifact_ids([third.id])
                                             if e.type == metadata_store_pb2.Event.OUTPUT])
    assert producer.last_known_state == metadata_store_pb2.Execution.COMPLETE


@pytest.mark.e2e
def test_rollback_is_recorded_in_ml_metadata(pipeline_home):
    from ml_metadata.proto import metadata_store_pb2

    from components.blessing_pusher.rollback import (PinError, current_pin, format_rollback, rollback_and_record,
                                                     unpin)
    from components.blessing_pusher.serving import RollbackError
    from pipelines.metadata import open_store

    sd = os.path.join(pipeline_home, "serving")
    db = os.path.join(pipeline_home, "metadata.sqlite")

    # A missing version: an error, and nothing written anywhere (serving folder and the SQLite file).
    def snapshot():
        with open(db, "rb") as f:
            return tree(sd), hashlib.sha256(f.read()).hexdigest(), os.stat(db).st_mtime_ns

    before = snapshot()
    with pytest.raises(RollbackError, match=f"version 7 does not exist in {sd}; available: 1, 2"):
        rollback_and_record(db, PIPELINE, sd, to_version=7)
    assert snapshot() == before

    result = rollback_and_record(db, PIPELINE, sd)  # to the version before the serving one
    assert (result.from_version, result.to_version, result.new_version) == (2, 1, 3)
    assert serving.versions(sd) == [1, 2, 3] and served_scale(os.path.join(sd, "3")) == 1.0

    store = open_store(db)
    first_push = pusher_outputs(store)[0]
    [execution] = store.get_executions_by_type("driftline.Rollback")
    assert execution.id == result.execution_id
    assert execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
    assert {k: v.int_value for k, v in execution.properties.items() if k != "at_ms"} == {
        "from_version": 2, "to_version": 1, "new_version": 3, "pinned_model_id": custom(first_push, "model_id")}
    assert execution.properties["at_ms"].int_value > 0
    pipeline_context = store.get_context_by_type_and_name("pipeline", PIPELINE)
    assert execution.id in [e.id for e in store.get_executions_by_context(pipeline_context.id)]

    events = store.get_events_by_execution_ids([execution.id])
    inputs = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.INPUT]
    outputs = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
    assert inputs == [first_push.id]
    assert outputs == [result.pushed_model_id]
    [new] = store.get_artifacts_by_id(outputs)
    assert store.get_artifact_types_by_id([new.type_id])[0].name == "PushedModel"
    assert new.uri == os.path.join(sd, "3") and new.state == metadata_store_pb2.Artifact.LIVE
    assert custom(new, "pushed") == 1
    assert custom(new, "pushed_version") == "3"
    assert custom(new, "pushed_destination") == os.path.join(sd, "3")
    assert custom(new, "rollback_of") == 1
    assert custom(new, "model_id") == custom(first_push, "model_id") == result.model_id
    assert new.id in [a.id for a in store.get_artifacts_by_context(pipeline_context.id)]

    text = format_rollback(result)
    assert "version 3 now serves the model of version 1" in text and f"execution {execution.id}" in text
    assert f"pinned: model {result.model_id}" in text and "until `driftline unpin`" in text
    pin = current_pin(store, PIPELINE)
    assert (pin.model_id, pin.execution_id, pin.to_version, pin.new_version) == (result.model_id, execution.id, 1, 3)
    assert current_pin(store, "another pipeline") is None

    # An explicit version: its input is the PushedModel that pushed it, here the pipeline's second push ...
    again = rollback_and_record(db, PIPELINE, sd, to_version=2)
    assert (again.from_version, again.to_version, again.new_version) == (3, 2, 4)
    assert served_scale(os.path.join(sd, "4")) == 2.0
    assert [e.artifact_id for e in store.get_events_by_execution_ids([again.execution_id])
            if e.type == metadata_store_pb2.Event.INPUT] == [pusher_outputs(store)[1].id]
    # ... and a version made by a rollback is found through the PushedModel the rollback recorded.
    third = rollback_and_record(db, PIPELINE, sd, to_version=3)
    assert (third.from_version, third.to_version, third.new_version) == (4, 3, 5)
    assert [e.artifact_id for e in store.get_events_by_execution_ids([third.execution_id])
            if e.type == metadata_store_pb2.Event.INPUT] == [new.id]
    assert third.model_id == custom(first_push, "model_id")
    assert len(store.get_executions_by_type("driftline.Rollback")) == 3
    # The newest rollback's model is pinned; an unpin ends it, recorded against that model.
    assert current_pin(store, PIPELINE).execution_id == third.execution_id
    ended = unpin(store, PIPELINE)
    assert ended.model_id == third.model_id and current_pin(store, PIPELINE) is None
    [record] = store.get_executions_by_type("driftline.Unpin")
    assert record.properties["pinned_model_id"].int_value == third.model_id
    assert [e.artifact_id for e in store.get_events_by_execution_ids([record.id])] == [third.model_id]
    assert record.id in [e.id for e in store.get_executions_by_context(pipeline_context.id)]
    with pytest.raises(PinError, match="no pin stands"):
        unpin(store, PIPELINE)
    # A later rollback pins again.
    fourth = rollback_and_record(db, PIPELINE, sd, to_version=4)
    assert current_pin(store, PIPELINE).model_id == fourth.model_id == custom(pusher_outputs(store)[1], "model_id")


def test_rollback_with_no_push_recorded_creates_the_context_and_still_records(model_roots, tmp_path):
    from ml_metadata.proto import metadata_store_pb2

    from components.blessing_pusher.rollback import format_rollback, rollback_and_record
    from pipelines.metadata import open_store

    sd = str(tmp_path / "serving")
    db = str(tmp_path / "mlmd" / "metadata.sqlite")
    for s in (1, 2):
        serving.push(os.path.join(model_roots[s], "Format-Serving"), sd)
    result = rollback_and_record(db, "fresh", sd, to_version=1)
    assert (result.from_version, result.to_version, result.new_version) == (2, 1, 3)
    assert result.model_id is None
    store = open_store(db)
    context = store.get_context_by_type_and_name("pipeline", "fresh")
    [execution] = store.get_executions_by_context(context.id)
    events = store.get_events_by_execution_ids([execution.id])
    assert [e.type for e in events] == [metadata_store_pb2.Event.OUTPUT]
    [new] = store.get_artifacts_by_id([events[0].artifact_id])
    assert custom(new, "rollback_of") == 1 and "model_id" not in new.custom_properties
    assert "model unknown" in format_rollback(result)
    # No model, no pin: the next cycles continue from the latest blessed model, and say so.
    assert "not pinned" in format_rollback(result) and "pinned_model_id" not in execution.properties
    from components.blessing_pusher.rollback import current_pin

    assert current_pin(store, "fresh") is None
