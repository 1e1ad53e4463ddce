"""`driftline rollback [--to VERSION]`: roll serving back, and record the rollback in ML Metadata.

ML Metadata is the single source of truth (invariant 1), so a rollback is
not only a change of the serving folder: it is an Execution of type
`driftline.Rollback`, attributed to the pipeline's context, that consumes
the `PushedModel` which first pushed the target version and produces a new
`PushedModel` for the new serving version.

A rollback also **pins** the model it rolled back to: the execution carries
`pinned_model_id`. While a pin stands, the pipeline's base model (warm
start) and the evaluator's baseline are the pinned model, not the latest
blessed one (`resolvers.PinnedOrLatestBlessedModelStrategy`), so the next
cycle cannot quietly continue, and push over, the model just rolled back
from: a candidate is pushed only if it beats the pinned model. A
`driftline.Unpin` execution (`driftline unpin`) ends the pin. The pin lives
only in ML Metadata: the newest of the pipeline's pinning rollbacks and
unpins decides (`current_pin`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

from ml_metadata import errors as mlmd_errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.blessing_pusher import serving
from components.blessing_pusher.serving import RollbackError, RollbackResult  # noqa: F401  (re-exported)
from components.mlmd_store import MetadataTarget, describe, open_store
from components.mlmd_store import pipeline_context, pushed_model_type_id
from components.mlmd_vocabulary import PIPELINE_CONTEXT_TYPE, PUSHED_MODEL_TYPE

ROLLBACK_EXECUTION_TYPE = "driftline.Rollback"
UNPIN_EXECUTION_TYPE = "driftline.Unpin"
# Property of a driftline.Rollback execution (and of a driftline.Unpin: the pin it ended).
PINNED_MODEL_PROPERTY = "pinned_model_id"
PIN_EVENT_KEY = "model"  # event path key of the Model an unpin ends the pin of
EVENT_KEY = "pushed_model"  # event path key of both the input and the output event

_INT = metadata_store_pb2.INT


class RollbackRecordError(RuntimeError):
    """Serving was rolled back, but recording that in ML Metadata failed."""


class PinError(RuntimeError):
    """A pin cannot be ended or used; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Pin:
    """A standing pin: `model_id` is the base model and the baseline until it is unpinned."""

    model_id: int
    execution_id: int  # the driftline.Rollback that set it
    to_version: Optional[int]  # the serving version whose model was pinned
    new_version: Optional[int]  # the version the rollback made
    at_ms: Optional[int]

    def describe(self) -> str:
        return (f"model {self.model_id} (rollback to version {self.to_version}, served as version "
                f"{self.new_version}): the base model and the baseline until `driftline unpin`")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _norm(path: str) -> str:
    if serving.is_local(path):
        path = path[len("file://"):] if path.startswith("file://") else path
        return os.path.normpath(os.path.abspath(path))
    return path.rstrip("/")


def _custom(artifact: metadata_store_pb2.Artifact, key: str):
    if key not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[key]
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def find_pushed_model(store: metadata_store.MetadataStore, serving_dir: str,
                      version: int) -> Optional[metadata_store_pb2.Artifact]:
    """The newest `PushedModel` with pushed=1 that put `version` into `serving_dir`, or None."""
    try:
        candidates = store.get_artifacts_by_type(PUSHED_MODEL_TYPE)
    except mlmd_errors.NotFoundError:
        return None
    expected = _norm(serving.version_dir(serving_dir, version))
    matches = []
    for a in candidates:
        if _custom(a, serving.PUSHED_PROPERTY) != 1:
            continue
        pushed_version = _custom(a, serving.PUSHED_VERSION_PROPERTY)
        if pushed_version is None or str(pushed_version) != str(version):
            continue
        destination = _custom(a, serving.PUSHED_DESTINATION_PROPERTY) or a.uri
        if _norm(destination) != expected:
            continue  # the same version number in another serving folder
        matches.append(a)
    return max(matches, key=lambda a: (a.create_time_since_epoch, a.id)) if matches else None


def _execution_type_id(store: metadata_store.MetadataStore) -> int:
    execution_type = metadata_store_pb2.ExecutionType(name=ROLLBACK_EXECUTION_TYPE)
    for name in ("from_version", "to_version", "new_version", "at_ms", PINNED_MODEL_PROPERTY):
        execution_type.properties[name] = _INT
    return store.put_execution_type(execution_type, can_add_fields=True, can_omit_fields=True)


