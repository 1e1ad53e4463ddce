"""The replay window's resolver, on a real SQLite ML Metadata store with hand-built lineage."""
from ml_metadata.proto import metadata_store_pb2 as pb
from tfx.types import standard_artifacts

from components.warm_start_trainer.resolvers import LatestSpansStrategy, rejected_spans
from pipelines.metadata import open_store


def lineage(tmp_path):
    """Spans 1-4; span 3's candidate was refused by the gate."""
    store = open_store(str(tmp_path / "m.sqlite"))
    t_ex = store.put_artifact_type(pb.ArtifactType(name="Examples"))
    t_model = store.put_artifact_type(pb.ArtifactType(name="Model"))
    t_bless = store.put_artifact_type(pb.ArtifactType(name="ModelBlessing"))
    t_train = store.put_execution_type(pb.ExecutionType(name="WarmStartTrainer"))
    examples = {}
    for span in (1, 2, 3, 4):
        [aid] = store.put_artifacts([pb.Artifact(type_id=t_ex, uri=f"/s{span}", state=pb.Artifact.LIVE)])
        examples[span] = aid
    for span in (1, 2, 3):
        [eid] = store.put_executions([pb.Execution(type_id=t_train, last_known_state=pb.Execution.COMPLETE)])
        [mid] = store.put_artifacts([pb.Artifact(type_id=t_model, uri=f"/m{span}")])
        new = pb.Event(artifact_id=examples[span], execution_id=eid, type=pb.Event.INPUT)
        if span == 3:
            # The replay resolver may run after this cycle's ExampleGen and offer the new span
            # as replay too: TFX then records one event whose path holds both input keys.
            new.path.steps.add().key = "replay_examples"
        new.path.steps.add().key = "examples"
        events = [new]
        if span > 1:  # the earlier span was replayed: an input under another key
            replay = pb.Event(artifact_id=examples[span - 1], execution_id=eid, type=pb.Event.INPUT)
            replay.path.steps.add().key = "replay_examples"
            events.append(replay)
        out = pb.Event(artifact_id=mid, execution_id=eid, type=pb.Event.OUTPUT)
        out.path.steps.add().key = "model"
        store.put_events(events + [out])
        blessing = pb.Artifact(type_id=t_bless, uri=f"/b{span}")
        blessing.custom_properties["current_model_id"].int_value = mid
        blessing.custom_properties["blessed"].int_value = 0 if span == 3 else 1
        store.put_artifacts([blessing])
    return store, examples


def artifact(aid, span):
    a = standard_artifacts.Examples()
    a.id, a.span, a.version, a.uri = aid, span, 0, f"/s{span}"
    return a


def test_rejected_spans_follow_lineage_to_the_blessing(tmp_path):
    store, examples = lineage(tmp_path)
    assert rejected_spans(store, examples.values()) == {examples[3]}
    assert rejected_spans(store, []) == set()


def test_resolver_keeps_the_newest_spans_without_quarantined_ones(tmp_path):
    store, examples = lineage(tmp_path)
    arts = [artifact(examples[s], s) for s in (1, 2, 3, 4)]
    got = LatestSpansStrategy(num_spans=3).resolve_artifacts(store, {"examples": arts})["examples"]
    assert [a.span for a in got] == [1, 2, 4]
    got = LatestSpansStrategy(num_spans=3, exclude_rejected=False).resolve_artifacts(store, {"examples": arts})
    assert [a.span for a in got["examples"]] == [2, 3, 4]
    assert LatestSpansStrategy(num_spans=0).resolve_artifacts(store, {"examples": arts}) == {"examples": []}
