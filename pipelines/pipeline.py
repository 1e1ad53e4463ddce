"""Pipeline composition from one `DriftlineConfig`."""
from __future__ import annotations

from typing import List

from tfx import v1 as tfx

from components.streaming_example_gen import StreamingExampleGen
from pipelines.config import DriftlineConfig
from pipelines.metadata import STREAMING_EXAMPLE_GEN_ID


def create_ingest_pipeline(config: DriftlineConfig, with_statistics: bool = False) -> tfx.dsl.Pipeline:
    """StreamingExampleGen alone, or followed by stock StatisticsGen and SchemaGen.

    Stock StatisticsGen reads one `Examples` artifact, while a run may emit
    several spans; it is given the newest span of the run.
    """
    config.validate()
    example_gen = StreamingExampleGen.from_config(config.source, config.window).with_id(STREAMING_EXAMPLE_GEN_ID)
    components: List = [example_gen]
    if with_statistics:
        from tfx.dsl.input_resolution.canned_resolver_functions import latest_created

        newest_span = latest_created(example_gen.outputs["examples"], n=1)
        statistics_gen = tfx.components.StatisticsGen(examples=newest_span)
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
        components += [statistics_gen, schema_gen]
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path),
        beam_pipeline_args=config.beam.args(),
    )
