"""Passes the committed stream position from ML Metadata to the executor.

TFX's launcher gives a driver the MLMD connection before the executor runs;
the executor itself never needs one, so the Beam graph stays free of MLMD.
"""
from __future__ import annotations

import json
import time

from absl import logging
from tfx.dsl.components.base import base_driver
from tfx.orchestration import metadata
from tfx.orchestration.portable import base_driver as portable_base_driver
from tfx.orchestration.portable import data_types as portable_data_types
from tfx.proto.orchestration import driver_output_pb2

from components.streaming_example_gen.committed_state import recent_run_span_uris, latest_committed_state

COMMITTED_STATE_KEY = "committed_state"
# JSON list of the URIs of the spans in the dedup horizon (the newest emitted spans).
DEDUP_SPAN_URIS_KEY = "dedup_span_uris"
# The log is unbounded: the same committed state can precede new events, so
# a run must never be answered from TFX's cache. A fresh value per run keys it.
REQUESTED_AT_KEY = "requested_at_ms"


class StreamingExampleGenDriver(base_driver.BaseDriver, portable_base_driver.BaseDriver):
    """Adds exec properties `committed_state` (the JSON state of the newest published run) and
    `dedup_span_uris` (the spans whose event ids a new event must not repeat)."""

    def __init__(self, metadata_handle: metadata.Metadata):
        base_driver.BaseDriver.__init__(self, metadata_handle)
        portable_base_driver.BaseDriver.__init__(self, metadata_handle)

    def run(self, execution_info: portable_data_types.ExecutionInfo) -> driver_output_pb2.DriverOutput:
        pipeline_name = execution_info.pipeline_info.id
        node_id = execution_info.pipeline_node.node_info.id
        horizon = int(execution_info.exec_properties.get("dedup_horizon_runs") or 0)
        with self._mlmd_connection as m:
            state, artifact_id = latest_committed_state(m.store, pipeline_name, node_id)
            dedup_uris = recent_run_span_uris(m.store, pipeline_name, node_id, horizon)
        logging.info("StreamingExampleGen %s: committed state %s (from artifact %s)",
                     node_id, state.to_json(), artifact_id)
        result = driver_output_pb2.DriverOutput()
        result.exec_properties[COMMITTED_STATE_KEY].string_value = state.to_json()
        result.exec_properties[DEDUP_SPAN_URIS_KEY].string_value = json.dumps(dedup_uris)
        result.exec_properties[REQUESTED_AT_KEY].int_value = time.time_ns() // 1_000_000
        return result
