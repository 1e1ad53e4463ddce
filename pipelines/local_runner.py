"""Runs driftline pipelines locally: TFX LocalDagRunner, Beam DirectRunner, SQLite ML Metadata."""
from __future__ import annotations

import os

from tfx import v1 as tfx

from pipelines.config import DriftlineConfig


def run(pipeline: tfx.dsl.Pipeline, config: DriftlineConfig) -> None:
    os.makedirs(config.home, exist_ok=True)
    tfx.orchestration.LocalDagRunner().run(pipeline)


def run_ingest(config: DriftlineConfig, with_statistics: bool = False) -> None:
    """One ingest run: reads what arrived since the committed position, emits closed spans."""
    from pipelines.pipeline import create_ingest_pipeline

    run(create_ingest_pipeline(config, with_statistics=with_statistics), config)
