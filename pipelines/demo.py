"""What `make demo` runs: the built-in stream, ingested run after run on a growing log.

Until the training cycle is composed, the demo shows the ingestion end to
end: a drifting stream with late and malformed events is simulated, then
StreamingExampleGen runs through TFX's LocalDagRunner with SQLite ML
Metadata, the log grows, and it runs again. The table is read back from MLMD.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, List, Optional

from pipelines.config import DriftlineConfig, default_config
from pipelines.simulator import SimulatorConfig, format_ms, simulate

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def span_table(config: DriftlineConfig, since_artifact_id: int = 0) -> str:
    from pipelines.metadata import describe_position, ingested_spans, open_store
    from pipelines.report import format_table

    rows = []
    for r in ingested_spans(open_store(config.metadata_path), config.pipeline_name):
        if r.artifact_id <= since_artifact_id:
            continue
        rows.append((r.span, format_ms(r.span_start_ms)[11:16], r.event_count, r.train_count, r.eval_count,
                     r.late_count, r.dead_letter_count, describe_position(r.start_position),
                     describe_position(r.end_position)))
    return format_table(("span", "start", "events", "train", "eval", "late", "dead-letter", "read from",
                         "read to"), rows)


def run_demo(home: str, minutes: float = 120.0, grow_minutes: float = 40.0, events_per_minute: int = 1000,
             progress: Progress = _stderr) -> List[str]:
    """Simulates, ingests, grows the log, ingests again; returns the printed tables."""
    from pipelines.local_runner import run_ingest
    from pipelines.metadata import ingested_spans, open_store

    config = default_config(home)
    log_dir = config.source.log_dir
    sim = SimulatorConfig(minutes=minutes, events_per_minute=events_per_minute, bad_fraction=0.001)
    tables = []
    if os.path.isdir(log_dir) and os.listdir(log_dir):
        progress(f"reusing the event log in {log_dir} (delete {home} to start over)")
    else:
        summary = simulate(log_dir, sim)
        progress(f"simulated {summary.events_written} events and {summary.bad_lines} malformed lines, "
                 f"{format_ms(summary.first_event_ms)} .. {format_ms(summary.last_event_ms)}, into {log_dir}")
    for run, grow in enumerate((0.0, grow_minutes), start=1):
        if grow:
            summary = simulate(log_dir, SimulatorConfig(minutes=grow, events_per_minute=events_per_minute,
                                                        bad_fraction=0.001), append=True)
            progress(f"the log grew by {summary.events_written} events to {format_ms(summary.last_event_ms)}")
        before = max([r.artifact_id for r in ingested_spans(open_store(config.metadata_path),
                                                            config.pipeline_name)], default=0)
        progress(f"ingest run {run}: StreamingExampleGen on LocalDagRunner, DirectRunner, SQLite MLMD ...")
        started = time.monotonic()
        run_ingest(config)
        progress(f"ingest run {run} took {time.monotonic() - started:.1f} s")
        table = span_table(config, since_artifact_id=before)
        tables.append(f"Ingest run {run}: spans published to ML Metadata ({config.metadata_path})\n{table}")
    return tables
