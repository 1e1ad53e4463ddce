"""Reads the committed stream position from ML Metadata.

ML Metadata is the only record of how far ingestion got: every published
`Examples` artifact carries the run's committed state as a custom property,
so the newest one is the truth. There is no side file to disagree with it.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.mlmd_vocabulary import (COMMITTED_STATE_PROPERTY, EXAMPLES_TYPE,  # noqa: F401  (re-exported)
                                        NODE_CONTEXT_TYPE, PUBLISHED_STATES, node_context_name)
from components.streaming_example_gen import windowing

# PENDING outputs belong to runs that never published; retention marks old
# artifacts DELETED, but what they committed still stands.
_COMMITTED_STATES = PUBLISHED_STATES


def latest_committed_state(store: metadata_store.MetadataStore, pipeline_name: str,
                           node_id: str) -> Tuple[windowing.CommittedState, Optional[int]]:
    """The state committed by the newest published run of one StreamingExampleGen node.

    Returns the state and the id of the artifact it was read from (None before
    the first run).
    """
    text, artifact_id = latest_committed_state_json(store, pipeline_name, node_id)
    return (windowing.CommittedState() if text is None else windowing.CommittedState.from_json(text)), artifact_id


def latest_committed_state_json(store: metadata_store.MetadataStore, pipeline_name: str,
                                node_id: str) -> Tuple[Optional[str], Optional[int]]:
    """The committed-state JSON of the newest published run of a node (a stream's or a join's), and the
    id of the artifact it was read from; (None, None) before the first run."""
    context = store.get_context_by_type_and_name(NODE_CONTEXT_TYPE, node_context_name(pipeline_name, node_id))
    if context is None:
        return None, None
    # Newest first; one published run's artifacts all carry the same state, so
    # the first committed one found is the answer. The bounded query covers
    # the usual case; only a long run of never-published outputs needs the rest.
    for limit in (64, None):
        options = metadata_store.ListOptions(limit=limit, order_by=metadata_store.OrderByField.ID, is_asc=False)
        artifacts = store.get_artifacts_by_context(context.id, list_options=options)
        for artifact in artifacts:
            if artifact.state in _COMMITTED_STATES and COMMITTED_STATE_PROPERTY in artifact.custom_properties:
                return artifact.custom_properties[COMMITTED_STATE_PROPERTY].string_value, artifact.id
        if limit is not None and len(artifacts) < limit:
            break
    return None, None


def recent_run_span_uris(store: metadata_store.MetadataStore, pipeline_name: str, node_id: str,
                         runs: int) -> List[str]:
    """URIs of the live `Examples` published by the newest `runs` ingest runs: the dedup's horizon.

    By run, not by span number: a retry arrives soon after its original in wall time, so one of the
    last runs read the original, but a late original lands in the first span its run emitted, which
    can be several spans back when that run caught up on many. The artifacts of one run carry the
    same committed state. A span whose payload retention deleted cannot be checked; retention keeps
    the newest cycles' artifacts, more than the default horizon.
    """
    if runs < 1:
        return []
    context = store.get_context_by_type_and_name(NODE_CONTEXT_TYPE, node_context_name(pipeline_name, node_id))
    if context is None:
        return []
    uris: List[str] = []
    states: List[str] = []
    # Newest first; one run publishes a bounded number of spans, so a page of artifacts is the usual need.
    for limit in (64 * runs, None):
        options = metadata_store.ListOptions(limit=limit, order_by=metadata_store.OrderByField.ID, is_asc=False)
        artifacts = store.get_artifacts_by_context(context.id, list_options=options)
        uris, states = [], []
        for artifact in artifacts:
            if artifact.state not in _COMMITTED_STATES or COMMITTED_STATE_PROPERTY not in artifact.custom_properties:
                continue  # never published
            state = artifact.custom_properties[COMMITTED_STATE_PROPERTY].string_value
            if state not in states:
                if len(states) == runs:
                    return sorted(uris)
                states.append(state)
            if artifact.state == metadata_store_pb2.Artifact.LIVE:
                uris.append(artifact.uri)
        if limit is not None and len(artifacts) < limit:
            break
    return sorted(uris)
