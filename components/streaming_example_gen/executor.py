"""StreamingExampleGen executor: a thin `Do()` around `ingest.run_ingest`."""
from __future__ import annotations

import os
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components.event_schema import EventSchema
from components.streaming_example_gen import ingest, sources, windowing
from components.streaming_example_gen.committed_state import COMMITTED_STATE_PROPERTY
from components.streaming_example_gen.driver import COMMITTED_STATE_KEY

EXAMPLES_KEY = "examples"


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        if COMMITTED_STATE_KEY not in exec_properties:
            raise RuntimeError(
                "StreamingExampleGen ran without its driver, so it cannot know the committed position. "
                "Run it through a TFX orchestrator that honours component drivers (LocalDagRunner, BeamDagRunner).")
        state = windowing.CommittedState.from_json(exec_properties[COMMITTED_STATE_KEY])
        window = windowing.Window(span_ms=exec_properties["span_seconds"] * 1000,
                                  allowed_lateness_ms=exec_properties["allowed_lateness_seconds"] * 1000,
                                  eval_fraction=exec_properties["eval_fraction"])
        template = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        source = sources.from_exec_properties(exec_properties)
        run = ingest.run_ingest(
            self._make_beam_pipeline, source=source,
            schema=EventSchema.from_json(exec_properties["event_schema"]),
            window=window, state=state, output_root=template.uri, work_dir=self._get_tmp_dir())
        artifacts = build_artifacts(template, run, window)
        for artifact in artifacts:
            ingest.ensure_every_split_has_a_file(artifact.uri)
        output_dict[EXAMPLES_KEY][:] = artifacts
        logging.info("StreamingExampleGen: read %s of %s from %s to %s; emitted spans %s; committed %s",
                     run.plan.describe(), source.describe(), run.plan.start, run.plan.end,
                     [a.span for a in output_dict[EXAMPLES_KEY]], run.committed.to_json())


def build_artifacts(template: types.Artifact, run: ingest.IngestRun, window: windowing.Window) -> List[types.Artifact]:
    """One `Examples` artifact per emitted span, all carrying the run's committed state."""
    if run.result is None or not run.result.decision.emits:
        return []
    artifacts = []
    first_span = run.result.decision.first_span
    for span in sorted(run.result.decision.emitted_spans):
        stats = run.result.spans.get(span, windowing.SpanStats())
        artifact = type(template)()
        artifact.uri = ingest.span_dir(template.uri, span)
        artifact.span = span
        artifact.version = 0
        artifact.split_names = artifact_utils.encode_split_names(list(windowing.SPLITS))
        examples_utils.set_payload_format(artifact, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(artifact, "tfrecords_gzip")
        start_ms, end_ms = window.span_bounds(span)
        props = {
            COMMITTED_STATE_PROPERTY: run.committed.to_json(),
            "start_position": run.plan.start.to_json(),
            "end_position": run.plan.end.to_json(),
            "event_count": stats.events,
            "late_count": stats.late,
            "train_count": stats.train,
            "eval_count": stats.eval,
            "dead_letter_count": run.result.dead_letters if span == first_span else 0,
            "min_event_time_ms": stats.min_event_time_ms if stats.min_event_time_ms is not None else -1,
            "max_event_time_ms": stats.max_event_time_ms if stats.max_event_time_ms is not None else -1,
            "span_start_ms": start_ms,
            "span_end_ms": end_ms,
            "watermark_ms": run.committed.max_event_time_ms - window.allowed_lateness_ms,
            "ingest_wall_seconds": round(run.wall_seconds, 3),
            "dead_letter_uri": os.path.join(artifact.uri, ingest.DEAD_LETTER_DIR) if span == first_span else "",
        }
        for key, value in props.items():
            if isinstance(value, str):
                artifact.set_string_custom_property(key, value)
            elif isinstance(value, float):
                artifact.set_float_custom_property(key, value)
            else:
                artifact.set_int_custom_property(key, int(value))
        artifacts.append(artifact)
    return artifacts
