"""ML Metadata access for driftline: the connection and the queries over ingested spans.

Everything driftline reports about a pipeline comes from here, read from MLMD,
never from side files.
"""
from __future__ import annotations

import dataclasses
import json
from typing import List, Optional, Tuple

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.mlmd_vocabulary import (NODE_CONTEXT_TYPE, PIPELINE_RUN_CONTEXT_TYPE, PUBLISHED_STATES,
                                        node_context_name, prop)  # noqa: F401  (prop: re-exported)
from components.mlmd_vocabulary import custom_property as _prop

# The node ids of pipelines.pipeline live in components/mlmd_vocabulary.py (the resolvers read them too),
# re-exported here so that light readers of MLMD (lineage, status, the controller) need not import TFX.
from components.mlmd_vocabulary import (BASE_MODEL_RESOLVER_ID, EVALUATOR_ID,  # noqa: F401
                                        LATENCY_VALIDATOR_ID, PUSHER_ID, REPLAY_RESOLVER_ID, RESUME_RESOLVER_ID,
                                        STREAMING_EXAMPLE_GEN_ID, TRAINER_ID, TRANSFORM_ID)
from components.mlmd_store import (connection_config, describe, open_store, sqlite_connection_config,  # noqa: F401
                                   store_exists)  # (re-exported)

_PUBLISHED_STATES = PUBLISHED_STATES


@dataclasses.dataclass(frozen=True)
class SpanRecord:
    """One published `Examples` artifact of a StreamingExampleGen, as MLMD holds it."""

    artifact_id: int
    uri: str
    span: int
    event_count: int
    train_count: int
    eval_count: int
    late_count: int
    dead_letter_count: int
    min_event_time_ms: int
    max_event_time_ms: int
    span_start_ms: int
    span_end_ms: int
    start_position: str
    end_position: str
    ingest_wall_seconds: float
    dead_letter_uri: str
    create_time_ms: int
    # Retention deleted the TFRecords; the record and its counts stay.
    payload_deleted: bool = False
    # Of dead_letter_count, the events refused for their event time; and the repeated event ids kept out.
    future_count: int = 0
    too_late_count: int = 0
    duplicate_count: int = 0
    # JoinExampleGen's spans only (None / empty for StreamingExampleGen's): each stream's watermark when the
    # span was emitted, the outcomes attributed to its impressions, their event times at 0 %, 5 %, ... 100 %
    # (click-to-serving freshness runs from them), and the outcomes dead-lettered as late or orphan.
    impressions_watermark_ms: Optional[int] = None
    outcomes_watermark_ms: Optional[int] = None
    attributed_count: Optional[int] = None
    outcome_time_quantiles_ms: Tuple[int, ...] = ()
    late_outcome_count: int = 0
    orphan_outcome_count: int = 0

    @property
    def joined(self) -> bool:
        return self.impressions_watermark_ms is not None or self.outcomes_watermark_ms is not None


def _watermark(a: metadata_store_pb2.Artifact, name: str) -> Optional[int]:
    value = _prop(a, name)
    return None if value is None or value < 0 else int(value)


def _quantiles(a: metadata_store_pb2.Artifact) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in json.loads(_prop(a, "outcome_time_quantiles_ms") or "[]"))
    except (ValueError, TypeError):
        return ()


