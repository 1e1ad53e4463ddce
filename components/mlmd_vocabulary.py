"""The ML Metadata vocabulary driftline shares: context and type names, states, property names, and
reading and writing custom properties with one NaN rule.

It sits below the components (it imports only ml_metadata's protos), so the
executors that write these properties and the pipelines/ readers that query
them (lineage, status, recovery, retention, failures) name them from one place
instead of repeating string literals that could drift apart.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from ml_metadata.proto import metadata_store_pb2

# Context types TFX gives a pipeline (named by the pipeline name), one run of it, and a node
# (named "<pipeline>.<node id>", see node_context_name).
PIPELINE_CONTEXT_TYPE = "pipeline"
PIPELINE_RUN_CONTEXT_TYPE = "pipeline_run"
NODE_CONTEXT_TYPE = "node"

# The node ids pipelines/pipeline.py gives the components; ML Metadata names a node's context after its
# id, so the readers (the resolvers, lineage, status, the controller) need them without importing TFX.
STREAMING_EXAMPLE_GEN_ID = "StreamingExampleGen"
TRANSFORM_ID = "Transform"
TRAINER_ID = "WarmStartTrainer"
EVALUATOR_ID = "Evaluator"
LATENCY_VALIDATOR_ID = "LatencyValidator"
PUSHER_ID = "BlessingPusher"
BASE_MODEL_RESOLVER_ID = "latest_blessed_model_resolver"
REPLAY_RESOLVER_ID = "replay_resolver"
# In a resumed cycle (pipelines.recovery), this resolver takes StreamingExampleGen's place.
RESUME_RESOLVER_ID = "untrained_spans_resolver"

# Artifacts that were published: PENDING / ABANDONED ones belong to runs that failed; retention moves
# LIVE ones through MARKED_FOR_DELETION to DELETED, keeping the record (and what it says still stands).
PUBLISHED_STATES = (metadata_store_pb2.Artifact.LIVE, metadata_store_pb2.Artifact.MARKED_FOR_DELETION,
                    metadata_store_pb2.Artifact.DELETED)

# Artifact type names (TFX's standard artifacts).
EXAMPLES_TYPE = "Examples"
MODEL_TYPE = "Model"
BLESSING_TYPE = "ModelBlessing"
INFRA_BLESSING_TYPE = "InfraBlessing"
PUSHED_MODEL_TYPE = "PushedModel"
TRANSFORM_GRAPH_TYPE = "TransformGraph"
# Execution type of an online-evaluation decision (components/online_evaluator/record.py).
ONLINE_DECISION_TYPE = "driftline.OnlineDecision"

# Custom properties read by more than the module that writes them.
COMMITTED_STATE_PROPERTY = "committed_state"  # Examples: the ingest run's committed stream position (JSON)
EVENT_COUNT_PROPERTY = "event_count"  # Examples
DEAD_LETTER_COUNT_PROPERTY = "dead_letter_count"  # Examples
MAX_EVENT_TIME_MS_PROPERTY = "max_event_time_ms"  # Examples, and the Model trained on them
BLESSED_PROPERTY = "blessed"  # ModelBlessing / InfraBlessing: int 1 / 0 (TFX's key)
CURRENT_MODEL_ID_PROPERTY = "current_model_id"  # ModelBlessing: the candidate's id (TFX's key)
REASON_PROPERTY = "reason"  # blessings and PushedModel: why, in words
EVAL_SPAN_PROPERTY = "eval_span"  # blessings: the span the candidate was judged on (the newest)
# Examples (join mode, online evaluation): each arm's shown impressions and successes per challenger (JSON,
# components/online_evaluator/arm_counts.py); what the controller feeds the comparison once per span.
ARM_COUNTS_PROPERTY = "arm_counts"
# ModelBlessing: every span whose eval split the candidate was judged on, carried ones included (JSON list)
EVAL_SPANS_PROPERTY = "eval_spans"
# ModelBlessing: int 1 when the verdict was "too little evidence" (its eval splits are carried), else 0
EVIDENCE_INSUFFICIENT_PROPERTY = "evidence_insufficient"
# Model: the spans whose eval splits were carried to its gate (JSON list), and what the gate scores it on
CARRIED_EVAL_SPANS_PROPERTY = "carried_eval_spans"
EVAL_INPUTS_PROPERTY = "eval_inputs"
# Model: the examples and the positive labels it trained on, per training role (JSON objects)
TRAINED_EXAMPLES_BY_ROLE_PROPERTY = "trained_examples_by_role"
TRAINED_POSITIVES_BY_ROLE_PROPERTY = "trained_positives_by_role"
# The training roles (components/warm_start_trainer/fn_args.py, TrainingInput.role) whose examples come from
# spans already vetted: judged by an earlier gate, or released after it found their data sound. Their label
# rate is the recent label rate the gate's label-shift check compares a span with.
VETTED_TRAINING_ROLES = ("previous_eval", "released_eval", "replay")

# The one NaN rule: a float property that is not a finite number (NaN, inf, or None when a metric could
# not be computed) is written as this, so every reader sees one "unknown" and MLMD never stores NaN.
UNKNOWN_FLOAT = -1.0


def node_context_name(pipeline_name: str, node_id: str) -> str:
    # The name TFX's compiler gives a node's context (compiler_utils.node_context_name).
    return f"{pipeline_name}.{node_id}"


def finite_or_unknown(value: Optional[float]) -> float:
    """`value` as a float, or UNKNOWN_FLOAT when it is None, NaN or infinite."""
    return UNKNOWN_FLOAT if value is None or math.isnan(value) or math.isinf(value) else float(value)


def set_custom_properties(artifact: Any, properties: Mapping[str, Any]) -> None:
    """Writes each value on a TFX artifact by its type: str, float (the NaN rule), else int."""
    for key, value in properties.items():
        if isinstance(value, str):
            artifact.set_string_custom_property(key, value)
        elif isinstance(value, float):
            artifact.set_float_custom_property(key, finite_or_unknown(value))
        else:
            artifact.set_int_custom_property(key, int(value))


def custom_property(artifact: metadata_store_pb2.Artifact, key: str):
    """The value of a custom property of an MLMD artifact (or execution), None when absent."""
    value = artifact.custom_properties.get(key)
    if value is None:
        return None
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def prop(artifact: metadata_store_pb2.Artifact, key: str, default=None):
    """A custom (or, failing that, a typed) property's value."""
    value = custom_property(artifact, key)
    if value is None and key in artifact.properties:
        v = artifact.properties[key]
        value = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return default if value is None else value
