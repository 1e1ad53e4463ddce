"""Which published spans no judged model trained on: what a resumed cycle trains.

Plain functions over ML Metadata (no TFX import), below the component: the
resumed cycle's resolver (`resolvers.UntrainedSpansStrategy`) reads them, and
so do pipelines/recovery.py (which re-exports them), the controller, failures
and retention.
"""
from __future__ import annotations

from typing import Dict, List, Set

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.mlmd_vocabulary import (BLESSING_TYPE, COMMITTED_STATE_PROPERTY, CURRENT_MODEL_ID_PROPERTY,
                                        NODE_CONTEXT_TYPE, PUBLISHED_STATES, STREAMING_EXAMPLE_GEN_ID, TRAINER_ID,
                                        node_context_name)
from components.warm_start_trainer.quarantine import failed_span_states, has_key

_PUBLISHED = PUBLISHED_STATES


def untrained_spans(store: metadata_store.MetadataStore, pipeline_name: str) -> List[metadata_store_pb2.Artifact]:
    """The LIVE spans newer than every judged span that no judged model trained on, oldest first.

    A span is judged once it was the `examples` input (a new span, not a
    replayed one) of a COMPLETE trainer execution whose `Model` has a
    `ModelBlessing`, blessed or not. Spans at or before the newest judged span
    are never returned: older spans that only an ingest run published stay
    replay material, as before.

    Spans quarantined after failing cycles (`pipelines/failures.py`) are left
    out, so a span that keeps failing does not hold back the ones after it;
    a span `driftline replay` released is returned until it is judged, even
    when newer spans were judged meanwhile.
    """
    ingest = store.get_context_by_type_and_name(NODE_CONTEXT_TYPE,
                                                node_context_name(pipeline_name, STREAMING_EXAMPLE_GEN_ID))
    if ingest is None:
        return []
    spans = [a for a in store.get_artifacts_by_context(ingest.id)
             if a.state == metadata_store_pb2.Artifact.LIVE and COMMITTED_STATE_PROPERTY in a.custom_properties]
    if not spans:
        return []
    judged = judged_span_ids(store, pipeline_name)
    frontier = None
    if judged:
        frontier = max(a.properties["span"].int_value for a in store.get_artifacts_by_id(sorted(judged)))
    failed = failed_span_states(store)
    return sorted((a for a in spans if a.id not in judged and failed.get(a.id) != "quarantined"
                   and (frontier is None or a.properties["span"].int_value > frontier
                        or failed.get(a.id) == "released")),
                  key=lambda a: (a.properties["span"].int_value, a.id))


def judged_span_ids(store: metadata_store.MetadataStore, pipeline_name: str) -> Set[int]:
    """Ids of the Examples that COMPLETE trainer executions took as new spans and whose model the gate judged."""
    trainer = store.get_context_by_type_and_name(NODE_CONTEXT_TYPE, node_context_name(pipeline_name, TRAINER_ID))
    if trainer is None:
        return set()
    executions = [e.id for e in store.get_executions_by_context(trainer.id)
                  if e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
    if not executions:
        return set()
    consumed: Dict[int, Set[int]] = {}
    model_of: Dict[int, int] = {}
    for event in store.get_events_by_execution_ids(executions):
        if event.type == metadata_store_pb2.Event.INPUT and has_key(event, "examples"):
            consumed.setdefault(event.execution_id, set()).add(event.artifact_id)
        elif event.type == metadata_store_pb2.Event.OUTPUT and has_key(event, "model"):
            model_of[event.artifact_id] = event.execution_id
    judged_models = set()
    for blessing in _artifacts_of_type(store, BLESSING_TYPE):
        if blessing.state in _PUBLISHED and CURRENT_MODEL_ID_PROPERTY in blessing.custom_properties:
            judged_models.add(blessing.custom_properties[CURRENT_MODEL_ID_PROPERTY].int_value)
    result: Set[int] = set()
    for model_id, execution_id in model_of.items():
        if model_id in judged_models:
            result |= consumed.get(execution_id, set())
    return result


def _artifacts_of_type(store: metadata_store.MetadataStore, type_name: str) -> List[metadata_store_pb2.Artifact]:
    try:
        return store.get_artifacts_by_type(type_name)
    except Exception:  # an unknown type: nothing of it yet
        return []