def _unpin_type_id(store: metadata_store.MetadataStore) -> int:
    execution_type = metadata_store_pb2.ExecutionType(name=UNPIN_EXECUTION_TYPE)
    for name in (PINNED_MODEL_PROPERTY, "at_ms"):
        execution_type.properties[name] = _INT
    return store.put_execution_type(execution_type, can_add_fields=True, can_omit_fields=True)


def _event(kind: int) -> metadata_store_pb2.Event:
    event = metadata_store_pb2.Event(type=kind)
    event.path.steps.add().key = EVENT_KEY
    event.path.steps.add().index = 0
    return event


def record_rollback(store: metadata_store.MetadataStore, pipeline_name: str, serving_dir: str,
                    result: RollbackResult, target: Optional[metadata_store_pb2.Artifact],
                    at_ms: Optional[int] = None) -> RollbackResult:
    """Writes one `driftline.Rollback` execution with its input and output `PushedModel`, in one transaction."""
    at_ms = int(time.time() * 1000) if at_ms is None else at_ms
    execution = metadata_store_pb2.Execution(type_id=_execution_type_id(store),
                                             last_known_state=metadata_store_pb2.Execution.COMPLETE)
    for name, value in (("from_version", result.from_version), ("to_version", result.to_version),
                        ("new_version", result.new_version), ("at_ms", at_ms)):
        execution.properties[name].int_value = int(value)
    execution.custom_properties["serving_dir"].string_value = serving_dir

    destination = result.destination or serving.version_dir(serving_dir, result.new_version)
    model_id = _custom(target, serving.MODEL_ID_PROPERTY) if target is not None else None
    if model_id is not None:
        # The pin, in the same transaction as the rollback: never one without the other.
        execution.properties[PINNED_MODEL_PROPERTY].int_value = int(model_id)
    pushed = metadata_store_pb2.Artifact(type_id=pushed_model_type_id(store), uri=destination,
                                         state=metadata_store_pb2.Artifact.LIVE)
    props = pushed.custom_properties
    props[serving.PUSHED_PROPERTY].int_value = 1
    props[serving.PUSHED_DESTINATION_PROPERTY].string_value = destination
    props[serving.PUSHED_VERSION_PROPERTY].string_value = str(result.new_version)
    props[serving.ROLLBACK_OF_PROPERTY].int_value = result.to_version
    props[serving.PUSHED_AT_MS_PROPERTY].int_value = at_ms
    props[serving.REASON_PROPERTY].string_value = (
        f"rollback: version {result.new_version} serves the model of version {result.to_version} "
        f"(was version {result.from_version})")
    if model_id is not None:
        props[serving.MODEL_ID_PROPERTY].int_value = int(model_id)

    artifacts_and_events = []
    if target is not None:
        artifacts_and_events.append((target, _event(metadata_store_pb2.Event.INPUT)))
    artifacts_and_events.append((pushed, _event(metadata_store_pb2.Event.OUTPUT)))
    context = pipeline_context(store, pipeline_name)
    execution_id, artifact_ids, _ = store.put_execution(execution, artifacts_and_events, [context])
    return dataclasses.replace(result, destination=destination, execution_id=execution_id,
                               pushed_model_id=artifact_ids[-1],
                               model_id=int(model_id) if model_id is not None else None)


def _in_pipeline(store: metadata_store.MetadataStore, execution_id: int, pipeline_name: str) -> bool:
    return any(c.name == pipeline_name and store.get_context_types_by_id([c.type_id])[0].name == PIPELINE_CONTEXT_TYPE
               for c in store.get_contexts_by_execution(execution_id))


def _executions(store: metadata_store.MetadataStore, type_name: str):
    try:
        return store.get_executions_by_type(type_name)
    except mlmd_errors.NotFoundError:
        return []


def current_pin(store: metadata_store.MetadataStore, pipeline_name: str) -> Optional[Pin]:
    """The pin that stands for `pipeline_name`, or None.

    The newest (by id: MLMD ids grow with every write) of the pipeline's
    rollbacks that pinned a model and its unpins decides. A rollback to a
    version whose model ML Metadata does not know pins nothing and leaves an
    earlier pin as it was.
    """
    unpins = _executions(store, UNPIN_EXECUTION_TYPE)
    unpin_ids = {e.id for e in unpins}
    candidates = [e for e in _executions(store, ROLLBACK_EXECUTION_TYPE) if PINNED_MODEL_PROPERTY in e.properties]
    for e in sorted(candidates + unpins, key=lambda e: e.id, reverse=True):
        if not _in_pipeline(store, e.id, pipeline_name):
            continue
        if e.id in unpin_ids:
            return None
        p = e.properties
        return Pin(model_id=p[PINNED_MODEL_PROPERTY].int_value, execution_id=e.id,
                   to_version=p["to_version"].int_value if "to_version" in p else None,
                   new_version=p["new_version"].int_value if "new_version" in p else None,
                   at_ms=p["at_ms"].int_value if "at_ms" in p else None)
    return None


