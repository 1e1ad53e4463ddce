"""Prometheus metrics of the controller (`driftline run --continuous --metrics-port P`).

Two kinds of values, kept apart on purpose:

* What ML Metadata says (`Snapshot`, read with `lineage.status` and
  `lineage.models` at start and after every cycle): serving version,
  freshness, time of the last push, the gate's candidate AUC of the last
  judged model, the event counters (ingested, late, dead-lettered, from the
  future, too late, duplicate) and the model counters (trained, blessed,
  refused, pushed, rolled back), failures in a row, quarantined spans. These
  are the truth whoever ran the cycles, so a restarted controller reports
  them at once, and the counters never go back when it restarts.
* What this process saw: cycles by outcome (`ok`, `failed`, `nothing_to_do`:
  a poll that found no closed span, which ML Metadata does not record) and
  the cycle duration histogram. Ordinary Prometheus counters: they start at
  zero with the process and `rate()` handles the reset.

Freshness (now minus the newest event time the serving model learned from)
is computed when scraped, so it grows between cycles as it really does.
A failed read of ML Metadata keeps the previous snapshot (its age is
`driftline_metadata_read_timestamp_seconds`) and never stops the controller.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

OUTCOMES = ("ok", "failed", "nothing_to_do")
# Cycles take seconds (a resumed cycle on a small span) to many minutes (Dataflow, big spans).
DURATION_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)


class MetricsError(RuntimeError):
    """The metrics server cannot start (the port is taken, the host is not this machine's)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The ML Metadata side of the metrics, at `read_at_s`."""

    read_at_s: float
    serving_version: Optional[int] = None
    serving_model_id: Optional[int] = None
    newest_event_ms: Optional[int] = None
    last_push_ms: Optional[int] = None
    candidate_auc: Optional[float] = None
    candidate_model_id: Optional[int] = None
    spans_ingested: int = 0
    events_ingested: int = 0
    late_events: int = 0
    dead_lettered_events: int = 0
    future_events: int = 0
    too_late_events: int = 0
    duplicate_events: int = 0
    models_trained: int = 0
    models_blessed: int = 0
    models_refused: int = 0
    pushes: int = 0
    rollbacks: int = 0
    consecutive_failures: int = 0
    quarantined_spans: int = 0


def snapshot(status: Any, records: Any, now_s: Optional[float] = None) -> Snapshot:
    """A Snapshot from a `lineage.Status` and the `lineage.models` records of the same store."""
    from pipelines import lineage

    judged = [m for m in records if m.blessed is not None]
    last_judged = max(judged, key=lambda m: m.model_id) if judged else None
    pushes = [e["at_ms"] for e in lineage.serving_events(records) if e["at_ms"] is not None]
    auc = last_judged.candidate_auc if last_judged is not None else None
    return Snapshot(
        read_at_s=time.time() if now_s is None else now_s,
        serving_version=status.serving.version, serving_model_id=status.serving.model_id,
        newest_event_ms=status.newest_event_ms, last_push_ms=max(pushes, default=None),
        candidate_auc=auc if auc is not None and math.isfinite(auc) else None,
        candidate_model_id=last_judged.model_id if last_judged is not None else None,
        spans_ingested=status.spans_ingested, events_ingested=status.events_ingested,
        late_events=status.late_events, dead_lettered_events=status.dead_lettered_events,
        future_events=status.future_events, too_late_events=status.too_late_events,
        duplicate_events=status.duplicate_events, models_trained=status.models_trained,
        models_blessed=status.models_blessed, models_refused=status.models_rejected, pushes=status.pushes,
        rollbacks=status.rollbacks, consecutive_failures=status.consecutive_failures,
        quarantined_spans=len(status.quarantined_spans))


# name (without _total), help, Snapshot field
_COUNTERS = (
    ("driftline_spans_ingested", "Spans published by StreamingExampleGen (ML Metadata)", "spans_ingested"),
    ("driftline_events_ingested", "Events in published spans (ML Metadata)", "events_ingested"),
    ("driftline_events_late", "Late events, folded into the next span (ML Metadata)", "late_events"),
    ("driftline_events_dead_lettered", "Lines dead-lettered by ingestion, all reasons (ML Metadata)",
     "dead_lettered_events"),
    ("driftline_events_future", "Dead letters refused as from the future (ML Metadata)", "future_events"),
    ("driftline_events_too_late", "Dead letters refused as too late (ML Metadata)", "too_late_events"),
    ("driftline_events_duplicate", "Repeated event ids kept out of the examples (ML Metadata)", "duplicate_events"),
    ("driftline_models_trained", "Models trained (ML Metadata)", "models_trained"),
    ("driftline_models_blessed", "Models the gate blessed (ML Metadata)", "models_blessed"),
    ("driftline_models_refused", "Models the gate refused (ML Metadata)", "models_refused"),
    ("driftline_pushes", "Models pushed to serving (ML Metadata)", "pushes"),
    ("driftline_rollbacks", "Rollbacks (ML Metadata)", "rollbacks"),
)


class _MetadataCollector(Collector):
    def __init__(self, owner: "ControllerMetrics"):
        self.owner = owner

    def collect(self) -> Iterator[Any]:
        snap = self.owner.snapshot
        if snap is None:
            return
        read = GaugeMetricFamily("driftline_metadata_read_timestamp_seconds",
                                 "When these values were read from ML Metadata (Unix time)")
        read.add_metric([], snap.read_at_s)
        yield read
        for name, help_text, value in (
                ("driftline_serving_version", "The version in the serving folder (its highest)", snap.serving_version),
                ("driftline_serving_model_id", "The ML Metadata Model artifact id behind the serving version",
                 snap.serving_model_id),
                ("driftline_serving_newest_event_timestamp_seconds",
                 "The newest event time the serving model learned from (Unix time)",
                 None if snap.newest_event_ms is None else snap.newest_event_ms / 1000.0),
                ("driftline_freshness_seconds",
                 "Now minus the newest event time the serving model learned from",
                 None if snap.newest_event_ms is None else time.time() - snap.newest_event_ms / 1000.0),
                ("driftline_last_push_timestamp_seconds", "When serving last got a new version, push or rollback "
                 "(Unix time)", None if snap.last_push_ms is None else snap.last_push_ms / 1000.0),
                ("driftline_gate_candidate_auc", "The gate's candidate AUC for the newest judged model",
                 snap.candidate_auc),
                ("driftline_consecutive_failures", "Cycles failed since the last one that completed",
                 snap.consecutive_failures),
                ("driftline_quarantined_spans", "Spans quarantined after failing cycles", snap.quarantined_spans)):
            # Unknown (nothing serves yet, nothing judged): no sample, rather than a made-up 0.
            if value is not None:
                gauge = GaugeMetricFamily(name, help_text)
                gauge.add_metric([], float(value))
                yield gauge
        for name, help_text, field in _COUNTERS:
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], float(getattr(snap, field)))
            yield counter


