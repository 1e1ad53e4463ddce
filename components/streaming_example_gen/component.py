"""StreamingExampleGen: the spec and the component class."""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.event_schema import EventSchema
from components.streaming_example_gen import executor as executor_module
from components.streaming_example_gen.driver import StreamingExampleGenDriver
from components.streaming_example_gen.executor import Executor
from components.streaming_example_gen.config import KafkaConfig, SourceConfig, WindowConfig


class StreamingExampleGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "log_dir": ExecutionParameter(type=str),
        "event_schema": ExecutionParameter(type=str),  # EventSchema JSON
        "span_seconds": ExecutionParameter(type=int),
        "allowed_lateness_seconds": ExecutionParameter(type=int),
        "eval_fraction": ExecutionParameter(type=float),
        "chunk_bytes": ExecutionParameter(type=int),
        # Event-time bounds in seconds (windowing.py; absent: off), and the dedup horizon in ingest runs.
        "max_future_seconds": ExecutionParameter(type=int, optional=True),
        "max_lateness_seconds": ExecutionParameter(type=int, optional=True),
        "dedup_horizon_runs": ExecutionParameter(type=int, optional=True),
        # KafkaConfig JSON when the source is a Kafka topic (log_dir is then empty).
        "kafka_source": ExecutionParameter(type=str, optional=True),
        executor_module.DRIVERLESS_KEY: ExecutionParameter(type=int, optional=True),  # 0 / 1
    }
    INPUTS = {
        # Driverless runs only: the newest Examples this node published, which carry the committed position.
        executor_module.PREVIOUS_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}


class StreamingExampleGen(base_beam_component.BaseBeamComponent):
    """Cuts an append-only event log, or a Kafka topic, into event-time spans of `Examples`.

    Each run reads what arrived since the position committed in ML Metadata
    (a segment and byte offset, or per-partition Kafka offsets)
    and emits one `Examples` artifact (with TFX's `span` property and `train`
    / `eval` splits) for every span the watermark has closed. Malformed
    events, events from the future and events far too late go to a
    dead-letter folder inside the first emitted span, with their reason. An
    event whose id was already emitted (in this run, or in a span of the
    newest `dedup_horizon_runs` runs) is counted as a duplicate and kept out.

    Orchestrators that run no custom drivers and take one artifact per output
    (Vertex AI Pipelines) need `driverless=True` and `previous_examples`: a
    resolver of the newest `Examples` of this node (LatestArtifactStrategy).
    The position is then read from that artifact, and each run publishes
    exactly one span (the oldest closed one; later ones wait for the next
    run), or fails with NoClosedSpanError, publishing nothing, when none has
    closed.

    Example::

        example_gen = StreamingExampleGen(log_dir="events/", window=WindowConfig(span_seconds=600))
        statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
        # or: StreamingExampleGen(kafka=KafkaConfig(bootstrap_servers="broker:9092", topic="clicks"))
    """

    SPEC_CLASS = StreamingExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = StreamingExampleGenDriver

    def __init__(self, log_dir: str = "", schema: Optional[EventSchema] = None,
                 window: Optional[WindowConfig] = None, chunk_bytes: Optional[int] = None,
                 kafka: Optional[KafkaConfig] = None, driverless: bool = False,
                 previous_examples: Optional[types.BaseChannel] = None, dedup_horizon_runs: Optional[int] = None):
        source = SourceConfig(log_dir=log_dir, **({"schema": schema} if schema else {}),
                              **({"chunk_bytes": chunk_bytes} if chunk_bytes else {}),
                              **({"kind": "kafka", "kafka": kafka} if kafka is not None else {}))
        window = window or WindowConfig()
        source.validate()
        window.validate()
        if previous_examples is not None and not driverless:
            raise ValueError("previous_examples is read only by a driverless StreamingExampleGen (driverless=True); "
                             "with a driver the position comes from ML Metadata")
        spec = StreamingExampleGenSpec(
            log_dir=source.log_dir,
            event_schema=source.schema.to_json(),
            span_seconds=window.span_seconds,
            allowed_lateness_seconds=window.allowed_lateness_seconds,
            eval_fraction=window.eval_fraction,
            chunk_bytes=source.chunk_bytes,
            max_future_seconds=window.max_future_seconds,
            max_lateness_seconds=window.max_lateness_seconds,
            # The window's horizon, else the caller's (create_pipeline passes the replay window's size), else 1 run.
            dedup_horizon_runs=next(h for h in (window.dedup_horizon_runs, dedup_horizon_runs, 1) if h is not None),
            kafka_source=source.kafka.to_json() if source.kafka is not None else None,
            driverless=1 if driverless else None,
            previous_examples=previous_examples,
            examples=types.Channel(type=standard_artifacts.Examples),
        )
        super().__init__(spec=spec)

    @classmethod
    def from_config(cls, source: SourceConfig, window: WindowConfig, driverless: bool = False,
                    previous_examples: Optional[types.BaseChannel] = None,
                    dedup_horizon_runs: Optional[int] = None) -> "StreamingExampleGen":
        return cls(log_dir=source.log_dir, schema=source.schema, window=window, chunk_bytes=source.chunk_bytes,
                   kafka=source.kafka if source.kind == "kafka" else None,
                   driverless=driverless, previous_examples=previous_examples,
                   dedup_horizon_runs=dedup_horizon_runs)
