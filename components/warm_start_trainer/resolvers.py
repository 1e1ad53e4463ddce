"""A resolver strategy for the replay window: the newest spans in ML Metadata, minus quarantined ones."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set

from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.dsl.components.common import resolver

_INPUT = metadata_store_pb2.Event.INPUT
_OUTPUT = metadata_store_pb2.Event.OUTPUT


def _has_key(event, key: str) -> bool:
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
                if e.type == _INPUT and _has_key(e, "examples")]
    if not consumed:
        return set()
    by_execution: Dict[int, Set[int]] = {}
    for e in consumed:
        by_execution.setdefault(e.execution_id, set()).add(e.artifact_id)
    outputs = [e for e in store.get_events_by_execution_ids(list(by_execution))
               if e.type == _OUTPUT and _has_key(e, "model")]
    model_to_examples = {e.artifact_id: by_execution[e.execution_id] for e in outputs}
    if not model_to_examples:
        return set()
    rejected: Set[int] = set()
    for blessing in store.get_artifacts_by_type("ModelBlessing"):
        props = blessing.custom_properties
        if "current_model_id" not in props or "blessed" not in props:
            continue
        model_id = props["current_model_id"].int_value
        if model_id in model_to_examples and props["blessed"].int_value != 1:
            rejected |= model_to_examples[model_id]
    return rejected


class LatestSpansStrategy(resolver.ResolverStrategy):
    """Resolves the `Examples` of the newest `num_spans` spans (one artifact per span, the newest version).

    Use with an unbound channel so that it sees every earlier run::

        Resolver(strategy_class=LatestSpansStrategy, config={"num_spans": 4},
                 examples=Channel(type=Examples)).with_id("replay_resolver")

    Spans whose own candidate was refused by the gate are left out
    (`rejected_spans`). It may also see spans of the current run; the trainer
    only replays spans older than the ones it trains on. An empty result is
    normal early on.
    """

    def __init__(self, num_spans: int = 3, exclude_rejected: bool = True):
        if num_spans < 0:
            raise ValueError(f"num_spans must be >= 0, got {num_spans}")
        self._num_spans = num_spans
        self._exclude_rejected = exclude_rejected

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        result = {}
        for key, artifacts in input_dict.items():
            quarantined = rejected_spans(store, [a.id for a in artifacts]) if self._exclude_rejected else set()
            newest_per_span: Dict[int, types.Artifact] = {}
            for a in artifacts:
                if a.id in quarantined:
                    continue
                kept = newest_per_span.get(a.span)
                if kept is None or (a.version, a.id) > (kept.version, kept.id):
                    newest_per_span[a.span] = a
            spans = sorted(newest_per_span)[-self._num_spans:] if self._num_spans else []
            result[key] = [newest_per_span[s] for s in spans]
        return result