class ControllerMetrics:
    """The controller's metrics in their own registry (two controllers in one process do not mix)."""

    def __init__(self, config: Any, registry: Optional[CollectorRegistry] = None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.snapshot: Optional[Snapshot] = None
        self.cycles = Counter("driftline_cycles", "Cycles this controller process ran or skipped, by outcome "
                              "(nothing_to_do: a poll found no closed span and launched nothing)", ["outcome"],
                              registry=self.registry)
        self.duration = Histogram("driftline_cycle_duration_seconds", "Wall time of the cycles this controller "
                                  "process ran, by outcome", ["outcome"], buckets=DURATION_BUCKETS,
                                  registry=self.registry)
        for outcome in OUTCOMES:
            self.cycles.labels(outcome)
        self.registry.register(_MetadataCollector(self))

    def refresh(self) -> Optional[str]:
        """Reads ML Metadata into the snapshot; returns why not (the previous snapshot stays), None when it did."""
        from pipelines import lineage

        try:
            status = lineage.status(self.config)
            records = lineage.models(lineage.connect(self.config.metadata_connection), self.config.pipeline_name) \
                if status.metadata_exists else []
            self.snapshot = snapshot(status, records)
        except Exception as e:  # noqa: BLE001: metrics must never stop the controller
            return f"{type(e).__name__}: {e}"
        return None

    def cycle_ok(self, seconds: float) -> None:
        self.cycles.labels("ok").inc()
        self.duration.labels("ok").observe(seconds)

    def cycle_failed(self, seconds: Optional[float]) -> None:
        """`seconds`: None when the cycle failed before TFX was launched (the source could not be read)."""
        self.cycles.labels("failed").inc()
        if seconds is not None:
            self.duration.labels("failed").observe(seconds)

    def nothing_to_do(self) -> None:
        self.cycles.labels("nothing_to_do").inc()

    @contextlib.contextmanager
    def serve(self, host: str, port: int) -> Iterator[str]:
        """Serves /metrics on host:port (prometheus_client's HTTP server, a daemon thread) for the block;
        yields "host:port"."""
        from prometheus_client import start_http_server

        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise MetricsError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}. Give --metrics-port "
                               "a free port (or 0 for none) and --metrics-host an address of this machine") from None
        try:
            yield f"{host}:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
