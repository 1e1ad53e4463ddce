"""JoinExampleGen: StreamingExampleGen's guarantees over two streams, impressions joined to their outcomes.

Each stream is an event log or a Kafka topic (join_config.JoinStreamConfig), read through
StreamingExampleGen's sources (sources.py); a topic's committed position is its per-partition offset vector.

Beside StreamingExampleGen, not inside it: the committed state is a different shape (two streams' positions,
the decided outcomes; join.JoinState), and a node's state must never be read as the other's. The anatomy is
the same: a driver reads the committed state from ML Metadata, a thin executor runs `join_run.run_join`,
and every emitted span is one `Examples` artifact carrying the new state.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, base_driver, executor_spec
from tfx.orchestration import metadata
from tfx.orchestration.portable import base_driver as portable_base_driver
from tfx.orchestration.portable import data_types as portable_data_types
from tfx.proto import example_gen_pb2
from tfx.proto.orchestration import driver_output_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components import lease, mlmd_vocabulary as vocab
from components.event_schema import EventSchema
from components.streaming_example_gen import ingest, join, join_run, windowing
from components.streaming_example_gen.committed_state import latest_committed_state_json, recent_run_span_uris
from components.streaming_example_gen.config import KafkaConfig, WindowConfig
from components.streaming_example_gen.driver import COMMITTED_STATE_KEY, DEDUP_SPAN_URIS_KEY, REQUESTED_AT_KEY
from components.streaming_example_gen.executor import name_for_publish
from components.streaming_example_gen.join_config import JoinConfig, JoinStreamConfig

EXAMPLES_KEY = "examples"
MARK_JOINED = "JoinExampleGen: joined"


class JoinExampleGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "join_config": ExecutionParameter(type=str),  # join_config_to_json
        "span_seconds": ExecutionParameter(type=int),
        "allowed_lateness_seconds": ExecutionParameter(type=int),
        "eval_fraction": ExecutionParameter(type=float),
        # None: no bound on event time (WindowConfig.max_future_seconds).
        "max_future_seconds": ExecutionParameter(type=int, optional=True),
        "chunk_bytes": ExecutionParameter(type=int),
        # Runs whose emitted impression ids tell a late outcome from an orphan.
        "dedup_horizon_runs": ExecutionParameter(type=int),
        # Online evaluation on: the joined field whose value > 0 is a success; each span's Examples then carry
        # each arm's counts per challenger (`arm_counts`). Absent: not counted.
        "reward_field": ExecutionParameter(type=str, optional=True),
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}


def join_config_to_json(config: JoinConfig) -> str:
    d = {k: v for k, v in vars(config).items() if k not in ("impressions", "outcomes")}
    d["counted_types"] = list(config.counted_types)
    d["drop_fields"] = list(config.drop_fields)
    for name in ("impressions", "outcomes"):
        stream = getattr(config, name)
        d[name] = {"log_dir": stream.log_dir, "schema": json.loads(stream.schema.to_json())}
        if stream.is_kafka:
            # Names of the secrets' variables and files only (KafkaConfig holds no value): safe in ML Metadata.
            d[name].update(kind=stream.kind, kafka=json.loads(stream.kafka.to_json()))
    return json.dumps(d, sort_keys=True)


def join_config_from_json(text: str) -> JoinConfig:
    d = json.loads(text)
    for name in ("impressions", "outcomes"):
        stream = d[name]
        kafka = stream.get("kafka")
        d[name] = JoinStreamConfig(stream["log_dir"], EventSchema.from_json(json.dumps(stream["schema"])),
                                   kind=stream.get("kind", "event_log"),
                                   kafka=None if kafka is None else KafkaConfig.from_json(json.dumps(kafka)))
    d["counted_types"] = tuple(d["counted_types"])
    d["drop_fields"] = tuple(d.get("drop_fields", ()))
    return JoinConfig(**d)


class JoinExampleGenDriver(base_driver.BaseDriver, portable_base_driver.BaseDriver):
    """Adds `committed_state` (the join state of the newest published run) and `dedup_span_uris`."""

    def __init__(self, metadata_handle: metadata.Metadata):
        base_driver.BaseDriver.__init__(self, metadata_handle)
        portable_base_driver.BaseDriver.__init__(self, metadata_handle)

    def run(self, execution_info: portable_data_types.ExecutionInfo) -> driver_output_pb2.DriverOutput:
        pipeline_name = execution_info.pipeline_info.id
        node_id = execution_info.pipeline_node.node_info.id
        horizon = int(execution_info.exec_properties.get("dedup_horizon_runs") or 0)
        with self._mlmd_connection as m:
            text, artifact_id = latest_committed_state_json(m.store, pipeline_name, node_id)
            uris = recent_run_span_uris(m.store, pipeline_name, node_id, horizon)
        state = join.JoinState.from_json(text)  # refuses a single-stream state, naming the fix
        logging.info("JoinExampleGen %s: committed state %s (from artifact %s)", node_id, state.to_json(), artifact_id)
        result = driver_output_pb2.DriverOutput()
        result.exec_properties[COMMITTED_STATE_KEY].string_value = state.to_json()
        result.exec_properties[DEDUP_SPAN_URIS_KEY].string_value = json.dumps(uris)
        # The logs are unbounded: the same state can precede new events, so no run is answered from a cache.
        result.exec_properties[REQUESTED_AT_KEY].int_value = time.time_ns() // 1_000_000
        return result


class JoinExecutor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        if COMMITTED_STATE_KEY not in exec_properties:
            raise RuntimeError("JoinExampleGen ran without its driver, so it cannot know the committed positions: "
                               "run it through a TFX orchestrator that honours component drivers (LocalDagRunner)")
        config = join_config_from_json(exec_properties["join_config"])
        state = join.JoinState.from_json(exec_properties[COMMITTED_STATE_KEY])
        window = windowing.Window(span_ms=exec_properties["span_seconds"] * 1000,
                                  allowed_lateness_ms=exec_properties["allowed_lateness_seconds"] * 1000,
                                  eval_fraction=exec_properties["eval_fraction"],
                                  max_future_ms=(None if exec_properties.get("max_future_seconds") is None
                                                 else exec_properties["max_future_seconds"] * 1000))
        template = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        run = join_run.run_join(config, window, state, template.uri,
                                dedup_span_uris=json.loads(exec_properties.get(DEDUP_SPAN_URIS_KEY) or "[]"),
                                chunk_bytes=exec_properties["chunk_bytes"])
        artifacts = []
        for span in run.result.emitted_spans:
            artifact = type(template)()
            artifact.uri = ingest.span_dir(template.uri, span)
            artifact.span = span
            artifact.version = 0
            artifact.split_names = artifact_utils.encode_split_names(list(windowing.SPLITS))
            examples_utils.set_payload_format(artifact, example_gen_pb2.FORMAT_TF_EXAMPLE)
            examples_utils.set_file_format(artifact, "tfrecords_gzip")
            props = join_run.span_properties(run, window, span, config,
                                             reward_field=exec_properties.get("reward_field") or None)
            props["dead_letter_uri"] = (os.path.join(artifact.uri, ingest.DEAD_LETTER_DIR)
                                        if span == min(run.result.emitted_spans) else "")
            vocab.set_custom_properties(artifact, props)
            artifacts.append(artifact)
        # Idempotent publish, as StreamingExampleGen's: each span is named after the pipeline, the node, the span
        # and both streams' start positions, so ML Metadata refuses a second publish of a span from the same
        # committed state (two controllers that read it) as a whole.
        name_for_publish(artifacts, self._context, run.start_position)
        output_dict[EXAMPLES_KEY][:] = artifacts
        # Under a controller's lease (ML Metadata on MySQL): only the current holder publishes a span.
        lease.fence(f"JoinExampleGen's spans {[a.span for a in artifacts]}")
        logging.info("%s impressions from %s, outcomes from %s; join watermark %s (held back by %s); emitted "
                     "spans %s; %d dead letters %s; committed %s", MARK_JOINED, run.imp_start, run.out_start,
                     run.result.join_watermark_ms, run.result.held_back_by or "neither",
                     list(run.result.emitted_spans), len(run.result.dead_letters),
                     run.result.dead_letter_counts(), run.committed.to_json())


class JoinExampleGen(base_beam_component.BaseBeamComponent):
    """Joins an impressions stream to an outcomes stream (each an event log or a Kafka topic) into event-time
    spans of labelled `Examples`.

    A span (the impressions' span) is emitted once every impression in it has a closed attribution window
    under the watermarks of both streams; outcomes that cannot be attributed are dead letters with their
    reason in the first span a run emits, counted on its artifact. Exactly once: the positions of both
    streams (a log's segment and offset, a topic's per-partition offsets) and the outcomes still undecided
    are committed on the artifacts in ML Metadata (join.JoinState).

    Example::

        JoinExampleGen(JoinConfig(impressions=JoinStreamConfig("impressions/", imp_schema),
                                  outcomes=JoinStreamConfig("outcomes/", out_schema),
                                  attribution_window_seconds=600), window=WindowConfig(span_seconds=600))
    """

    SPEC_CLASS = JoinExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(JoinExecutor)
    DRIVER_CLASS = JoinExampleGenDriver

    def __init__(self, config: JoinConfig, window: Optional[WindowConfig] = None, chunk_bytes: int = 8 << 20,
                 dedup_horizon_runs: int = 4, reward_field: Optional[str] = None):
        window = window or WindowConfig()
        config.validate()
        window.validate()
        if dedup_horizon_runs < 1:
            raise ValueError("dedup_horizon_runs must be >= 1: the impressions of the newest runs' spans tell a "
                             "late outcome from an orphan")
        super().__init__(spec=JoinExampleGenSpec(
            join_config=join_config_to_json(config), span_seconds=window.span_seconds,
            allowed_lateness_seconds=window.allowed_lateness_seconds, eval_fraction=window.eval_fraction,
            max_future_seconds=window.max_future_seconds, chunk_bytes=chunk_bytes, dedup_horizon_runs=dedup_horizon_runs,
            reward_field=reward_field, examples=types.Channel(type=standard_artifacts.Examples)))
