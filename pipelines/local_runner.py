"""Runs driftline pipelines locally: TFX LocalDagRunner, Beam DirectRunner, ML Metadata (SQLite, or MySQL per `config.metadata`)."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import List, Optional

from tfx import v1 as tfx

from pipelines.config import DriftlineConfig

log = logging.getLogger("driftline.local_runner")


def preflight(config: DriftlineConfig) -> None:
    """Fails fast, before TFX records a failed execution, on a source that cannot be read.

    Raises EventLogError (KafkaSourceError for a topic) with what to fix.
    """
    from components.streaming_example_gen import sources

    if config.join is not None:
        # Both streams of the join: a wrong folder, an unreachable broker or a missing topic stops here.
        from components.event_log import EventLogError
        from components.streaming_example_gen import join_run

        for name in join_run.STREAMS:
            source = join_run.stream_source(getattr(config.join, name), name, config.source.chunk_bytes)
            try:
                source.preflight()
            except EventLogError as e:  # KafkaSourceError too: the same error, naming the stream
                raise join_run.named_error(name, source, e) from e
        return
    sources.from_config(config.source).preflight()


def run(pipeline: tfx.dsl.Pipeline, config: DriftlineConfig) -> None:
    preflight(config)
    os.makedirs(config.home, exist_ok=True)
    _persist_config(config)
    from pipelines.config_history import recorded

    # The run's effective config, recorded in ML Metadata once the run ends (pipelines/config_history.py).
    with recorded(config):
        tfx.orchestration.LocalDagRunner().run(pipeline)


def _persist_config(config: DriftlineConfig) -> None:
    """The home's driftline.yaml at its first run (pipelines/config_file.py: persist_config)."""
    import yaml

    from pipelines.config_file import persist_config

    try:
        persist_config(config)
    except (OSError, yaml.YAMLError) as e:
        # A setting YAML cannot hold (an object in trainer.model, say) costs the file, not the cycle:
        # commands then need --config to see this pipeline.
        log.warning("could not write %s/driftline.yaml (%s); pass --config FILE to commands on this home",
                    config.home, e)


def run_ingest(config: DriftlineConfig, with_statistics: bool = False) -> None:
    """One ingest run: reads what arrived since the committed position, emits closed spans."""
    from pipelines.pipeline import create_ingest_pipeline

    run(create_ingest_pipeline(config, with_statistics=with_statistics), config)


@dataclasses.dataclass
class CycleReport:
    """One cycle, as ML Metadata recorded it."""

    run_id: str
    wall_seconds: float
    spans: List[int]
    events: int
    start: Optional[str] = None
    start_reason: Optional[str] = None
    model_id: Optional[int] = None
    train_seconds: Optional[float] = None
    candidate_auc: Optional[float] = None
    baseline_auc: Optional[float] = None
    blessed: Optional[bool] = None
    reason: Optional[str] = None
    pushed_version: Optional[str] = None
    pushed_at_ms: Optional[int] = None
    newest_event_ms: Optional[int] = None
    # The LatencyValidator's verdict and request latency (None: it did not run or did not test).
    latency_blessed: Optional[bool] = None
    latency_reason: Optional[str] = None
    latency_p99_ms: Optional[float] = None
    # A resumed cycle: its spans were published by an interrupted one.
    resumed: bool = False
    # Join mode, a pushed model: from the clicks of the spans it served first to its push (ClickFreshness).
    click_freshness_median_seconds: Optional[float] = None
    click_freshness_newest_seconds: Optional[float] = None
    click_freshness_oldest_seconds: Optional[float] = None
    clicks_served: Optional[int] = None

    @property
    def trained(self) -> bool:
        return self.model_id is not None


def cycle_report(config: DriftlineConfig, wall_seconds: float) -> CycleReport:
    from pipelines import pipeline as p
    from pipelines.metadata import (RESUME_RESOLVER_ID, STREAMING_EXAMPLE_GEN_ID, latest_run_context, open_store,
                                    prop, run_outputs)

    store = open_store(config.metadata_connection)
    run_ctx = latest_run_context(store)
    outputs = run_outputs(store, config.pipeline_name, run_ctx)
    examples = outputs.get(STREAMING_EXAMPLE_GEN_ID, {}).get("outputs", {}).get("examples", [])
    resumed = RESUME_RESOLVER_ID in outputs
    if resumed:
        examples = outputs[RESUME_RESOLVER_ID].get("outputs", {}).get("examples", [])
    report = CycleReport(run_id=run_ctx.name, wall_seconds=round(wall_seconds, 1),
                         spans=sorted(prop(a, "span") for a in examples),
                         events=sum(prop(a, "event_count", 0) for a in examples), resumed=resumed)
    models = outputs.get(p.TRAINER_ID, {}).get("outputs", {}).get("model", [])
    if models:
        m = models[0]
        report.model_id, report.start, report.start_reason = m.id, prop(m, "start"), prop(m, "start_reason")
        report.train_seconds = prop(m, "train_wall_seconds")
        report.newest_event_ms = prop(m, "max_event_time_ms")
    blessings = outputs.get(p.EVALUATOR_ID, {}).get("outputs", {}).get("blessing", [])
    if blessings:
        b = blessings[0]
        report.blessed = prop(b, "blessed") == 1
        report.reason = prop(b, "reason")
        report.candidate_auc = prop(b, "candidate_auc")
        baseline = prop(b, "baseline_auc")
        report.baseline_auc = None if baseline is None or baseline < 0 else baseline
    latency = outputs.get(p.LATENCY_VALIDATOR_ID, {}).get("outputs", {}).get("blessing", [])
    if latency:
        b = latency[0]
        report.latency_blessed = prop(b, "blessed") == 1
        report.latency_reason = prop(b, "reason")
        report.latency_p99_ms = prop(b, "p99_ms")
    pushed = outputs.get(p.PUSHER_ID, {}).get("outputs", {}).get("pushed_model", [])
    if pushed and prop(pushed[0], "pushed") == 1:
        report.pushed_version = prop(pushed[0], "pushed_version")
        report.pushed_at_ms = prop(pushed[0], "pushed_at_ms")
        if config.join is not None and report.model_id is not None:
            from pipelines.lineage_queries import models

            fresh = next((m.click_freshness for m in models(store, config.pipeline_name)
                          if m.model_id == report.model_id), None)
            if fresh is not None:
                report.click_freshness_median_seconds = fresh.median_seconds
                report.click_freshness_newest_seconds = fresh.newest_seconds
                report.click_freshness_oldest_seconds = fresh.oldest_seconds
                report.clicks_served = fresh.outcomes
    return report


def run_cycle(config: DriftlineConfig, resume: bool = False) -> CycleReport:
    """One cycle: whatever spans have closed are ingested, trained on, gated and maybe pushed.

    `resume=True`: a resumed cycle over the spans an interrupted one left untrained (pipelines/recovery.py).
    """
    from pipelines.pipeline import create_pipeline

    started = time.monotonic()
    run(create_pipeline(config, resume=resume), config)
    return cycle_report(config, time.monotonic() - started)