def ingested_spans(store: metadata_store.MetadataStore, pipeline_name: str,
                   node_id: str = STREAMING_EXAMPLE_GEN_ID) -> List[SpanRecord]:
    """Every span the node has published, oldest first."""
    context = store.get_context_by_type_and_name(NODE_CONTEXT_TYPE, node_context_name(pipeline_name, node_id))
    if context is None:
        return []
    rows = []
    for a in store.get_artifacts_by_context(context.id):
        if a.state not in _PUBLISHED_STATES:
            continue
        if "committed_state" not in a.custom_properties:
            continue
        rows.append(SpanRecord(
            artifact_id=a.id, uri=a.uri, span=a.properties["span"].int_value,
            event_count=_prop(a, "event_count") or 0, train_count=_prop(a, "train_count") or 0,
            eval_count=_prop(a, "eval_count") or 0, late_count=_prop(a, "late_count") or 0,
            dead_letter_count=_prop(a, "dead_letter_count") or 0,
            min_event_time_ms=_prop(a, "min_event_time_ms"), max_event_time_ms=_prop(a, "max_event_time_ms"),
            span_start_ms=_prop(a, "span_start_ms"), span_end_ms=_prop(a, "span_end_ms"),
            start_position=_prop(a, "start_position") or "", end_position=_prop(a, "end_position") or "",
            ingest_wall_seconds=float(_prop(a, "ingest_wall_seconds") or 0.0),
            dead_letter_uri=_prop(a, "dead_letter_uri") or "", create_time_ms=a.create_time_since_epoch,
            payload_deleted=a.state != metadata_store_pb2.Artifact.LIVE,
            future_count=_prop(a, "future_count") or 0, too_late_count=_prop(a, "too_late_count") or 0,
            duplicate_count=_prop(a, "duplicate_count") or 0,
            impressions_watermark_ms=_watermark(a, "impressions_watermark_ms"),
            outcomes_watermark_ms=_watermark(a, "outcomes_watermark_ms"),
            attributed_count=_prop(a, "attributed_count"), outcome_time_quantiles_ms=_quantiles(a),
            late_outcome_count=_prop(a, "late_outcome_count") or 0,
            orphan_outcome_count=_prop(a, "orphan_outcome_count") or 0))
    return sorted(rows, key=lambda r: (r.span, r.artifact_id))


def describe_position(position_json: Optional[str]) -> str:
    """segment@offset for the event log, topic[partition:offset ...] for Kafka."""
    from components.streaming_example_gen.windowing import frontier_from_json_value

    if not position_json:
        return "-"
    return str(frontier_from_json_value(json.loads(position_json)))


# INTERNAL_OUTPUT: what a resolver node resolved (the resumed spans of a resumed cycle).
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT,
                  metadata_store_pb2.Event.INTERNAL_OUTPUT)


def latest_run_context(store: metadata_store.MetadataStore) -> Optional[metadata_store_pb2.Context]:
    runs = store.get_contexts_by_type(PIPELINE_RUN_CONTEXT_TYPE)
    return max(runs, key=lambda c: c.id) if runs else None


def node_of_execution(store: metadata_store.MetadataStore, execution_id: int, pipeline_name: str) -> Optional[str]:
    prefix = pipeline_name + "."
    for ctx in store.get_contexts_by_execution(execution_id):
        if ctx.name.startswith(prefix) and store.get_context_types_by_id([ctx.type_id])[0].name == NODE_CONTEXT_TYPE:
            return ctx.name[len(prefix):]
    return None


def run_outputs(store: metadata_store.MetadataStore, pipeline_name: str,
                run_context: metadata_store_pb2.Context) -> dict:
    """{node_id: {"state": execution state name, "outputs": {key: [Artifact]}}} for one pipeline run."""
    result = {}
    executions = store.get_executions_by_context(run_context.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    artifact_ids = sorted({ev.artifact_id for ev in events if ev.type in _OUTPUT_EVENTS})
    artifacts = {a.id: a for a in store.get_artifacts_by_id(artifact_ids)} if artifact_ids else {}
    for execution in executions:
        node = node_of_execution(store, execution.id, pipeline_name)
        if node is None:
            continue
        outputs: dict = {}
        for ev in events:
            if ev.execution_id == execution.id and ev.type in _OUTPUT_EVENTS and ev.artifact_id in artifacts:
                key = ev.path.steps[0].key if ev.path.steps else ""
                outputs.setdefault(key, []).append(artifacts[ev.artifact_id])
        result[node] = {"state": metadata_store_pb2.Execution.State.Name(execution.last_known_state),
                        "outputs": outputs, "execution_id": execution.id}
    return result
