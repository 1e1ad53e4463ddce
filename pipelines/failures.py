"""Failed cycles, and spans quarantined after failing cycles, recorded in ML Metadata.

A cycle that raises (a broker timeout, a GCS error, a component that fails)
is recorded as an execution of type `driftline.CycleFailure`, attributed to
the pipeline's context like a `driftline.Rollback`, with the error (type and
message), the failures in a row, when, and the spans it was working on as
INPUT events (key "span"): the spans published but not trained yet
(`recovery.untrained_spans`) right after the failure, which are those of a
resumed cycle, or those the failed cycle itself published before it died.
A failure before anything was published (ingestion could not read the
source) involves no span; the same error again, with no successful run in
between, updates the previous record (its `repeats` and `at_ms`) instead of
adding one per retry, so a broker that is down for a day leaves one record.

A span on which `controller.quarantine_after_failures` cycles in a row
failed is **quarantined**: a `driftline.SpanQuarantine` execution takes it
as input, with the reason. `recovery.untrained_spans` (and so the resumed
cycle's resolver, and `due`) then leaves it out and the stream moves on, the
replay window leaves it out too, and retention keeps its payload. Nothing is
lost: `driftline replay --span S` records a `driftline.SpanReplay` that
releases it, and a resumed cycle trains it; if that keeps failing, it is
quarantined again after as many failures. (Not the gate's quarantine in
components/warm_start_trainer/quarantine.py, of spans whose candidate the
gate refused; that module reads both.)

"Failures in a row" is read from ML Metadata, not kept in memory: the
previous record's count plus one, unless a pipeline run completed in full
after it. Plain ML Metadata, no TFX.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, List, Optional

from ml_metadata import errors as mlmd_errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.mlmd_store import pipeline_context
from components.streaming_example_gen.committed_state import NODE_CONTEXT_TYPE, node_context_name
from components.warm_start_trainer.quarantine import (FAILURE_EXECUTION_TYPE, QUARANTINE_EXECUTION_TYPE,
                                                     REPLAY_EXECUTION_TYPE, SPAN_EVENT_KEY, failed_span_states,
                                                     has_key)
from components.mlmd_vocabulary import PIPELINE_CONTEXT_TYPE, PIPELINE_RUN_CONTEXT_TYPE  # noqa: F401  (re-exported)
from pipelines.config import DriftlineConfig
from pipelines.metadata import STREAMING_EXAMPLE_GEN_ID, open_store, prop

# A message is kept whole up to this length (a TFX error can carry a long traceback text).
MAX_MESSAGE_CHARS = 2000
_DONE = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
_STRING, _INT = metadata_store_pb2.STRING, metadata_store_pb2.INT

_FAILURE_PROPERTIES = {"pipeline_name": _STRING, "error_type": _STRING, "error": _STRING, "spans": _STRING,
                       "consecutive": _INT, "repeats": _INT, "first_at_ms": _INT, "at_ms": _INT, "resumed": _INT,
                       "trigger": _STRING, "pid": _INT}
_SPAN_RECORD_PROPERTIES = {"pipeline_name": _STRING, "span": _INT, "failures": _INT, "reason": _STRING,
                           "at_ms": _INT}


class NotQuarantined(ValueError):
    """`replay` was asked for a span that is not quarantined; the message names those that are."""


@dataclasses.dataclass(frozen=True)
class FailureRecord:
    """One `driftline.CycleFailure` (repeats > 1: the same span-less error again, coalesced)."""

    execution_id: int
    at_ms: int
    first_at_ms: int
    error_type: str
    error: str
    spans: List[int]
    consecutive: int
    repeats: int
    resumed: bool
    trigger: str

    def describe(self) -> str:
        spans = f" (spans {', '.join(map(str, self.spans))})" if self.spans else " (no span involved)"
        again = f", {self.repeats} times since {_utc(self.first_at_ms)}" if self.repeats > 1 else ""
        return f"{self.error_type}: {_first_line(self.error)}{spans}{again}"


@dataclasses.dataclass(frozen=True)
class QuarantinedSpan:
    """A span quarantined after `failures` failing cycles in a row; `driftline replay --span` releases it."""

    span: int
    artifact_id: int
    failures: int
    reason: str
    at_ms: int


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What `record_failure` wrote: the record, and the spans it quarantined now."""

    record: FailureRecord
    quarantined: List[QuarantinedSpan]


def error_text(error: BaseException) -> str:
    """The message of an error, bounded; the type name when it has none."""
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + " [...]"


