"""Emitting a span is idempotent (issue #24): ML Metadata itself refuses a second publish of the same span from
the same committed position.

Two controllers that overlap (a lease lost during a pause, a misconfigured pair) can both read one committed
position and both emit the spans that follow it. StreamingExampleGen names each span's `Examples` after the
pipeline, the node, the span and the position the run started from (`executor.publish_key`); ML Metadata keeps
artifact names unique within a type, so the second publish fails as a whole: no second copy of the span, no
second committed state, the first run's artifacts untouched. The second controller is played here by a real
ingest run (TFX LocalDagRunner, Beam) whose driver is handed the committed position the first run started from,
exactly what a controller that read ML Metadata before the first one published would see. JoinExampleGen's spans
are named the same way, from both streams' start positions, and a second join run from the same committed state
is refused alike. Runs on the ML
Metadata back end the suite picks (`--metadata`), SQLite or MariaDB.
"""
from __future__ import annotations

import pytest

import ingest_helpers as H

PIPELINE = "idempotent"
SPAN_S = 600
S0 = H.BASE_MS // (SPAN_S * 1000)


def live_examples(store):
    """The store's LIVE Examples, oldest first."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    return sorted((a for a in store.get_artifacts_by_type("Examples") if a.state == pb.Artifact.LIVE),
                  key=lambda a: a.id)


@pytest.mark.e2e
def test_a_second_publish_of_the_same_span_from_the_same_position_is_refused(tmp_path, monkeypatch):
    from ml_metadata.proto import metadata_store_pb2 as pb

    from components.streaming_example_gen import driver, windowing
    from components.streaming_example_gen.committed_state import latest_committed_state
    from components.streaming_example_gen.executor import publish_key
    from pipelines.config import DriftlineConfig, SourceConfig, WindowConfig
    from pipelines.local_runner import run_ingest
    from pipelines.metadata import open_store

    config = DriftlineConfig(pipeline_name=PIPELINE, home=str(tmp_path / "home"),
                             source=SourceConfig(log_dir=str(tmp_path / "events")),
                             window=WindowConfig(span_seconds=SPAN_S, allowed_lateness_seconds=60))
    log = H.SyntheticLog(config.source.log_dir, seed=24)
    log.append(H.BASE_MS, minutes=25, per_minute=60)  # spans S0 and S0+1 close; S0+2 stays open
    run_ingest(config)

    store = open_store(config.metadata_connection)
    first = live_examples(store)
    assert [a.properties["span"].int_value for a in first] == [S0, S0 + 1]
    start = first[0].custom_properties["start_position"].string_value
    assert [a.name for a in first] == [publish_key(PIPELINE, "StreamingExampleGen", s, start) for s in (S0, S0 + 1)]
    committed, _ = latest_committed_state(store, PIPELINE, "StreamingExampleGen")

    # A second controller that read the committed position before the first run published it.
    monkeypatch.setattr(driver, "latest_committed_state", lambda *_: (windowing.CommittedState(), None))
    with pytest.raises(Exception) as refused:
        run_ingest(config)
    print(f"second publish refused: {type(refused.value).__name__}: {refused.value}")
    # SQLite says "UNIQUE constraint failed: Artifact.type_id, Artifact.name", MySQL "Duplicate entry".
    assert any(m in str(refused.value) for m in ("UNIQUE constraint failed", "Duplicate entry", "AlreadyExists"))

    store = open_store(config.metadata_connection)
    assert [(a.id, a.name) for a in live_examples(store)] == [(a.id, a.name) for a in first], \
        "a span was published twice"
    assert [a.properties["span"].int_value for a in store.get_artifacts_by_type("Examples")].count(S0) == 1
    monkeypatch.undo()
    assert latest_committed_state(store, PIPELINE, "StreamingExampleGen")[0] == committed
    examples_type = first[0].type_id

    def published_examples(execution):
        outputs = [ev.artifact_id for ev in store.get_events_by_execution_ids([execution.id])
                   if ev.type == pb.Event.OUTPUT]
        return any(a.type_id == examples_type for a in store.get_artifacts_by_id(outputs))

    complete = [e for e in store.get_executions()
                if e.last_known_state == pb.Execution.COMPLETE and published_examples(e)]
    assert len(complete) == 1, "only the first ingest run completed with spans"

    # From the position the first run committed, the next run publishes the next span as usual.
    log.append(H.BASE_MS + 25 * H.MINUTE_MS, minutes=10, per_minute=60)
    run_ingest(config)
    store = open_store(config.metadata_connection)
    assert [a.properties["span"].int_value for a in live_examples(store)] == [S0, S0 + 1, S0 + 2]


@pytest.mark.e2e
def test_a_second_publish_of_the_same_joined_span_from_the_same_positions_is_refused(tmp_path, monkeypatch):
    """JoinExampleGen's spans are named after both streams' start positions: the same refusal in join mode."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from components.streaming_example_gen import join_component
    from components.streaming_example_gen.committed_state import latest_committed_state_json
    from components.streaming_example_gen.executor import publish_key
    from join_helpers import simulated_join_pipeline
    from pipelines.local_runner import run_ingest
    from pipelines.metadata import open_store

    config = simulated_join_pipeline(str(tmp_path), PIPELINE)
    node = "StreamingExampleGen"  # join mode keeps the node id
    run_ingest(config)

    store = open_store(config.metadata_connection)
    first = live_examples(store)
    spans = [a.properties["span"].int_value for a in first]
    assert spans, "the first join run emitted no span: the test has nothing to repeat"
    start = first[0].custom_properties["start_position"].string_value
    assert '"imp_resume"' in start and '"out_resume"' in start, start
    committed = latest_committed_state_json(store, PIPELINE, node)[0]

    # A second controller that read the committed state before the first join run published its spans.
    monkeypatch.setattr(join_component, "latest_committed_state_json", lambda *_: (None, None))
    with pytest.raises(Exception) as refused:
        run_ingest(config)
    print(f"second publish refused: {type(refused.value).__name__}: {refused.value}")
    assert any(m in str(refused.value) for m in ("UNIQUE constraint failed", "Duplicate entry", "AlreadyExists"))
    monkeypatch.undo()

    store = open_store(config.metadata_connection)
    assert [(a.id, a.name) for a in live_examples(store)] == [(a.id, a.name) for a in first], \
        "a span was published twice"
    assert sorted(a.properties["span"].int_value for a in store.get_artifacts_by_type("Examples")) == spans
    assert latest_committed_state_json(store, PIPELINE, node)[0] == committed
    assert [a.name for a in first] == [publish_key(PIPELINE, node, s, start) for s in spans]
