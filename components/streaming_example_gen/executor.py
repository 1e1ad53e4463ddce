"""StreamingExampleGen executor: a thin `Do()` around `ingest.run_ingest`.

The committed position comes from the driver (LocalDagRunner and the other
orchestrators that run TFX drivers). Vertex AI Pipelines runs no custom
drivers and takes exactly one artifact per output, at the URI it chose; with
`driverless=1` the position comes from input `previous_examples` (the newest
`Examples` of this pipeline, resolved by the orchestrator) and every run
publishes exactly one span, into that URI.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components import lease, mlmd_vocabulary as vocab
from components.event_schema import EventSchema
from components.streaming_example_gen import ingest, sources, windowing
from components.streaming_example_gen.committed_state import COMMITTED_STATE_PROPERTY
from components.streaming_example_gen.driver import COMMITTED_STATE_KEY, DEDUP_SPAN_URIS_KEY

EXAMPLES_KEY = "examples"
PREVIOUS_EXAMPLES_KEY = "previous_examples"
DRIVERLESS_KEY = "driverless"


class NoClosedSpanError(RuntimeError):
    """A driverless run found no closed span: it publishes nothing, and the cycle stops here."""


def committed_state_for(input_dict: Dict[str, List[types.Artifact]],
                        exec_properties: Dict[str, Any]) -> windowing.CommittedState:
    """The committed position: from the driver, else (driverless) from `previous_examples`."""
    if COMMITTED_STATE_KEY in exec_properties:
        return windowing.CommittedState.from_json(exec_properties[COMMITTED_STATE_KEY])
    if not exec_properties.get(DRIVERLESS_KEY):
        raise RuntimeError(
            "StreamingExampleGen ran without its driver, so it cannot know the committed position. "
            "Run it through a TFX orchestrator that honours component drivers (LocalDagRunner, BeamDagRunner), "
            "or build it with driverless=True and previous_examples wired to a resolver of the newest Examples "
            "(what `create_pipeline(config, target='vertex')` does).")
    return state_from_previous(input_dict.get(PREVIOUS_EXAMPLES_KEY) or [])


def state_from_previous(previous: List[types.Artifact]) -> windowing.CommittedState:
    """The state recorded on the newest previously published `Examples`; the initial state when none.

    Every artifact of one run carries that run's state, and a later run has
    emitted a later span, so the state with the newest `last_span` is the one.
    """
    states = []
    for artifact in previous:
        text = artifact.get_string_custom_property(COMMITTED_STATE_PROPERTY)
        if not text:
            raise ValueError(
                f"{PREVIOUS_EXAMPLES_KEY} artifact {artifact.uri} has no {COMMITTED_STATE_PROPERTY!r} property: "
                "it was not written by StreamingExampleGen. Resolve only this pipeline's StreamingExampleGen output.")
        states.append(windowing.CommittedState.from_json(text))
    if not states:
        return windowing.CommittedState()
    return max(states, key=lambda st: float("-inf") if st.last_span is None else st.last_span)


def window_from_exec_properties(exec_properties: Dict[str, Any]) -> windowing.Window:
    def ms(key: str) -> Optional[int]:
        value = exec_properties.get(key)
        return None if value is None else int(value) * 1000

    return windowing.Window(span_ms=exec_properties["span_seconds"] * 1000,
                            allowed_lateness_ms=exec_properties["allowed_lateness_seconds"] * 1000,
                            eval_fraction=exec_properties["eval_fraction"],
                            max_future_ms=ms("max_future_seconds"), max_lateness_ms=ms("max_lateness_seconds"))


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        state = committed_state_for(input_dict, exec_properties)
        driverless = bool(exec_properties.get(DRIVERLESS_KEY))
        window = window_from_exec_properties(exec_properties)
        template = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        source = sources.from_exec_properties(exec_properties)
        run = ingest.run_ingest(
            self._make_beam_pipeline, source=source,
            schema=EventSchema.from_json(exec_properties["event_schema"]),
            window=window, state=state, output_root=template.uri, work_dir=self._get_tmp_dir(),
            max_spans=1 if driverless else None, flat=driverless,
            dedup_span_uris=json.loads(exec_properties.get(DEDUP_SPAN_URIS_KEY) or "[]"))
        artifacts = build_artifacts(template, run, window, flat=driverless)
        if driverless and not artifacts:
            raise NoClosedSpanError(
                f"no span of {source.describe()} has closed since the committed position "
                f"{state.to_json()}: nothing is published and this run stops here. An orchestrator that takes one "
                "artifact per output (Vertex AI Pipelines) needs a closed span every run: schedule runs at most "
                "once per window.span_seconds, after the span's end plus the allowed lateness.")
        for artifact in artifacts:
            ingest.ensure_every_split_has_a_file(
                artifact.uri, tmp_root=os.path.join(template.uri, "_tmp") if driverless else None)
        if driverless:
            # Every file was renamed out of it: the artifact holds its splits and dead letters only.
            ingest.remove_tmp(template.uri)
        if not driverless:
            # Driverless runs (Vertex AI Pipelines) publish into the artifact the orchestrator registered,
            # under names of its own: the key is for the orchestrators that run the driver.
            name_for_publish(artifacts, self._context, run.plan.start.to_json())
        output_dict[EXAMPLES_KEY][:] = artifacts
        # Under a controller's lease (ML Metadata on MySQL): only the current holder publishes a span.
        lease.fence(f"StreamingExampleGen's spans {[a.span for a in artifacts]}")
        logging.info("StreamingExampleGen: read %s of %s from %s to %s; emitted spans %s; committed %s",
                     run.plan.describe(), source.describe(), run.plan.start, run.plan.end,
                     [a.span for a in output_dict[EXAMPLES_KEY]], run.committed.to_json())


def publish_key(pipeline: str, node: str, span: int, start_position: str) -> str:
    """The ML Metadata name of a span's `Examples`: one per pipeline, node, span and the committed position the
    run started from. ML Metadata keeps an artifact's name unique within its type, so a second publish of the
    same span from the same position (two controllers that read the same committed state) is refused by ML
    Metadata itself: its whole publish (the execution, its spans and their committed state) rolls back."""
    digest = hashlib.sha256("\0".join((pipeline, node, str(span), start_position)).encode()).hexdigest()[:32]
    # Readable first, unique by the digest; MLMD's MySQL schema holds names of up to 255 characters.
    return f"{pipeline[:120]}.{node[:60]}.span-{span}.{digest}"


def name_for_publish(artifacts: List[types.Artifact], context: Any, start_position: str) -> None:
    """Names each span's artifact by `publish_key`. Without a pipeline and node (an orchestrator that gives the
    executor none), the artifacts stay unnamed, as TFX leaves them."""
    info = getattr(context, "pipeline_info", None) if context is not None else None
    node = getattr(context, "pipeline_node", None) if context is not None else None
    if info is None or not info.id or node is None or not node.node_info.id:
        return
    for artifact in artifacts:
        artifact.name = publish_key(info.id, node.node_info.id, artifact.span, start_position)


def build_artifacts(template: types.Artifact, run: ingest.IngestRun, window: windowing.Window,
                    flat: bool = False) -> List[types.Artifact]:
    """One `Examples` artifact per emitted span, all carrying the run's committed state.

    `flat`: the run emitted at most one span, written at the template's URI,
    and the template itself becomes the artifact (an orchestrator that chose
    the URI also keeps its id for the output).
    """
    if run.result is None or not run.result.decision.emits:
        return []
    if flat and len(run.result.decision.emitted_spans) != 1:
        raise ValueError(f"flat output holds one span, the run emitted {sorted(run.result.decision.emitted_spans)}")
    artifacts = []
    first_span = run.result.decision.first_span
    for span in sorted(run.result.decision.emitted_spans):
        stats = run.result.spans.get(span, windowing.SpanStats())
        artifact = template if flat else type(template)()
        artifact.uri = ingest.span_dir(template.uri, span, flat)
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
            # Of the dead letters, those refused for their event time (a producer's clock, a stale replay).
            "future_count": run.result.dead_letter_kinds.get(windowing.FROM_THE_FUTURE, 0) if span == first_span else 0,
            "too_late_count": run.result.dead_letter_kinds.get(windowing.TOO_LATE, 0) if span == first_span else 0,
            "duplicate_count": stats.duplicates,
            "min_event_time_ms": stats.min_event_time_ms if stats.min_event_time_ms is not None else -1,
            "max_event_time_ms": stats.max_event_time_ms if stats.max_event_time_ms is not None else -1,
            "span_start_ms": start_ms,
            "span_end_ms": end_ms,
            "watermark_ms": run.committed.max_event_time_ms - window.allowed_lateness_ms,
            "ingest_wall_seconds": round(run.wall_seconds, 3),
            # Whole reruns after the Beam runner lost elements (ingest.RunnerLostElements); 0 normally.
            "ingest_reruns": run.reruns,
            "dead_letter_uri": os.path.join(artifact.uri, ingest.DEAD_LETTER_DIR) if span == first_span else "",
        }
        vocab.set_custom_properties(artifact, props)
        artifacts.append(artifact)
    return artifacts