def record_failure(config: DriftlineConfig, error: BaseException, *, resumed: bool = False, trigger: str = "",
                   store: Optional[metadata_store.MetadataStore] = None,
                   now_ms: Optional[int] = None) -> Recorded:
    """Records a failed cycle and quarantines the spans that have now failed too often; see the module doc.

    Call it while holding the home's controller lock, right after the cycle raised.
    """
    from pipelines.recovery import untrained_spans

    store = store or open_store(config.metadata_connection)
    name = config.pipeline_name
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    spans = untrained_spans(store, name)
    previous = last_failure(store, name)
    fresh = previous is None or succeeded_since(store, name, previous.at_ms)
    consecutive = 1 if fresh else previous.consecutive + 1
    error_type, message = type(error).__name__, error_text(error)
    if (not spans and previous is not None and not fresh and not previous.spans
            and (previous.error_type, previous.error) == (error_type, message)):
        [execution] = store.get_executions_by_id([previous.execution_id])
        execution.properties["repeats"].int_value = previous.repeats + 1
        execution.properties["consecutive"].int_value = consecutive
        execution.properties["at_ms"].int_value = now_ms
        store.put_executions([execution])
        return Recorded(dataclasses.replace(previous, repeats=previous.repeats + 1, consecutive=consecutive,
                                            at_ms=now_ms), [])
    execution = metadata_store_pb2.Execution(type_id=_execution_type(store, FAILURE_EXECUTION_TYPE,
                                                                     _FAILURE_PROPERTIES),
                                             last_known_state=metadata_store_pb2.Execution.FAILED)
    values = {"pipeline_name": name, "error_type": error_type, "error": message,
              "spans": json.dumps([_span(a) for a in spans]), "consecutive": consecutive, "repeats": 1,
              "first_at_ms": now_ms, "at_ms": now_ms, "resumed": int(resumed), "trigger": trigger, "pid": os.getpid()}
    _set_properties(execution, values)
    execution_id, _, _ = store.put_execution(execution, [(a, _input_event(i)) for i, a in enumerate(spans)],
                                             [pipeline_context(store, name)])
    record = FailureRecord(execution_id=execution_id, at_ms=now_ms, first_at_ms=now_ms, error_type=error_type,
                           error=message, spans=[_span(a) for a in spans], consecutive=consecutive, repeats=1,
                           resumed=resumed, trigger=trigger)
    limit = config.controller.quarantine_after_failures
    quarantined = []
    for artifact in spans:
        failures = failures_since_release(store, artifact.id)
        if failures >= limit:
            reason = (f"{failures} cycles in a row failed on it (quarantine after {limit}); the last: "
                      f"{error_type}: {_first_line(message)}")
            quarantined.append(_record_span(store, name, QUARANTINE_EXECUTION_TYPE, artifact, failures, reason,
                                            now_ms))
    return Recorded(record, quarantined)


def release(config: DriftlineConfig, span: int, store: Optional[metadata_store.MetadataStore] = None,
            now_ms: Optional[int] = None) -> List[QuarantinedSpan]:
    """Records a `driftline.SpanReplay` for each quarantined `Examples` of `span`: the next resumed cycle trains it.

    Raises NotQuarantined (nothing written) when the span is not quarantined.
    """
    store = store or open_store(config.metadata_connection)
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    held = quarantined_spans(store, config.pipeline_name)
    matching = [q for q in held if q.span == span]
    if not matching:
        listed = ", ".join(str(q.span) for q in held) or "none"
        raise NotQuarantined(f"span {span} is not quarantined in pipeline {config.pipeline_name!r} "
                             f"(quarantined spans: {listed}); `driftline status` lists them")
    artifacts = store.get_artifacts_by_id([q.artifact_id for q in matching])
    released = []
    for artifact, q in zip(artifacts, matching):
        reason = f"released by `driftline replay` (pid {os.getpid()}) after: {q.reason}"
        released.append(_record_span(store, config.pipeline_name, REPLAY_EXECUTION_TYPE, artifact, q.failures,
                                     reason, now_ms))
    return released


# -- reading ----------------------------------------------------------------------------------------------


def last_failure(store: metadata_store.MetadataStore, pipeline_name: str) -> Optional[FailureRecord]:
    """The newest `driftline.CycleFailure` of the pipeline, or None."""
    rows = [e for e in _executions(store, FAILURE_EXECUTION_TYPE) if prop(e, "pipeline_name") == pipeline_name]
    if not rows:
        return None
    e = max(rows, key=lambda r: r.id)
    return FailureRecord(execution_id=e.id, at_ms=int(prop(e, "at_ms", 0)),
                         first_at_ms=int(prop(e, "first_at_ms", prop(e, "at_ms", 0))),
                         error_type=prop(e, "error_type", ""), error=prop(e, "error", ""),
                         spans=json.loads(prop(e, "spans", "[]")), consecutive=int(prop(e, "consecutive", 1)),
                         repeats=int(prop(e, "repeats", 1)), resumed=bool(prop(e, "resumed", 0)),
                         trigger=prop(e, "trigger", ""))


def consecutive_failures(store: metadata_store.MetadataStore, pipeline_name: str,
                         last: Optional[FailureRecord] = None) -> int:
    """Failed cycles since the last pipeline run that completed in full (0: the newest attempt succeeded)."""
    last = last if last is not None else last_failure(store, pipeline_name)
    if last is None or succeeded_since(store, pipeline_name, last.at_ms):
        return 0
    return last.consecutive


