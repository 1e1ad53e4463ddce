"""The lineage and status of a driftline pipeline, read from ML Metadata.

A small, plain API for your own code or a notebook. Everything comes from ML
Metadata (invariant 1: no side files), plus the serving folder for which
version is serving now and the controller's lock file for whether a
controller runs::

    from pipelines.config import default_config
    from pipelines import lineage

    config = default_config("demo_home")
    for m in lineage.models(config.metadata_path, config.pipeline_name):   # oldest first
        print(m.model_id, m.start, m.blessed, m.candidate and m.candidate.auc, m.pushed_version)

    serving = lineage.serving(config.metadata_path, config.serving_dir, config.pipeline_name)
    chain = lineage.chain(config.metadata_path, config.pipeline_name, serving_dir=config.serving_dir)
    print(lineage.format_lineage(chain, serving))     # the serving model back to its last cold start

    st = lineage.status(config)
    print(lineage.format_status(st))
    print(lineage.to_json(st))                        # or lineage.to_json(chain)

Where each fact comes from:

* `Model` artifacts (WarmStartTrainer): warm or cold and why, the base model
  (`base_model_id`, -1 for a cold start: the lineage chain), spans trained,
  examples by role, the newest event time learned from, train seconds, loss.
* `ModelBlessing` artifacts (DriftlineEvaluator), matched on
  `current_model_id`: blessed and the reason, and `verdict_json`, which holds
  every metric of the candidate and of the baseline on identical eval data.
* `InfraBlessing` artifacts (LatencyValidator), matched on `model_id`: the
  load test's verdict, p50/p95/p99 latency, throughput, and the shares of
  parsing, transform graph and model.
* `PushedModel` artifacts (BlessingPusher, and `driftline.Rollback`
  executions), matched on `model_id`: the pushed version and when, and the
  rollbacks that served a model again (those carry `rollback_of`).
* `Examples` artifacts (StreamingExampleGen): spans, events, late and
  dead-lettered events.
* The trainer's input events: the `TransformGraph` a model was trained with
  (`transform_graph_uri`).
* The latest `pipeline_run` context: the last cycle's outcome.
* `driftline.CycleFailure` executions (pipelines/failures.py): the last
  failed cycle and the failures in a row; `driftline.SpanQuarantine` and
  `driftline.SpanReplay`: the spans quarantined after failing cycles.
* `driftline.Rollback` and `driftline.Unpin` executions: the pin that
  stands, the model a rollback pinned as base model and baseline
  (`components.blessing_pusher.rollback.current_pin`).

Retention (pipelines/retention.py) deletes old payloads but keeps every
record, marked DELETED: such artifacts are read like any other, and
`payload_deleted` on a model or span says that only the record is left.

Nothing here imports TensorFlow or TFX; ML Metadata is the only heavy import.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ml_metadata import errors as mlmd_errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.blessing_pusher.rollback import Pin, current_pin
from components.mlmd_vocabulary import (BLESSING_TYPE, INFRA_BLESSING_TYPE, MODEL_TYPE,  # noqa: F401
                                        PIPELINE_CONTEXT_TYPE, PIPELINE_RUN_CONTEXT_TYPE, PUSHED_MODEL_TYPE,
                                        TRANSFORM_GRAPH_TYPE)
from components.mlmd_vocabulary import PUBLISHED_STATES as _PUBLISHED
from pipelines.metadata import (EVALUATOR_ID, PUSHER_ID, RESUME_RESOLVER_ID, STREAMING_EXAMPLE_GEN_ID, TRAINER_ID,
                                ingested_spans, open_store, prop, run_outputs)
from pipelines.failures import FailureRecord, QuarantinedSpan, consecutive_failures, last_failure, quarantined_spans

ROLLBACK_EXECUTION_TYPE = "driftline.Rollback"
# The file a running controller holds: JSON {"pid": int, "started_at": ...}.
CONTROLLER_LOCK_FILE = "controller.lock"



StoreOrPath = Union[metadata_store.MetadataStore, str]


class LineageError(RuntimeError):
    """The store cannot be read as asked (a missing metadata file, an unknown model)."""


# -- records ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalMetrics:
    """One model's overall metrics on an eval split, as the gate saw them (None: not computable)."""

    auc: Optional[float] = None
    calibration: Optional[float] = None
    log_loss: Optional[float] = None
    example_count: Optional[float] = None
    positive_count: Optional[float] = None
    mean_label: Optional[float] = None
    mean_prediction: Optional[float] = None

    @classmethod
    def from_overall(cls, overall: Optional[Mapping[str, Any]]) -> Optional["EvalMetrics"]:
        """From `verdict_json`'s `candidate_metrics["overall"]` (null: NaN, "inf": infinity)."""
        if overall is None:
            return None
        return cls(**{f.name: _number(overall.get(f.name)) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class LatencyRecord:
    """The LatencyValidator's verdict on one model: its `InfraBlessing` (figures None when not load-tested)."""

    blessed: bool
    reason: Optional[str]
    load_tested: bool
    slo_p99_ms: Optional[float] = None
    candidates_per_request: Optional[int] = None
    batch_size: Optional[int] = None  # the batch size the figures are for (the one with the lowest p99)
    p50_ms: Optional[float] = None
    p95_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    requests_per_second: Optional[float] = None
    candidates_per_second: Optional[float] = None
    parse_share: Optional[float] = None
    transform_share: Optional[float] = None
    model_share: Optional[float] = None

    @classmethod
    def from_artifact(cls, a: metadata_store_pb2.Artifact) -> "LatencyRecord":
        return cls(blessed=prop(a, "blessed") == 1, reason=prop(a, "reason"), load_tested=prop(a, "load_tested") == 1,
                   **{f.name: prop(a, f.name) for f in dataclasses.fields(cls)
                      if f.name not in ("blessed", "reason", "load_tested")})

    def describe(self) -> str:
        """"p50 2.1 / p99 6.0 ms for 1000 candidates, 840 requests/s (SLO 100 ms)"; the reason when not tested."""
        if self.p99_ms is None:
            return self.reason or "not load-tested"
        text = (f"p50 {_f(self.p50_ms, '.1f')} / p99 {_f(self.p99_ms, '.1f')} ms for "
                f"{self.candidates_per_request} candidates, {_f(self.requests_per_second, '.0f')} requests/s "
                f"(SLO {_f(self.slo_p99_ms, 'g')} ms)")
        if self.parse_share is not None:
            text += (f"; parsing {self.parse_share:.0%}, transform {_f(self.transform_share, '.0%')}, "
                     f"model {_f(self.model_share, '.0%')}")
        return text


@dataclasses.dataclass(frozen=True)
class RollbackRecord:
    """A `driftline.Rollback`: `new_version` serves the model of `to_version` again."""

    new_version: int
    to_version: int
    from_version: Optional[int]
    at_ms: Optional[int]
    model_id: Optional[int]
    pushed_model_id: int


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """One `Model` the trainer produced, with its gate verdict and what serving did with it."""

    model_id: int
    uri: str
    created_ms: int
    # Training (custom properties of the Model).
    start: Optional[str]  # "warm" or "cold"
    start_reason: Optional[str]
    base_model_id: Optional[int]  # None for a cold start
    newest_span: Optional[int]
    trained_spans: List[int]
    trained_examples: Optional[int]
    trained_examples_by_role: Dict[str, int]  # {"new": n, "previous_eval": n, "replay": n}
    max_event_time_ms: Optional[int]  # the newest event time this model learned from
    train_wall_seconds: Optional[float]
    train_cpu_seconds: Optional[float]
    final_loss: Optional[float]
    # The gate (the newest ModelBlessing whose current_model_id is this model); None: not evaluated.
    blessed: Optional[bool] = None
    blessing_reason: Optional[str] = None
    eval_span: Optional[int] = None
    baseline_model_id: Optional[int] = None
    candidate: Optional[EvalMetrics] = None
    baseline: Optional[EvalMetrics] = None  # the baseline model on the same eval data
    failed_checks: List[str] = dataclasses.field(default_factory=list)
    # Serving: the pusher's push (not a rollback's), and the rollbacks that served this model again.
    pushed_version: Optional[str] = None
    pushed_at_ms: Optional[int] = None
    push_reason: Optional[str] = None
    rollbacks: List[RollbackRecord] = dataclasses.field(default_factory=list)
    # The LatencyValidator (the newest InfraBlessing whose model_id is this model); None: not load-tested.
    latency: Optional[LatencyRecord] = None
    # Retention deleted the model's files (pipelines/retention.py); this record stays.
    payload_deleted: bool = False

    @property
    def warm(self) -> bool:
        return self.start == "warm"

    @property
    def candidate_auc(self) -> Optional[float]:
        return self.candidate.auc if self.candidate else None

    @property
    def baseline_auc(self) -> Optional[float]:
        return self.baseline.auc if self.baseline else None

    def to_dict(self) -> Dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class ServingInfo:
    """What the serving folder serves (its highest version) and the model behind it, per ML Metadata."""

    serving_dir: str
    versions: List[int]
    version: Optional[int]  # None: nothing is serving
    model_id: Optional[int]  # None: no PushedModel in ML Metadata names this version
    pushed_at_ms: Optional[int] = None
    rollback_of: Optional[int] = None  # set when this version is a rollback to an earlier one
    pushed_model_id: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class CycleOutcome:
    """The last pipeline run, as ML Metadata recorded it.

    `outcome` is one of: "no new span", "pushed", "rejected", "not pushed"
    (blessed, but a later gate or the pusher said no), "failed", "running",
    "interrupted" (its process died; the next controller resumes it),
    "ingested" (an ingest-only run). `resumed`: a resumed cycle, which trained
    on spans an interrupted one had published.
    """

    run_id: str
    started_ms: int
    outcome: str
    reason: str
    spans: List[int]
    events: int
    model_id: Optional[int] = None
    start: Optional[str] = None
    blessed: Optional[bool] = None
    pushed_version: Optional[str] = None
    resumed: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class ControllerState:
    """Whether a controller runs, from `<home>/controller.lock`.

    state: "running" (the lock names a live pid), "stale" (it names a dead
    pid), "not running" (no lock file) or "unknown" (a lock that cannot be read).
    """

    state: str
    lock_path: str
    pid: Optional[int] = None
    started_at: Any = None
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    def describe(self) -> str:
        if self.state == "running":
            return f"running (pid {self.pid})"
        if self.state == "stale":
            return f"not running (stale lock from pid {self.pid})"
        if self.state == "unknown":
            return f"unknown (unreadable lock {self.lock_path}: {self.detail})"
        return "not running"

    def to_dict(self) -> Dict[str, Any]:
        return _plain({**dataclasses.asdict(self), "description": self.describe()})


@dataclasses.dataclass(frozen=True)
class Status:
    """The state of one pipeline home, in one object (see `status`)."""

    home: str
    pipeline_name: str
    now_ms: int
    metadata_exists: bool
    serving: ServingInfo
    # The newest event time the serving model learned from, and now minus it.
    newest_event_ms: Optional[int]
    freshness_seconds: Optional[float]
    last_cycle: Optional[CycleOutcome]
    spans_ingested: int
    events_ingested: int
    late_events: int
    dead_lettered_events: int
    newest_span: Optional[int]
    models_trained: int
    models_blessed: int
    models_rejected: int
    pushes: int
    rollbacks: int
    controller: ControllerState
    # The serving model's load test, when the LatencyValidator ran on it.
    serving_latency: Optional[LatencyRecord] = None
    # Records whose payload retention deleted (pipelines/retention.py).
    spans_payload_deleted: int = 0
    # Of dead_lettered_events, those refused for their event time; and the repeated event ids kept out.
    future_events: int = 0
    too_late_events: int = 0
    duplicate_events: int = 0
    models_payload_deleted: int = 0
    # The newest failed cycle (pipelines/failures.py), and how many failed since the last run that
    # completed (0: the controller has recovered since last_failure).
    last_failure: Optional[FailureRecord] = None
    consecutive_failures: int = 0
    # Spans quarantined after failing cycles; `driftline replay --span S` trains one.
    quarantined_spans: List[QuarantinedSpan] = dataclasses.field(default_factory=list)
    # The model a rollback pinned as base model and baseline; None: no pin stands.
    pin: Optional[Pin] = None

    @property
    def serving_version(self) -> Optional[int]:
        return self.serving.version

    @property
    def serving_model_id(self) -> Optional[int]:
        return self.serving.model_id

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["controller"] = self.controller.to_dict()
        return _plain(d)


# -- reading ML Metadata -----------------------------------------------------------------------


def connect(store_or_path: StoreOrPath) -> metadata_store.MetadataStore:
    """A store as is; a path to an existing metadata.sqlite opened (never created: LineageError)."""
    if not isinstance(store_or_path, (str, os.PathLike)):
        return store_or_path
    path = os.fspath(store_or_path)
    if not os.path.isfile(path):
        raise LineageError(f"no ML Metadata at {path}: nothing has run in this home yet "
                           f"(run `driftline run --home ...` first)")
    return open_store(path)


def _type_id(store: metadata_store.MetadataStore, name: str, execution: bool = False) -> Optional[int]:
    try:
        return (store.get_execution_type(name) if execution else store.get_artifact_type(name)).id
    except mlmd_errors.NotFoundError:
        return None


def _pipeline_artifacts(store: metadata_store.MetadataStore, pipeline_name: str,
                        type_names: Sequence[str]) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    """{type name: published artifacts of that type attributed to the pipeline's context}, oldest first."""
    result: Dict[str, List[metadata_store_pb2.Artifact]] = {name: [] for name in type_names}
    context = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
    if context is None:
        return result
    by_id = {type_id: name for name in type_names if (type_id := _type_id(store, name)) is not None}
    if not by_id:
        return result
    for a in store.get_artifacts_by_context(context.id):
        if a.type_id in by_id and a.state in _PUBLISHED:
            result[by_id[a.type_id]].append(a)
    for rows in result.values():
        rows.sort(key=lambda a: (a.create_time_since_epoch, a.id))
    return result


def _rollback_versions(store: metadata_store.MetadataStore,
                       pushed_models: Sequence[metadata_store_pb2.Artifact]) -> Dict[int, Optional[int]]:
    """{rollback PushedModel id: from_version}, read from the `driftline.Rollback` execution that made it."""
    ids = [a.id for a in pushed_models if prop(a, "rollback_of") is not None]
    type_id = _type_id(store, ROLLBACK_EXECUTION_TYPE, execution=True)
    if not ids or type_id is None:
        return {}
    events = [e for e in store.get_events_by_artifact_ids(ids) if e.type == metadata_store_pb2.Event.OUTPUT]
    executions = {e.id: e for e in store.get_executions_by_id(sorted({e.execution_id for e in events}))}
    result: Dict[int, Optional[int]] = {}
    for event in events:
        execution = executions.get(event.execution_id)
        if execution is not None and execution.type_id == type_id and "from_version" in execution.properties:
            result[event.artifact_id] = execution.properties["from_version"].int_value
    return result


def models(store_or_path: StoreOrPath, pipeline_name: str = "driftline") -> List[ModelRecord]:
    """Every model the pipeline trained, oldest first, with its verdict, push and rollbacks."""
    store = connect(store_or_path)
    found = _pipeline_artifacts(store, pipeline_name,
                                (MODEL_TYPE, BLESSING_TYPE, PUSHED_MODEL_TYPE, INFRA_BLESSING_TYPE))
    blessings: Dict[int, metadata_store_pb2.Artifact] = {}
    for b in found[BLESSING_TYPE]:  # oldest first: the newest blessing of a model wins
        model_id = prop(b, "current_model_id")
        if model_id is not None:
            blessings[int(model_id)] = b
    latencies: Dict[int, LatencyRecord] = {}
    for b in found[INFRA_BLESSING_TYPE]:  # a stock InfraValidator's carry no model_id and are left out
        model_id = prop(b, "model_id")
        if model_id is not None:
            latencies[int(model_id)] = LatencyRecord.from_artifact(b)
    pushes: Dict[int, metadata_store_pb2.Artifact] = {}
    pushed = found[PUSHED_MODEL_TYPE]
    version_model = {}  # pushed version -> model id, for rollbacks recorded without a model id
    for p in pushed:
        model_id = prop(p, "model_id")
        if model_id is None or prop(p, "rollback_of") is not None:
            continue
        if prop(p, "pushed") == 1 or int(model_id) not in pushes:
            pushes[int(model_id)] = p
        if prop(p, "pushed") == 1 and prop(p, "pushed_version") is not None:
            version_model[str(prop(p, "pushed_version"))] = int(model_id)
    from_versions = _rollback_versions(store, pushed)
    rollbacks: Dict[int, List[RollbackRecord]] = {}
    for p in pushed:
        to_version = prop(p, "rollback_of")
        if to_version is None or prop(p, "pushed") != 1:
            continue
        model_id = prop(p, "model_id")
        model_id = int(model_id) if model_id is not None else version_model.get(str(to_version))
        record = RollbackRecord(new_version=int(prop(p, "pushed_version")), to_version=int(to_version),
                                from_version=from_versions.get(p.id), at_ms=prop(p, "pushed_at_ms"),
                                model_id=model_id, pushed_model_id=p.id)
        if model_id is not None:
            rollbacks.setdefault(model_id, []).append(record)
    return [_model_record(m, blessings.get(m.id), pushes.get(m.id), rollbacks.get(m.id, []), latencies.get(m.id))
            for m in found[MODEL_TYPE]]


def _model_record(m: metadata_store_pb2.Artifact, blessing: Optional[metadata_store_pb2.Artifact],
                  push: Optional[metadata_store_pb2.Artifact], rollbacks: List[RollbackRecord],
                  latency: Optional[LatencyRecord] = None) -> ModelRecord:
    base = prop(m, "base_model_id")
    fields: Dict[str, Any] = dict(
        model_id=m.id, uri=m.uri, created_ms=m.create_time_since_epoch,
        start=prop(m, "start"), start_reason=prop(m, "start_reason"),
        base_model_id=int(base) if base is not None and base >= 0 else None,
        newest_span=prop(m, "newest_span"), trained_spans=_json(prop(m, "trained_spans"), []),
        trained_examples=_non_negative(prop(m, "trained_examples")),
        trained_examples_by_role=_json(prop(m, "trained_examples_by_role"), {}),
        max_event_time_ms=_non_negative(prop(m, "max_event_time_ms")),
        train_wall_seconds=prop(m, "train_wall_seconds"), train_cpu_seconds=prop(m, "train_cpu_seconds"),
        # The executor stores a non-finite loss as -1.0.
        final_loss=_non_negative(prop(m, "final_loss")),
        rollbacks=sorted(rollbacks, key=lambda r: r.new_version), latency=latency,
        payload_deleted=m.state != metadata_store_pb2.Artifact.LIVE)
    if blessing is not None:
        verdict = _json(prop(blessing, "verdict_json"), {})
        baseline_id = prop(blessing, "baseline_model_id")
        fields.update(
            blessed=prop(blessing, "blessed") == 1, blessing_reason=prop(blessing, "reason"),
            eval_span=prop(blessing, "eval_span"),
            baseline_model_id=int(baseline_id) if baseline_id is not None else None,
            candidate=EvalMetrics.from_overall((verdict.get("candidate_metrics") or {}).get("overall")),
            baseline=EvalMetrics.from_overall((verdict.get("baseline_metrics") or {}).get("overall")),
            failed_checks=list(verdict.get("failed_checks") or []))
    if push is not None:
        fields["push_reason"] = prop(push, "reason")
        if prop(push, "pushed") == 1:
            fields.update(pushed_version=str(prop(push, "pushed_version")), pushed_at_ms=prop(push, "pushed_at_ms"))
    return ModelRecord(**fields)


def transform_graph_uri(store_or_path: StoreOrPath, model_id: int) -> Optional[str]:
    """The `TransformGraph` the model was trained with: an input of the execution that made it (None if none)."""
    store = connect(store_or_path)
    made_by = [e.execution_id for e in store.get_events_by_artifact_ids([model_id])
               if e.type == metadata_store_pb2.Event.OUTPUT]
    inputs = [e.artifact_id for e in store.get_events_by_execution_ids(made_by)
              if e.type == metadata_store_pb2.Event.INPUT]
    graph_type = _type_id(store, TRANSFORM_GRAPH_TYPE)
    graphs = [a.uri for a in store.get_artifacts_by_id(inputs) if a.type_id == graph_type] if inputs else []
    return graphs[0] if len(graphs) == 1 else None


def serving(store_or_path: StoreOrPath, serving_dir: str, pipeline_name: str = "driftline") -> ServingInfo:
    """The version serving in `serving_dir` (its highest) and the model behind it.

    The model is the one named by the newest `PushedModel` that put this
    version into this folder (a push, or a rollback, which records the model it
    serves again). If the home moved since, a PushedModel of the same version
    number in this pipeline is taken instead.
    """
    from components.blessing_pusher import serving as serving_lib  # plain folder code, no TFX

    if serving_lib.is_local(serving_dir) and not serving_dir.startswith("file://"):
        serving_dir = os.path.abspath(serving_dir)
    versions = serving_lib.versions(serving_dir)
    version = versions[-1] if versions else None
    if version is None:
        return ServingInfo(serving_dir=serving_dir, versions=versions, version=None, model_id=None)
    store = connect(store_or_path)
    pushed = [a for a in _pipeline_artifacts(store, pipeline_name, (PUSHED_MODEL_TYPE,))[PUSHED_MODEL_TYPE]
              if prop(a, "pushed") == 1 and str(prop(a, "pushed_version")) == str(version)]
    here = [a for a in pushed if _same_dir(prop(a, "pushed_destination") or a.uri,
                                            serving_lib.version_dir(serving_dir, version))]
    match = max(here or pushed, key=lambda a: (a.create_time_since_epoch, a.id), default=None)
    if match is None:
        return ServingInfo(serving_dir=serving_dir, versions=versions, version=version, model_id=None)
    model_id = prop(match, "model_id")
    rollback_of = prop(match, "rollback_of")
    if model_id is None and rollback_of is not None:  # a rollback recorded without a known model
        model_id = next((r.model_id for m in models(store, pipeline_name) for r in m.rollbacks
                         if r.pushed_model_id == match.id), None)
    return ServingInfo(serving_dir=serving_dir, versions=versions, version=version,
                       model_id=int(model_id) if model_id is not None else None,
                       pushed_at_ms=prop(match, "pushed_at_ms"), rollback_of=rollback_of,
                       pushed_model_id=match.id)


def _same_dir(a: str, b: str) -> bool:
    def norm(path: str) -> str:
        if "://" in path and not path.startswith("file://"):
            return path.rstrip("/")
        return os.path.normpath(os.path.abspath(path[len("file://"):] if path.startswith("file://") else path))

    return norm(a) == norm(b)


def chain(store_or_path: StoreOrPath, pipeline_name: str = "driftline", model_id: Optional[int] = None,
          serving_dir: Optional[str] = None, records: Optional[Sequence[ModelRecord]] = None) -> List[ModelRecord]:
    """A model and its base models back to the last cold start, newest first.

    Starts from `model_id`, or else from the model serving in `serving_dir`,
    or else (no serving_dir) from the model of the newest push or rollback in
    ML Metadata. Empty when nothing has been pushed. `records` (from
    `models()`) saves reading the store again. Raises LineageError for a model
    id the pipeline does not have.
    """
    store = connect(store_or_path) if records is None or (model_id is None and serving_dir) else None
    by_id = {m.model_id: m for m in (records if records is not None else models(store, pipeline_name))}
    if model_id is None:
        model_id = (serving(store, serving_dir, pipeline_name).model_id if serving_dir
                    else latest_pushed_model_id(by_id.values()))
        if model_id is None:
            return []
    if model_id not in by_id:
        known = ", ".join(str(i) for i in sorted(by_id)) or "none"
        raise LineageError(f"model {model_id} is not a model of pipeline {pipeline_name!r} (models: {known})")
    return walk_chain(by_id, model_id)


def walk_chain(by_id: Mapping[int, ModelRecord], model_id: int) -> List[ModelRecord]:
    """Follows base_model_id from `model_id` until a cold start (or a base not in `by_id`), newest first."""
    result: List[ModelRecord] = []
    seen = set()
    current: Optional[int] = model_id
    while current is not None and current in by_id and current not in seen:
        seen.add(current)
        record = by_id[current]
        result.append(record)
        current = record.base_model_id
    return result


def latest_pushed_model_id(records: Iterable[ModelRecord]) -> Optional[int]:
    """The model of the newest push or rollback (by time, then version), per ML Metadata alone."""
    events = serving_events(records)
    return events[-1]["model_id"] if events else None


def serving_events(records: Iterable[ModelRecord]) -> List[Dict[str, Any]]:
    """Pushes and rollbacks in time order: {"kind", "version", "at_ms", "model_id", "rollback_of"}."""
    events = []
    for m in records:
        if m.pushed_version is not None:
            events.append({"kind": "push", "version": int(m.pushed_version), "at_ms": m.pushed_at_ms,
                           "model_id": m.model_id, "rollback_of": None})
        for r in m.rollbacks:
            events.append({"kind": "rollback", "version": r.new_version, "at_ms": r.at_ms,
                           "model_id": m.model_id, "rollback_of": r.to_version})
    return sorted(events, key=lambda e: (e["at_ms"] if e["at_ms"] is not None else -1, e["version"]))


def last_cycle(store_or_path: StoreOrPath, pipeline_name: str = "driftline") -> Optional[CycleOutcome]:
    """The newest pipeline run of this pipeline and how it ended; None before the first."""
    store = connect(store_or_path)
    runs = sorted(store.get_contexts_by_type(PIPELINE_RUN_CONTEXT_TYPE), key=lambda c: c.id, reverse=True)
    for run in runs:
        nodes = run_outputs(store, pipeline_name, run)
        if nodes:
            return cycle_outcome(run.name, run.create_time_since_epoch, nodes, store)
    return None


def cycle_outcome(run_id: str, started_ms: int, nodes: Mapping[str, Mapping[str, Any]],
                  store: Optional[metadata_store.MetadataStore] = None) -> CycleOutcome:
    """Classifies one run from `metadata.run_outputs` ({node: {"state", "outputs"}})."""
    def outputs(node: str, key: str) -> list:
        return list(nodes.get(node, {}).get("outputs", {}).get(key, []))

    resumed = RESUME_RESOLVER_ID in nodes
    examples = outputs(RESUME_RESOLVER_ID if resumed else STREAMING_EXAMPLE_GEN_ID, "examples")
    base = dict(run_id=run_id, started_ms=started_ms, spans=sorted(int(prop(a, "span")) for a in examples),
                events=sum(int(prop(a, "event_count", 0)) for a in examples), resumed=resumed)
    failed = sorted(n for n, v in nodes.items() if v.get("state") == "FAILED")
    if failed:
        detail = _failure_detail(store, nodes[failed[0]].get("execution_id")) if store is not None else ""
        return CycleOutcome(outcome="failed", reason=f"{', '.join(failed)} failed" + (f": {detail}" if detail else ""),
                            **base)
    cancelled = sorted(n for n, v in nodes.items() if v.get("state") == "CANCELED")
    if cancelled:
        return CycleOutcome(outcome="interrupted", reason=f"{', '.join(cancelled)} interrupted: the process running "
                            "the cycle died; the controller resumed from what ML Metadata had committed", **base)
    models_out = outputs(TRAINER_ID, "model")
    model = models_out[0] if models_out else None
    model_fields = dict(model_id=model.id, start=prop(model, "start")) if model is not None else {}
    if any(v.get("state") in ("NEW", "RUNNING") for v in nodes.values()):
        return CycleOutcome(outcome="running", reason="the run has not finished", **base, **model_fields)
    if not examples:
        return CycleOutcome(outcome="no new span", reason="no span closed since the last cycle", **base)
    if TRAINER_ID not in nodes:
        return CycleOutcome(outcome="ingested", reason=f"ingest only: spans {_spans(base['spans'])}", **base)
    if model is None:
        return CycleOutcome(outcome="no new span", reason="nothing was trained", **base)
    blessings = outputs(EVALUATOR_ID, "blessing")
    if not blessings:
        return CycleOutcome(outcome="running", reason="trained, not evaluated yet", **base, **model_fields)
    blessed = prop(blessings[0], "blessed") == 1
    gate_reason = prop(blessings[0], "reason") or ""
    if not blessed:
        return CycleOutcome(outcome="rejected", reason=gate_reason, blessed=False, **base, **model_fields)
    pushed = outputs(PUSHER_ID, "pushed_model")
    if pushed and prop(pushed[0], "pushed") == 1:
        version = str(prop(pushed[0], "pushed_version"))
        return CycleOutcome(outcome="pushed", reason=f"trained {prop(model, 'start') or ''} on spans "
                            f"{_spans(base['spans'])}, {gate_reason}; pushed as version {version}".replace("  ", " "),
                            blessed=True, pushed_version=version, **base, **model_fields)
    why = prop(pushed[0], "reason") if pushed else "the pusher did not run"
    return CycleOutcome(outcome="not pushed", reason=why or "not pushed", blessed=True, **base, **model_fields)


def _failure_detail(store: metadata_store.MetadataStore, execution_id: Optional[int]) -> str:
    """The error TFX recorded on a failed execution (`__execution_result__`), first line, if any."""
    if execution_id is None:
        return ""
    [execution] = store.get_executions_by_id([execution_id]) or [None]
    if execution is None or "__execution_result__" not in execution.custom_properties:
        return ""
    text = execution.custom_properties["__execution_result__"].string_value
    try:
        message = json.loads(text).get("resultMessage", "")
    except (ValueError, AttributeError):
        message = text
    return message.strip().splitlines()[0][:200] if message.strip() else ""


# -- status ----------------------------------------------------------------------------------


def controller_lock_path(home: str) -> str:
    return os.path.join(home, CONTROLLER_LOCK_FILE)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (os.kill(pid, 0); another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def controller_state(home: str) -> ControllerState:
    """Reads `<home>/controller.lock` ({"pid", "started_at"}) and checks that its pid is alive."""
    path = controller_lock_path(home)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return ControllerState(state="not running", lock_path=path)
    except OSError as e:
        return ControllerState(state="unknown", lock_path=path, detail=str(e))
    if not text.strip():  # a controller that stopped cleanly leaves the lock file empty
        return ControllerState(state="not running", lock_path=path)
    try:
        lock = json.loads(text)
        pid = lock["pid"]
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid {pid!r} is not a positive integer")
    except (ValueError, KeyError, TypeError) as e:
        return ControllerState(state="unknown", lock_path=path, detail=f"{type(e).__name__}: {e}")
    started_at = lock.get("started_at")
    state = "running" if pid_alive(pid) else "stale"
    return ControllerState(state=state, lock_path=path, pid=pid, started_at=started_at)


def status(config: Any, now_ms: Optional[int] = None) -> Status:
    """The state of a pipeline home: serving, freshness, the last cycle, ingest totals, the controller.

    `config` is a `DriftlineConfig` (or a home folder, for `default_config(home)`).
    Freshness is now minus the newest event time the serving model learned
    from. A home where nothing has run yet gives a Status with empty fields;
    the metadata file is never created by reading.
    """
    if isinstance(config, (str, os.PathLike)):
        from pipelines.config import default_config

        config = default_config(os.fspath(config))
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    controller = controller_state(config.home)
    exists = os.path.isfile(config.metadata_path)
    if not exists:
        empty_serving = ServingInfo(serving_dir=os.path.abspath(config.serving_dir), versions=[], version=None,
                                    model_id=None)
        return Status(home=config.home, pipeline_name=config.pipeline_name, now_ms=now_ms, metadata_exists=False,
                      serving=empty_serving, newest_event_ms=None, freshness_seconds=None, last_cycle=None,
                      spans_ingested=0, events_ingested=0, late_events=0, dead_lettered_events=0, newest_span=None,
                      models_trained=0, models_blessed=0, models_rejected=0, pushes=0, rollbacks=0,
                      controller=controller)
    store = connect(config.metadata_path)
    records = models(store, config.pipeline_name)
    by_id = {m.model_id: m for m in records}
    served = serving(store, config.serving_dir, config.pipeline_name)
    serving_model = by_id.get(served.model_id) if served.model_id is not None else None
    newest_event_ms = serving_model.max_event_time_ms if serving_model is not None else None
    spans = ingested_spans(store, config.pipeline_name)
    cycle = last_cycle(store, config.pipeline_name)
    failure = last_failure(store, config.pipeline_name)
    if cycle is not None and cycle.outcome == "running" and not controller.running:
        # Nothing holds the home's lock, so no process is running that cycle any more.
        cycle = dataclasses.replace(cycle, outcome="interrupted", reason=(
            "the run stopped before it finished (its process is gone); the next controller start resumes "
            "from what ML Metadata committed"))
    return Status(
        home=config.home, pipeline_name=config.pipeline_name, now_ms=now_ms, metadata_exists=True,
        serving=served, newest_event_ms=newest_event_ms,
        freshness_seconds=(now_ms - newest_event_ms) / 1000.0 if newest_event_ms is not None else None,
        last_cycle=cycle,
        spans_ingested=len(spans), events_ingested=sum(s.event_count for s in spans),
        late_events=sum(s.late_count for s in spans), dead_lettered_events=sum(s.dead_letter_count for s in spans),
        future_events=sum(s.future_count for s in spans), too_late_events=sum(s.too_late_count for s in spans),
        duplicate_events=sum(s.duplicate_count for s in spans),
        newest_span=max((s.span for s in spans), default=None),
        models_trained=len(records), models_blessed=sum(1 for m in records if m.blessed is True),
        models_rejected=sum(1 for m in records if m.blessed is False),
        pushes=sum(1 for m in records if m.pushed_version is not None),
        rollbacks=sum(len(m.rollbacks) for m in records), controller=controller,
        serving_latency=serving_model.latency if serving_model is not None else None,
        spans_payload_deleted=sum(1 for s in spans if s.payload_deleted),
        models_payload_deleted=sum(1 for m in records if m.payload_deleted),
        last_failure=failure, consecutive_failures=consecutive_failures(store, config.pipeline_name, failure),
        quarantined_spans=quarantined_spans(store, config.pipeline_name),
        pin=current_pin(store, config.pipeline_name))


# -- JSON ------------------------------------------------------------------------------------


def to_json(obj: Any, indent: Optional[int] = 2) -> str:
    """JSON for a Status, ServingInfo, ModelRecord, CycleOutcome, or a list/dict of them (NaN -> null)."""
    return json.dumps(_plain(obj), indent=indent, sort_keys=True, allow_nan=False)


def lineage_to_dict(chain_records: Sequence[ModelRecord], serving_info: Optional[ServingInfo] = None,
                    pipeline_name: Optional[str] = None,
                    quarantined: Sequence[QuarantinedSpan] = (), pin: Optional[Pin] = None) -> Dict[str, Any]:
    """What `driftline lineage --json` prints: {"pipeline_name", "serving", "pin", "chain" (newest first),
    "quarantined_spans" (spans quarantined after failing cycles: no model trained on them)}."""
    return _plain({"pipeline_name": pipeline_name, "serving": serving_info, "pin": pin,
                   "chain": list(chain_records), "quarantined_spans": list(quarantined)})


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return obj.to_dict()  # already plain
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


# -- small helpers ---------------------------------------------------------------------------


def _json(text: Optional[str], default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _number(value: Any) -> Optional[float]:
    """A metric from verdict_json: null is NaN (None here), "inf"/"-inf" infinity."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _non_negative(value: Any) -> Any:
    return None if value is None or value < 0 else value


def _spans(spans: Sequence[int]) -> str:
    """Span numbers with runs of three or more collapsed: [1, 2, 3, 5] -> "1-3,5"."""
    if not spans:
        return "none"
    values = sorted(set(int(s) for s in spans))
    parts, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            run = values[start:i]
            parts.append(f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(str(v) for v in run))
            start = i
    return ",".join(parts)


# -- human text ------------------------------------------------------------------------------


def format_ms(ms: Optional[int]) -> str:
    """UTC time of an epoch-milliseconds value, to the second; "-" for None."""
    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: Optional[float]) -> str:
    """A duration in its two largest units: "42 s", "3 min 5 s", "2 h 10 min", "326 d 17 h"; "-" for None."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    s = int(round(abs(seconds)))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes} min"
    elif minutes:
        text = f"{minutes} min {secs} s"
    else:
        text = f"{secs} s"
    return sign + text


def _f(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_status(st: Status) -> str:
    """The short human summary `driftline status` prints."""
    lines = [f"driftline status of {st.home} (pipeline {st.pipeline_name})"]
    if not st.metadata_exists:
        lines.append("  nothing has run here yet (no ML Metadata)")
        lines.append(f"  controller:  {st.controller.describe()}")
        return "\n".join(lines)
    s = st.serving
    if s.version is None:
        serving_text = "nothing (no version in the serving folder)"
    else:
        model = f"model {s.model_id}" if s.model_id is not None else "model unknown to ML Metadata"
        serving_text = f"version {s.version}, {model}"
        if s.rollback_of is not None:
            serving_text += f" (a rollback to version {s.rollback_of})"
        if s.pushed_at_ms is not None:
            serving_text += f", since {format_ms(s.pushed_at_ms)} UTC"
    lines.append(f"  serving:     {serving_text}")
    if st.pin is not None:
        lines.append(f"  pinned:      {_pin_text(st.pin)}")
    if st.freshness_seconds is not None:
        lines.append(f"  freshness:   {format_duration(st.freshness_seconds)} (the serving model learned events up "
                     f"to {format_ms(st.newest_event_ms)} UTC)")
    else:
        lines.append("  freshness:   -")
    if st.serving_latency is not None:
        lines.append(f"  latency:     {st.serving_latency.describe()}")
    c = st.last_cycle
    if c is None:
        lines.append("  last cycle:  none")
    else:
        resumed = ", resumed after an interrupted cycle" if c.resumed else ""
        lines.append(f"  last cycle:  {c.outcome} (run {c.run_id}{resumed}, started {format_ms(c.started_ms)} UTC)")
        lines.append(f"               {c.reason}")
    newest = f", newest span {st.newest_span}" if st.newest_span is not None else ""
    lines.append(f"  ingested:    {st.spans_ingested} spans, {st.events_ingested:,} events, {st.late_events:,} late, "
                 f"{st.dead_lettered_events:,} dead-lettered{newest}")
    if st.future_events or st.too_late_events or st.duplicate_events:
        lines.append(f"               of the dead letters {st.future_events:,} from the future and "
                     f"{st.too_late_events:,} too late; {st.duplicate_events:,} duplicate event ids kept out")
    if st.spans_payload_deleted:
        lines.append(f"               payload deleted by retention for {st.spans_payload_deleted} of the spans "
                     "(records kept)")
    lines.append(f"  models:      {st.models_trained} trained, {st.models_blessed} blessed, "
                 f"{st.models_rejected} rejected; {st.pushes} pushed, {st.rollbacks} rollback"
                 f"{'' if st.rollbacks == 1 else 's'}")
    if st.models_payload_deleted:
        lines.append(f"               payload deleted by retention for {st.models_payload_deleted} of the models "
                     "(records kept)")
    lines.append(f"  controller:  {st.controller.describe()}")
    f = st.last_failure
    if f is not None:
        lines.append(f"  failures:    {st.consecutive_failures} in a row" + (
            " (recovered: a run completed since)" if not st.consecutive_failures else "")
            + f"; the last at {format_ms(f.at_ms)} UTC{', resumed cycle' if f.resumed else ''}")
        lines.append(f"               {f.describe()}")
    lines += quarantine_lines(st.quarantined_spans, st.home)
    return "\n".join(lines)


def quarantine_lines(quarantined: Sequence[QuarantinedSpan], home: str) -> List[str]:
    """What `status` and `lineage` print about spans quarantined after failing cycles."""
    lines = []
    for q in quarantined:
        lines.append(f"  quarantined: span {q.span} since {format_ms(q.at_ms)} UTC (Examples {q.artifact_id}): "
                     f"{q.reason}")
    if quarantined:
        lines.append(f"               train one with `driftline replay --home {home} --span S`")
    return lines


def _examples(m: ModelRecord) -> str:
    roles = m.trained_examples_by_role
    if not roles:
        return str(m.trained_examples) if m.trained_examples is not None else "-"
    order = ["new", "previous_eval", "replay"]
    keys = [k for k in order if k in roles] + sorted(k for k in roles if k not in order)
    short = {"new": "new", "previous_eval": "prev", "replay": "replay"}
    return " ".join(f"{short.get(k, k)} {roles[k]}" for k in keys)


def _pair(m: ModelRecord, name: str, spec: str) -> str:
    cand = getattr(m.candidate, name) if m.candidate else None
    base = getattr(m.baseline, name) if m.baseline else None
    return f"{_f(cand, spec)} / {_f(base, spec)}" if m.baseline else _f(cand, spec)


def _latency_cells(m: ModelRecord) -> tuple:
    """(p50/p99 ms, candidates/s, verdict) of the LatencyValidator; "-" where it did not run or test."""
    lat = m.latency
    if lat is None:
        return "-", "-", "-"
    verdict = "ok" if lat.blessed else ("SLOW" if lat.p99_ms is not None and lat.slo_p99_ms is not None
                                        and lat.p99_ms > lat.slo_p99_ms else "refused")
    if not lat.load_tested:
        verdict = "skipped" if (lat.reason or "").startswith("not load-tested") else verdict
    if lat.p99_ms is None:
        return "-", "-", verdict
    return (f"{_f(lat.p50_ms, '.1f')}/{_f(lat.p99_ms, '.1f')}", _f(lat.candidates_per_second, ",.0f"), verdict)


def _pin_text(pin: Pin) -> str:
    when = f" at {format_ms(pin.at_ms)} UTC" if pin.at_ms else ""
    return pin.describe() + when


def format_lineage(chain_records: Sequence[ModelRecord], serving_info: Optional[ServingInfo] = None,
                   quarantined: Sequence[QuarantinedSpan] = (), home: str = "HOME", pin: Optional[Pin] = None) -> str:
    """The table and reasons `driftline lineage` prints, for a chain (newest first), and the pin if one stands.

    `quarantined`: spans quarantined after failing cycles, listed after the
    chain since no model in it trained on them.
    """
    text = _format_chain(chain_records, serving_info, pin)
    if quarantined:
        text += "\n\nSpans no model trained on, quarantined after failing cycles:\n" + "\n".join(
            quarantine_lines(quarantined, home))
    return text


def _format_chain(chain_records: Sequence[ModelRecord], serving_info: Optional[ServingInfo] = None,
                  pin: Optional[Pin] = None) -> str:
    from pipelines.report import format_table

    pinned = [f"pinned: {_pin_text(pin)}"] if pin is not None else []
    if not chain_records:
        return "\n".join(["no models: nothing has been trained (or pushed) yet"] + pinned)
    head = chain_records[0]
    where = ""
    if serving_info is not None and serving_info.model_id == head.model_id and serving_info.version is not None:
        where = f", serving as version {serving_info.version}"
    n = len(chain_records)
    tail = chain_records[-1]
    back_to = ("back to its last cold start" if tail.start == "cold"
               else f"back to model {tail.model_id} (its base model {tail.base_model_id} is not in this pipeline)")
    lines = [f"Lineage of model {head.model_id}{where}, {back_to}: {n} model{'s' if n != 1 else ''} (newest first)",
             *pinned,
             "AUC, calibration and log loss: candidate / baseline, on the same eval span; "
             "p50/p99 ms and cand/s: the LatencyValidator's load test", ""]
    rows = []
    for m in chain_records:
        gate = "-" if m.blessed is None else ("blessed" if m.blessed else "REJECTED")
        pushed = m.pushed_version or "-"
        if m.rollbacks:
            pushed += " (again as " + ", ".join(str(r.new_version) for r in m.rollbacks) + ")"
        rows.append((m.model_id, format_ms(m.created_ms)[5:16], m.start or "-",
                     m.base_model_id if m.base_model_id is not None else "-", _spans(m.trained_spans),
                     _examples(m), m.eval_span if m.eval_span is not None else "-",
                     _pair(m, "auc", ".3f"), _pair(m, "calibration", ".2f"), _pair(m, "log_loss", ".3f"),
                     _f(m.candidate.example_count if m.candidate else None, ".0f"), gate, *_latency_cells(m),
                     pushed, format_ms(m.pushed_at_ms)[5:16] if m.pushed_at_ms else "-"))
    lines.append(format_table(("model", "created", "start", "base", "spans", "examples", "eval span", "AUC",
                               "calibration", "log loss", "eval n", "gate", "p50/p99 ms", "cand/s", "latency",
                               "pushed", "pushed at"), rows))
    lines.append("")
    for m in chain_records:
        deleted = " (payload deleted by retention; record kept)" if m.payload_deleted else ""
        lines.append(f"model {m.model_id}{deleted}: {m.start_reason or m.start or 'start unknown'}")
        if m.blessing_reason:
            lines.append(f"  gate:  {m.blessing_reason}")
        if m.latency is not None:
            lines.append(f"  latency: {m.latency.reason or m.latency.describe()}")
        if m.pushed_version is not None:
            lines.append(f"  push:  version {m.pushed_version} at {format_ms(m.pushed_at_ms)} UTC")
        elif m.push_reason:
            lines.append(f"  push:  {m.push_reason}")
        for r in m.rollbacks:
            was = f" (was serving version {r.from_version})" if r.from_version is not None else ""
            lines.append(f"  rollback: version {r.new_version} serves it again (a copy of version {r.to_version}) "
                         f"at {format_ms(r.at_ms)} UTC{was}")
    return "\n".join(lines)
