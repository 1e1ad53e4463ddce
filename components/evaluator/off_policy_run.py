"""The off-policy estimate of one span, for the gate: read the logs, score every candidate, estimate.

The evaluator's executor calls `estimate_span` in join mode. It reads:

* the newest span's raw impressions from the join's impressions log (every scored candidate, shown or
  not), from where the run that emitted the span began reading (the Examples' `start_position`) to the
  log's end, keeping the lines whose event time lies in the span (`span_start_ms`, `span_end_ms`) and is
  no earlier than the eval split's earliest example (the train requests are never held in memory);
* the joined labels of the span's `eval` split (impression id -> label): the outcomes log's clicks as the
  join's rules attributed them. So only eval-split requests are used, which the candidate never trained
  on (all of a request's lines share its event time, so a request is wholly train or eval);

then scores every line of the usable requests with the candidate's SavedModel (`serving_raw`, batched) and
returns `off_policy.estimate`'s record with what was skipped. Nothing here raises for what the logs hold:
a span the estimate cannot use gives a record saying why.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from components import event_log
from components.evaluator import off_policy
from components.evaluator.config import GateConfig
from components.event_schema import EventSchema, InvalidEvent

RAW_SIGNATURE = "serving_raw"  # the name pipelines/serve/signatures.py exports (components do not import pipelines)
BATCH = 8192


def read_span_lines(log_dir: str, start: Optional[event_log.Position], span_start_ms: int, span_end_ms: int,
                    schema: EventSchema) -> Iterator[Dict[str, Any]]:
    """The impression lines of the log from `start` whose event time is in [span_start_ms, span_end_ms).

    Each is the line's JSON with the schema's fields as `schema.parse` types them (the server's exploration
    fields ride along whether the schema declares them or not). A line the schema refuses is passed over:
    the join dead-lettered it, so it is in no example and its request is incomplete here.
    """
    plan = event_log.plan_read(log_dir, start)
    for chunk in plan.chunks:
        for _, line in event_log.read_chunk(log_dir, chunk, schema.max_line_bytes):
            if isinstance(line, event_log.OverlongLine):
                continue
            try:
                event = schema.parse(line)
                raw = json.loads(line)
            except (InvalidEvent, ValueError):
                continue
            if span_start_ms <= event[schema.event_time_field] < span_end_ms:
                raw.update(event)
                yield raw


def read_labels(split_dir: str, id_field: str, label_field: str, event_time_field: str) -> Tuple[Dict[Any, float],
                                                                                               Optional[int]]:
    """(impression id -> label of every example in a split folder (the join's GZIP TFRecords), their earliest
    event time or None)."""
    import tensorflow as tf

    labels: Dict[Any, float] = {}
    earliest: Optional[int] = None
    # tf.io.gfile: the split may be on gs:// (a Dataflow/Vertex run), as every artifact path may.
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir, "*")))
    if not files:
        return labels, earliest
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        ident = _value(feature[id_field]) if id_field in feature else None
        label = _value(feature[label_field]) if label_field in feature else None
        if ident is not None and label is not None:
            labels[ident] = float(label)
        t = _value(feature[event_time_field]) if event_time_field in feature else None
        if isinstance(t, int) and (earliest is None or t < earliest):
            earliest = t
    return labels, earliest


def _value(feature) -> Any:
    kind = feature.WhichOneof("kind")
    values = getattr(feature, kind).value if kind else []
    if not len(values):
        return None
    v = values[0]
    return v.decode("utf-8") if isinstance(v, bytes) else v


class RawModel:
    """A SavedModel's `serving_raw` signature: raw feature columns in, one score per row out."""

    def __init__(self, path: str):
        import tensorflow as tf

        self._saved = tf.saved_model.load(path)
        if RAW_SIGNATURE not in self._saved.signatures:
            raise ValueError(f"the candidate at {path!r} has no {RAW_SIGNATURE!r} signature (it has "
                             f"{sorted(self._saved.signatures)}): a model trained by this driftline exports it")
        self._fn = self._saved.signatures[RAW_SIGNATURE]
        self.inputs = {name: spec.dtype for name, spec in self._fn.structured_input_signature[1].items()}
        outputs = list(self._fn.structured_outputs)
        if len(outputs) != 1:
            raise ValueError(f"the candidate's {RAW_SIGNATURE} has outputs {outputs}, expected one score")
        self._output = outputs[0]

    def predict(self, lines: List[Mapping[str, Any]], batch: int = BATCH) -> np.ndarray:
        import tensorflow as tf

        out = []
        for start in range(0, len(lines), batch):
            rows = lines[start:start + batch]
            feed = {name: tf.constant([row[name] for row in rows], dtype=dtype) for name, dtype in self.inputs.items()}
            out.append(np.reshape(self._fn(**feed)[self._output].numpy(), [-1]))
        return np.concatenate(out) if out else np.zeros(0)


def estimate_span(impressions_log_dir: str, impressions_schema: EventSchema, max_position: Optional[int],
                  position_field: str, examples_uri: str, examples_properties: Mapping[str, Any], split: str,
                  label_field: str, model_path: str, gate: GateConfig) -> Dict[str, Any]:
    """The off-policy record of the candidate at `model_path` on the span of `examples_uri` (see the module).

    `examples_properties`: the span's Examples custom properties (span_start_ms, span_end_ms, start_position).
    The record is `OffPolicyEstimate.to_dict()` plus `skipped`, `requests_read`, `span`, and `estimator`;
    or {"why": ...} when there is nothing to estimate from.
    """
    if max_position is None:
        return {"why": "join.max_position is unset: which candidates were shown is unknown"}
    if not impressions_log_dir:
        return {"why": "the impressions are a Kafka topic (join.impressions.kind: kafka): the off-policy estimate "
                       "reads them from an event log only"}
    start_ms, end_ms = examples_properties.get("span_start_ms"), examples_properties.get("span_end_ms")
    if start_ms is None or end_ms is None:
        return {"why": "the span's Examples record no span_start_ms/span_end_ms (not a JoinExampleGen span)"}
    start = None
    text = examples_properties.get("start_position")
    if text:
        resume = json.loads(text).get("imp_resume")
        start = event_log.Position(str(resume[0]), int(resume[1])) if resume else None
    labels, earliest = read_labels(os.path.join(examples_uri, f"Split-{split}"), impressions_schema.id_field,
                                   label_field, impressions_schema.event_time_field)
    model = RawModel(model_path)
    # The split is by event time (the eval split is the span's latest share) and a request's lines share its
    # time: lines before the earliest eval example's time are train requests, not held in memory at all.
    lines = read_span_lines(impressions_log_dir, start, max(int(start_ms), earliest or int(start_ms)), int(end_ms),
                            impressions_schema)
    selection = off_policy.select_requests(lines, labels, impressions_schema.id_field,
                                           impressions_schema.event_time_field, max_position, position_field,
                                           required_features=sorted(model.inputs))
    record: Dict[str, Any] = {"skipped": selection.skipped.to_dict(), "requests_read": selection.requests_read,
                              "span_start_ms": int(start_ms), "span_end_ms": int(end_ms), "split": split,
                              "estimator": gate.off_policy_estimator, "k": max_position}
    if not selection.logged.requests:
        record["why"] = (f"no usable request among {selection.requests_read} in the span's {split} split "
                         f"(skipped: {_nonzero(selection.skipped.to_dict())})")
        return record
    scores = model.predict(selection.lines)
    result = off_policy.estimate(selection.logged, scores, confidence=gate.confidence,
                                 bootstrap=gate.off_policy_bootstrap, seed=0, predicted=scores)
    record.update(result.to_dict())
    return record


def _nonzero(counts: Mapping[str, int]) -> Dict[str, int]:
    return {k: v for k, v in counts.items() if v}
