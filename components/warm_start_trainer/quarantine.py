"""Which spans are quarantined: plain ML Metadata queries, no TFX, so light readers (retention) share them."""
from __future__ import annotations

from typing import Dict, Iterable, Set

from ml_metadata.proto import metadata_store_pb2

from components.mlmd_vocabulary import EVIDENCE_INSUFFICIENT_PROPERTY

_INPUT = metadata_store_pb2.Event.INPUT
_OUTPUT = metadata_store_pb2.Event.OUTPUT


def has_key(event, key: str) -> bool:
    """Whether an event's path names `key`. An artifact that was input under two keys of one
    execution (a span that was both new and, via the replay resolver, replayed) has one event
    whose path holds both keys."""
    return any(step.HasField("key") and step.key == key for step in event.path.steps)


def rejected_spans(store, examples_ids: Iterable[int]) -> Set[int]:
    """Ids of the `Examples` whose own cycle's candidate the gate refused.

    Lineage in MLMD: the Examples were the `examples` input of a trainer
    execution, whose output `Model` has a `ModelBlessing` with blessed == 0.
    Such data is quarantined: a poisoned span replayed at 10 % still poisons
    the next candidate. A refusal for too little evidence alone (the blessing's
    `evidence_insufficient` = 1) says nothing against the data: not quarantined
    (its eval split is carried, its train split trained: `training_inputs`).
    """
    examples_ids = list(examples_ids)
    if not examples_ids:
        return set()
    consumed = [e for e in store.get_events_by_artifact_ids(examples_ids)
                if e.type == _INPUT and has_key(e, "examples")]
    if not consumed:
        return set()
    by_execution: Dict[int, Set[int]] = {}
    for e in consumed:
        by_execution.setdefault(e.execution_id, set()).add(e.artifact_id)
    outputs = [e for e in store.get_events_by_execution_ids(list(by_execution))
               if e.type == _OUTPUT and has_key(e, "model")]
    model_to_examples = {e.artifact_id: by_execution[e.execution_id] for e in outputs}
    if not model_to_examples:
        return set()
    rejected: Set[int] = set()
    # Every state: a verdict stands after retention deleted the blessing's payload.
    for blessing in store.get_artifacts_by_type("ModelBlessing"):
        props = blessing.custom_properties
        if "current_model_id" not in props or "blessed" not in props:
            continue
        model_id = props["current_model_id"].int_value
        thin = EVIDENCE_INSUFFICIENT_PROPERTY in props and props[EVIDENCE_INSUFFICIENT_PROPERTY].int_value == 1
        if model_id in model_to_examples and props["blessed"].int_value != 1 and not thin:
            rejected |= model_to_examples[model_id]
    return rejected


# -- spans quarantined after failing cycles --------------------------------------------------------------
#
# Not the gate's quarantine above (data whose candidate was refused): these are spans on which
# `quarantine_after_failures` cycles in a row failed (a component raised), set aside so that the
# stream moves on. `pipelines/failures.py` writes the records; `driftline replay --span S` releases
# one. Every record is an execution attributed to the pipeline's context, taking the span's
# `Examples` as an INPUT under this key, so its state is the newest such execution.
FAILURE_EXECUTION_TYPE = "driftline.CycleFailure"
QUARANTINE_EXECUTION_TYPE = "driftline.SpanQuarantine"
REPLAY_EXECUTION_TYPE = "driftline.SpanReplay"
SPAN_EVENT_KEY = "span"


def _executions_of_type(store, type_name: str):
    from ml_metadata import errors as mlmd_errors

    try:
        return store.get_executions_by_type(type_name)
    except mlmd_errors.NotFoundError:  # the type is registered with the first record
        return []


def failed_span_states(store) -> Dict[int, str]:
    """{Examples id: "quarantined" or "released"} for every span ever quarantined after failures.

    "released": `driftline replay` let it be trained again after its last
    quarantine. Spans never quarantined are not in the map.
    """
    executions = {e.id: kind for kind, name in (("quarantined", QUARANTINE_EXECUTION_TYPE),
                                                 ("released", REPLAY_EXECUTION_TYPE))
                  for e in _executions_of_type(store, name)}
    if not executions:
        return {}
    newest: Dict[int, int] = {}
    for event in store.get_events_by_execution_ids(sorted(executions)):
        if event.type == _INPUT and has_key(event, SPAN_EVENT_KEY):
            newest[event.artifact_id] = max(newest.get(event.artifact_id, 0), event.execution_id)
    return {artifact_id: executions[execution_id] for artifact_id, execution_id in newest.items()}


def quarantined_after_failures(store) -> Set[int]:
    """Ids of the `Examples` quarantined now because cycles over them kept failing."""
    return {a for a, state in failed_span_states(store).items() if state == "quarantined"}
