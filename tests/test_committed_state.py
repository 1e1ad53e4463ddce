"""The committed position is read from a real SQLite ML Metadata store."""
from ml_metadata.proto import metadata_store_pb2

from components.event_log import Position
from components.streaming_example_gen.committed_state import latest_committed_state
from components.streaming_example_gen.windowing import CommittedState
from pipelines.metadata import open_store


def make_store(tmp_path):
    store = open_store(str(tmp_path / "m.sqlite"))
    examples_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Examples"))
    ctx_type = store.put_context_type(metadata_store_pb2.ContextType(name="node"))
    [ctx_id] = store.put_contexts([metadata_store_pb2.Context(type_id=ctx_type, name="p.StreamingExampleGen")])
    return store, examples_type, ctx_id


def put(store, type_id, ctx, state_enum, committed=None):
    a = metadata_store_pb2.Artifact(type_id=type_id, uri="x", state=state_enum)
    if committed is not None:
        a.custom_properties["committed_state"].string_value = committed.to_json()
    [aid] = store.put_artifacts([a])
    store.put_attributions_and_associations([metadata_store_pb2.Attribution(artifact_id=aid, context_id=ctx)], [])
    return aid


def test_no_context_means_the_initial_state(tmp_path):
    store = open_store(str(tmp_path / "m.sqlite"))
    assert latest_committed_state(store, "p", "StreamingExampleGen") == (CommittedState(), None)


def test_newest_published_artifact_wins_and_pending_ones_are_ignored(tmp_path):
    store, t, ctx = make_store(tmp_path)
    A = metadata_store_pb2.Artifact
    s1 = CommittedState(end=Position("seg", 10), resume=Position("seg", 5), last_span=1, max_event_time_ms=100)
    s2 = CommittedState(end=Position("seg", 20), resume=Position("seg", 20), last_span=3, max_event_time_ms=300)
    put(store, t, ctx, A.DELETED, s1)
    newest = put(store, t, ctx, A.LIVE, s2)
    put(store, t, ctx, A.PENDING)  # a run that died before publishing
    put(store, t, ctx, A.ABANDONED, CommittedState(last_span=99))
    assert latest_committed_state(store, "p", "StreamingExampleGen") == (s2, newest)
    # Another node's artifacts are not ours.
    assert latest_committed_state(store, "p", "OtherNode") == (CommittedState(), None)


def test_state_behind_a_long_run_of_unpublished_outputs_is_found(tmp_path):
    store, t, ctx = make_store(tmp_path)
    s1 = CommittedState(end=Position("seg", 10), resume=Position("seg", 10), last_span=1, max_event_time_ms=100)
    committed = put(store, t, ctx, metadata_store_pb2.Artifact.LIVE, s1)
    for _ in range(100):
        put(store, t, ctx, metadata_store_pb2.Artifact.PENDING)
    assert latest_committed_state(store, "p", "StreamingExampleGen") == (s1, committed)
