"""Queries over ML Metadata for lineage and status: models, the chain, serving, the last cycle.

Part of pipelines.lineage (which re-exports every name and documents where each fact comes from).
Nothing here imports TensorFlow or TFX; ML Metadata is the only heavy import.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ml_metadata import errors as mlmd_errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.blessing_pusher.rollback import ROLLBACK_EXECUTION_TYPE, current_pin
from components.mlmd_vocabulary import (BLESSING_TYPE, INFRA_BLESSING_TYPE, MODEL_TYPE, PIPELINE_CONTEXT_TYPE,
                                        PIPELINE_RUN_CONTEXT_TYPE, PUSHED_MODEL_TYPE,
                                        TRAINED_EXAMPLES_BY_ROLE_PROPERTY, TRANSFORM_GRAPH_TYPE)
from components.mlmd_vocabulary import PUBLISHED_STATES as _PUBLISHED
from pipelines.controller_lock import controller_state
from pipelines.failures import consecutive_failures, last_failure, quarantined_spans
from pipelines.lineage_records import (ClickFreshness, CycleOutcome, EvalMetrics, JoinStatus, LatencyRecord,
                                       LineageError, ModelRecord, RollbackRecord, ServingInfo, Status, _json,
                                       _non_negative)
from pipelines.metadata import (EVALUATOR_ID, PUSHER_ID, RESUME_RESOLVER_ID, STREAMING_EXAMPLE_GEN_ID, TRAINER_ID,
                                describe, ingested_spans, open_store, prop, run_outputs, store_exists)
from pipelines.config import MetadataConfig
from pipelines.status_text import _spans

StoreOrPath = Union[metadata_store.MetadataStore, str, MetadataConfig]


def connect(store_or_path: StoreOrPath) -> metadata_store.MetadataStore:
    """A store as is; a metadata target (a MetadataConfig, or the path of an existing metadata.sqlite)
    opened (a SQLite file is never created: LineageError)."""
    if not isinstance(store_or_path, (str, os.PathLike, MetadataConfig)):
        return store_or_path
    target = store_or_path if isinstance(store_or_path, MetadataConfig) else os.fspath(store_or_path)
    if not store_exists(target):
        raise LineageError(f"no ML Metadata at {describe(target)}: nothing has run in this home yet "
                           f"(run `driftline run --home ...` first)")
    return open_store(target)


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
    records = [_model_record(m, blessings.get(m.id), pushes.get(m.id), rollbacks.get(m.id, []), latencies.get(m.id))
               for m in found[MODEL_TYPE]]
    spans = ingested_spans(store, pipeline_name)
    if any(s.joined for s in spans):
        fresh = click_freshness(records, spans)
        records = [dataclasses.replace(m, click_freshness=fresh.get(m.model_id)) for m in records]
    return records


def click_freshness(records: Sequence[ModelRecord], spans: Sequence[Any]) -> Dict[int, ClickFreshness]:
    """{pushed model id: its ClickFreshness}: each joined span's outcomes count toward the first pushed model
    (by push time) that trained on the span, new or replayed; a model rejected by the gate serves nothing."""
    by_span: Dict[int, List[Any]] = {}
    for s in spans:
        if s.joined:
            by_span.setdefault(s.span, []).append(s)
    served: set = set()
    result: Dict[int, ClickFreshness] = {}
    pushed = sorted((m for m in records if m.pushed_version is not None and m.pushed_at_ms is not None),
                    key=lambda m: (m.pushed_at_ms, m.model_id))
    for m in pushed:
        first = sorted(s for s in set(m.trained_spans) if s in by_span and s not in served)
        if not first:
            continue
        served.update(first)
        points: List[tuple] = []  # (outcome time, weight)
        count = 0
        for span in first:
            for record in by_span[span]:
                q, n = record.outcome_time_quantiles_ms, record.attributed_count or 0
                if q and n:
                    points += [(t, n / len(q)) for t in q]
                    count += n
        median = newest = oldest = None
        if points:
            points.sort()
            half, acc = sum(w for _, w in points) / 2.0, 0.0
            for t, w in points:
                acc += w
                if acc >= half:
                    median = (m.pushed_at_ms - t) / 1000.0
                    break
            newest, oldest = (m.pushed_at_ms - points[-1][0]) / 1000.0, (m.pushed_at_ms - points[0][0]) / 1000.0
        result[m.model_id] = ClickFreshness(model_id=m.model_id, pushed_version=m.pushed_version,
                                            pushed_at_ms=m.pushed_at_ms, spans=first, outcomes=count,
                                            median_seconds=median, newest_seconds=newest, oldest_seconds=oldest)
    return result


def join_status(spans: Sequence[Any]) -> Optional[JoinStatus]:
    """Join mode (None otherwise): the watermarks the newest joined span recorded, and the dead-letter totals."""
    joined = [s for s in spans if s.joined]
    if not joined:
        return None
    newest = max(joined, key=lambda s: (s.create_time_ms, s.artifact_id, s.span))
    imp, out = newest.impressions_watermark_ms, newest.outcomes_watermark_ms
    held = None if imp == out else ("impressions" if imp is None or (out is not None and imp < out) else "outcomes")
    return JoinStatus(impressions_watermark_ms=imp, outcomes_watermark_ms=out, held_back_by=held,
                      newest_span=max(s.span for s in joined),
                      attributed_outcomes=sum(s.attributed_count or 0 for s in joined),
                      late_outcomes=sum(s.late_outcome_count for s in joined),
                      orphan_outcomes=sum(s.orphan_outcome_count for s in joined))


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
        trained_examples_by_role=_json(prop(m, TRAINED_EXAMPLES_BY_ROLE_PROPERTY), {}),
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
            failed_checks=list(verdict.get("failed_checks") or []),
            gate_tests=dict(verdict.get("tests") or {}), off_policy=dict(verdict.get("off_policy") or {}))
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


def serving(store_or_path: StoreOrPath, serving_dir: str, pipeline_name: str = "driftline",
            version: Optional[int] = None) -> ServingInfo:
    """The version serving in `serving_dir` (its highest, or `version`) and the model behind it.

    `version`: the one a server actually loaded (`driftline serve` keeps the
    version it has while a newer one fails to load).

    The model is the one named by the newest `PushedModel` that put this
    version into this folder (a push, or a rollback, which records the model it
    serves again). If the home moved since, a PushedModel of the same version
    number in this pipeline is taken instead.
    """
    from components.blessing_pusher import serving as serving_lib  # plain folder code, no TFX

    if serving_lib.is_local(serving_dir) and not serving_dir.startswith("file://"):
        serving_dir = os.path.abspath(serving_dir)
    versions = serving_lib.versions(serving_dir)
    if version is None:
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
    exists = store_exists(config.metadata_connection)
    if not exists:
        empty_serving = ServingInfo(serving_dir=os.path.abspath(config.serving_dir), versions=[], version=None,
                                    model_id=None)
        return Status(home=config.home, pipeline_name=config.pipeline_name, now_ms=now_ms, metadata_exists=False,
                      serving=empty_serving, newest_event_ms=None, freshness_seconds=None, last_cycle=None,
                      spans_ingested=0, events_ingested=0, late_events=0, dead_lettered_events=0, newest_span=None,
                      models_trained=0, models_blessed=0, models_rejected=0, pushes=0, rollbacks=0,
                      controller=controller)
    store = connect(config.metadata_connection)
    records = models(store, config.pipeline_name)
    by_id = {m.model_id: m for m in records}
    served = serving(store, config.serving_dir, config.pipeline_name)
    serving_model = by_id.get(served.model_id) if served.model_id is not None else None
    newest_event_ms = serving_model.max_event_time_ms if serving_model is not None else None
    spans = ingested_spans(store, config.pipeline_name)
    cycle = last_cycle(store, config.pipeline_name)
    failure = last_failure(store, config.pipeline_name)
    estimated = max((m for m in records if m.off_policy), key=lambda m: m.model_id, default=None)
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
        pin=current_pin(store, config.pipeline_name), join=join_status(spans),
        click_freshness=serving_model.click_freshness if serving_model is not None else None,
        off_policy=estimated.off_policy if estimated is not None else {},
        off_policy_model_id=estimated.model_id if estimated is not None else None)
