"""Which spans are quarantined: plain ML Metadata queries, no TFX, so light readers (retention) share them."""
from __future__ import annotations

from typing import Dict, Iterable, Set

from ml_metadata.proto import metadata_store_pb2

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
    the next candidate.
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
        if model_id in model_to_examples and props["blessed"].int_value != 1:
            rejected |= model_to_examples[model_id]
    return rejected
