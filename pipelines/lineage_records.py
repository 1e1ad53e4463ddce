"""The records lineage and status return: plain frozen dataclasses, with their JSON forms.

Part of pipelines.lineage (which re-exports every name); read from ML Metadata by lineage_queries.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Dict, List, Mapping, Optional

from ml_metadata.proto import metadata_store_pb2

from components.blessing_pusher.rollback import Pin
from pipelines.failures import FailureRecord, QuarantinedSpan
from pipelines.metadata import prop


class LineageError(RuntimeError):
    """The store cannot be read as asked (a missing metadata file, an unknown model)."""


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
class ClickFreshness:
    """Freshness measured from the click (join mode): outcome event time -> the push of the first model trained
    on it, over the attributed outcomes of the spans this push served first (`spans`).

    `median_seconds` is over those outcomes (from each span's 21 stored outcome-time quantiles, weighted by
    its outcome count: exact to within one 5 % step of a span); `newest_seconds` runs from the newest
    click, `oldest_seconds` from the oldest.
    """

    model_id: int
    pushed_version: Optional[str]
    pushed_at_ms: int
    spans: List[int]
    outcomes: int
    median_seconds: Optional[float]
    newest_seconds: Optional[float]
    oldest_seconds: Optional[float]

    def describe(self) -> str:
        if self.median_seconds is None:
            return f"no attributed outcomes in span{'s' if len(self.spans) != 1 else ''} {self.spans}"
        return (f"median {self.median_seconds:.0f} s from click to serving (newest click {self.newest_seconds:.0f} s, "
                f"oldest {self.oldest_seconds:.0f} s) over {self.outcomes:,} clicks of span"
                f"{'s' if len(self.spans) != 1 else ''} {', '.join(map(str, self.spans))}")


@dataclasses.dataclass(frozen=True)
class JoinStatus:
    """Join mode: each stream's watermark when the join last emitted, and which one held it back."""

    impressions_watermark_ms: Optional[int]
    outcomes_watermark_ms: Optional[int]
    held_back_by: Optional[str]  # "impressions", "outcomes", or None when they agree
    newest_span: Optional[int]
    attributed_outcomes: int
    late_outcomes: int
    orphan_outcomes: int


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
    # The gate's paired tests against the baseline (the verdict's "tests": test, diff, lower, upper, p_value,
    # margin, confidence for "auc" and "log_loss"); empty for a first model or an older verdict.
    gate_tests: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # Join mode: the gate's off-policy estimate of the candidate's CTR (the verdict's "off_policy":
    # estimates, served, ratios with their bounds, the counts, gated and note); empty when none was made.
    off_policy: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # Serving: the pusher's push (not a rollback's), and the rollbacks that served this model again.
    pushed_version: Optional[str] = None
    pushed_at_ms: Optional[int] = None
    push_reason: Optional[str] = None
    rollbacks: List[RollbackRecord] = dataclasses.field(default_factory=list)
    # The LatencyValidator (the newest InfraBlessing whose model_id is this model); None: not load-tested.
    latency: Optional[LatencyRecord] = None
    # Retention deleted the model's files (pipelines/retention.py); this record stays.
    payload_deleted: bool = False
    # Join mode, a pushed model: freshness from the clicks of the spans it served first.
    click_freshness: Optional[ClickFreshness] = None

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
    # Join mode only: the streams' watermarks, and the serving model's freshness from the click.
    join: Optional[JoinStatus] = None
    click_freshness: Optional[ClickFreshness] = None
    # The newest judged model's off-policy estimate (ModelRecord.off_policy) and that model's id.
    off_policy: Dict[str, Any] = dataclasses.field(default_factory=dict)
    off_policy_model_id: Optional[int] = None

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


def _f(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)