def succeeded_since(store: metadata_store.MetadataStore, pipeline_name: str, at_ms: int) -> bool:
    """Whether a run of the pipeline that started after `at_ms` completed every execution it ran."""
    pipeline = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
    if pipeline is None:
        return False
    try:
        runs = store.get_contexts_by_type(PIPELINE_RUN_CONTEXT_TYPE)
    except mlmd_errors.NotFoundError:
        return False
    for run in sorted((r for r in runs if r.create_time_since_epoch > at_ms), key=lambda r: r.id, reverse=True):
        executions = store.get_executions_by_context(run.id)
        if not executions or any(e.last_known_state not in _DONE for e in executions):
            continue
        if any(c.id == pipeline.id for c in store.get_contexts_by_execution(executions[0].id)):
            return True
    return False


def failures_since_release(store: metadata_store.MetadataStore, artifact_id: int) -> int:
    """Failed cycles that involved this span since `driftline replay` last released it (or ever)."""
    events = [e for e in store.get_events_by_artifact_ids([artifact_id])
              if e.type == metadata_store_pb2.Event.INPUT and has_key(e, SPAN_EVENT_KEY)]
    if not events:
        return 0
    kinds = {}
    for name in (FAILURE_EXECUTION_TYPE, REPLAY_EXECUTION_TYPE):
        type_id = _type_id(store, name)
        if type_id is not None:
            kinds[type_id] = name
    executions = store.get_executions_by_id(sorted({e.execution_id for e in events}))
    released = max((e.id for e in executions if kinds.get(e.type_id) == REPLAY_EXECUTION_TYPE), default=0)
    return sum(1 for e in executions if kinds.get(e.type_id) == FAILURE_EXECUTION_TYPE and e.id > released)


def quarantined_spans(store: metadata_store.MetadataStore, pipeline_name: str) -> List[QuarantinedSpan]:
    """The pipeline's spans quarantined now after failing cycles, by span."""
    ids = {a for a, state in failed_span_states(store).items() if state == "quarantined"}
    ingest = store.get_context_by_type_and_name(NODE_CONTEXT_TYPE,
                                                node_context_name(pipeline_name, STREAMING_EXAMPLE_GEN_ID))
    if not ids or ingest is None:
        return []
    ours = {a.id for a in store.get_artifacts_by_context(ingest.id)} & ids
    records = {}
    for e in _executions(store, QUARANTINE_EXECUTION_TYPE):
        if prop(e, "pipeline_name") != pipeline_name:
            continue
        for event in store.get_events_by_execution_ids([e.id]):
            if event.artifact_id in ours and has_key(event, SPAN_EVENT_KEY):
                if event.artifact_id not in records or records[event.artifact_id].id < e.id:
                    records[event.artifact_id] = e
    return sorted((QuarantinedSpan(span=int(prop(e, "span")), artifact_id=a, failures=int(prop(e, "failures", 0)),
                                   reason=prop(e, "reason", ""), at_ms=int(prop(e, "at_ms", 0)))
                   for a, e in records.items()), key=lambda q: (q.span, q.artifact_id))


# -- writing ----------------------------------------------------------------------------------------------


def _record_span(store: metadata_store.MetadataStore, pipeline_name: str, type_name: str,
                 artifact: metadata_store_pb2.Artifact, failures: int, reason: str, now_ms: int) -> QuarantinedSpan:
    execution = metadata_store_pb2.Execution(type_id=_execution_type(store, type_name, _SPAN_RECORD_PROPERTIES),
                                             last_known_state=metadata_store_pb2.Execution.COMPLETE)
    _set_properties(execution, {"pipeline_name": pipeline_name, "span": _span(artifact), "failures": failures,
                                "reason": reason, "at_ms": now_ms})
    store.put_execution(execution, [(artifact, _input_event(0))], [pipeline_context(store, pipeline_name)])
    return QuarantinedSpan(span=_span(artifact), artifact_id=artifact.id, failures=failures, reason=reason,
                           at_ms=now_ms)


def _execution_type(store: metadata_store.MetadataStore, name: str, properties: Dict[str, int]) -> int:
    execution_type = metadata_store_pb2.ExecutionType(name=name)
    for key, kind in properties.items():
        execution_type.properties[key] = kind
    return store.put_execution_type(execution_type, can_add_fields=True, can_omit_fields=True)


def _type_id(store: metadata_store.MetadataStore, name: str) -> Optional[int]:
    try:
        return store.get_execution_type(name).id
    except mlmd_errors.NotFoundError:
        return None


def _executions(store: metadata_store.MetadataStore, name: str) -> List[metadata_store_pb2.Execution]:
    try:
        return store.get_executions_by_type(name)
    except mlmd_errors.NotFoundError:
        return []


def _input_event(index: int) -> metadata_store_pb2.Event:
    event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.INPUT)
    event.path.steps.add().key = SPAN_EVENT_KEY
    event.path.steps.add().index = index
    return event


def _set_properties(execution: metadata_store_pb2.Execution, values: Dict[str, object]) -> None:
    for key, value in values.items():
        if isinstance(value, str):
            execution.properties[key].string_value = value
        else:
            execution.properties[key].int_value = int(value)


def _span(artifact: metadata_store_pb2.Artifact) -> int:
    return artifact.properties["span"].int_value


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))