def unpin(store: metadata_store.MetadataStore, pipeline_name: str, at_ms: Optional[int] = None) -> Pin:
    """Ends the standing pin with a `driftline.Unpin` execution; returns the pin it ended.

    From the next cycle on, the base model and the baseline are the latest
    blessed model again. PinError when no pin stands.
    """
    pin = current_pin(store, pipeline_name)
    if pin is None:
        raise PinError(f"no pin stands for pipeline {pipeline_name!r}: nothing to unpin (a rollback with "
                       "`driftline rollback` pins the model it rolls back to)")
    at_ms = int(time.time() * 1000) if at_ms is None else at_ms
    execution = metadata_store_pb2.Execution(type_id=_unpin_type_id(store),
                                             last_known_state=metadata_store_pb2.Execution.COMPLETE)
    execution.properties[PINNED_MODEL_PROPERTY].int_value = pin.model_id
    execution.properties["at_ms"].int_value = at_ms
    execution.custom_properties["rollback_execution_id"].int_value = pin.execution_id
    artifacts_and_events = []
    model = store.get_artifacts_by_id([pin.model_id])
    if model:
        event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.INPUT)
        event.path.steps.add().key = PIN_EVENT_KEY
        event.path.steps.add().index = 0
        artifacts_and_events.append((model[0], event))
    store.put_execution(execution, artifacts_and_events, [pipeline_context(store, pipeline_name)])
    return pin


def rollback_and_record(metadata: MetadataTarget, pipeline_name: str, serving_dir: str,
                        to_version: Optional[int] = None) -> RollbackResult:
    """Rolls serving back (see `serving.rollback`) and records it, and the pin of its model, in ML Metadata
    (`metadata`: a pipeline's `config.metadata_connection`, or a SQLite path).

    Call it holding the home's controller lock (`driftline rollback` does), so
    that no cycle runs meanwhile.

    `to_version=None` means the version just below the serving one. A target
    that does not exist raises RollbackError before anything is written: not
    the serving folder, not ML Metadata (which is not even opened).
    """
    if serving.is_local(serving_dir) and not serving_dir.startswith("file://"):
        serving_dir = os.path.abspath(serving_dir)
    plan = serving.plan_rollback(serving_dir, to_version)  # RollbackError: nothing touched
    store = open_store(metadata)
    target = find_pushed_model(store, serving_dir, plan["to_version"])
    result = serving.rollback(serving_dir, plan["to_version"])
    try:
        return record_rollback(store, pipeline_name, serving_dir, result, target)
    except Exception as e:  # serving already switched; say so rather than hide it
        raise RollbackRecordError(
            f"serving in {serving_dir} was rolled back (version {result.new_version} now serves the model of "
            f"version {result.to_version}), but recording it in ML Metadata at {describe(metadata)} failed: {e}") from e


def format_rollback(result: RollbackResult) -> str:
    """What `driftline rollback` prints."""
    lines = [f"Rolled back: version {result.new_version} now serves the model of version {result.to_version} "
             f"(was serving version {result.from_version})."]
    if result.destination:
        lines.append(f"  serving folder: {result.destination}")
    if result.execution_id is not None:
        model = f"model {result.model_id}" if result.model_id is not None else "model unknown (no PushedModel " \
            f"in ML Metadata for version {result.to_version})"
        lines.append(f"  recorded in ML Metadata: execution {result.execution_id} ({ROLLBACK_EXECUTION_TYPE}), "
                     f"PushedModel {result.pushed_model_id}, {model}")
        if result.model_id is not None:
            lines.append(f"  pinned: model {result.model_id} is the base model and the baseline of every cycle, and "
                         "a candidate must beat it to be pushed, until `driftline unpin`")
        else:
            lines.append("  not pinned: ML Metadata does not know the model of that version, so the next cycles "
                         "continue from the latest blessed model")
    return "\n".join(lines)
