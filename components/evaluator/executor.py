"""DriftlineEvaluator executor: a thin `Do()` around `tfma_run.evaluate` and `gate.decide`."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.evaluator import executor as stock_evaluator_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components import lease, mlmd_vocabulary as vocab
from components.beam_data_plane import make_runner_data_plane_lossless
from components.evaluator import gate as gate_lib
from components.evaluator import tfma_run
from components.evaluator.config import GateConfig

EXAMPLES_KEY = "examples"
MODEL_KEY = "model"
BASELINE_MODEL_KEY = "baseline_model"
# The spans whose eval splits were carried to this cycle (resolvers.CarriedEvalSpansStrategy).
CARRIED_EXAMPLES_KEY = "carried_examples"
EVALUATION_KEY = "evaluation"
BLESSING_KEY = "blessing"
GATE_CONFIG_KEY = "gate_config"
LABEL_KEY_KEY = "label_key"
EVAL_SPLIT_KEY = "eval_split"
# Join mode: the JoinConfig as JoinExampleGen's exec property holds it (join_component.join_config_to_json):
# where the impressions log is, its schema and which positions were shown, for the off-policy estimate.
JOIN_CONFIG_KEY = "join_config"
DEFAULT_EVAL_SPLIT = "eval"

# Custom properties. The first five are stock TFX Evaluator's (read by stock
# LatestBlessedModelStrategy and Pusher); the rest are driftline's.
BLESSED_PROPERTY = evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY  # "blessed": 1 / 0
CURRENT_MODEL_PROPERTY = evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY  # "current_model"
CURRENT_MODEL_ID_PROPERTY = evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY  # "current_model_id"
BASELINE_MODEL_PROPERTY = evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY  # "baseline_model"
BASELINE_MODEL_ID_PROPERTY = evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY  # "baseline_model_id"
REASON_PROPERTY = vocab.REASON_PROPERTY
VERDICT_JSON_PROPERTY = "verdict_json"
EVAL_SPAN_PROPERTY = vocab.EVAL_SPAN_PROPERTY
EVAL_SPANS_PROPERTY = vocab.EVAL_SPANS_PROPERTY
EVIDENCE_INSUFFICIENT_PROPERTY = vocab.EVIDENCE_INSUFFICIENT_PROPERTY
EVAL_EXAMPLES_PROPERTY = "eval_examples"
EVAL_POSITIVES_PROPERTY = "eval_positives"
CANDIDATE_AUC_PROPERTY = "candidate_auc"
BASELINE_AUC_PROPERTY = "baseline_auc"
# The paired tests against the baseline (only when there is one): the test's name, the difference
# (candidate - baseline), its one-sided bounds at the gate's confidence, and the p-value of "worse".
AUC_TEST_PROPERTY = "auc_test"
LOG_LOSS_TEST_PROPERTY = "log_loss_test"
CONFIDENCE_PROPERTY = "gate_confidence"
# The off-policy estimate (off_policy_run.estimate_span; the verdict's `off_policy`): the whole record as JSON
# on the evaluation and the blessing, a file beside TFMA's output in the evaluation, and its figures as floats
# on the blessing (the gate's estimator; absent when none was made).
OFF_POLICY_JSON_PROPERTY = "off_policy_json"
OFF_POLICY_FILE = "off_policy.json"
OFF_POLICY_FLOATS = {  # property -> (record key, estimator or None, field)
    "off_policy_ctr": ("estimates", True, "estimate"),
    "off_policy_ctr_lower": ("estimates", True, "lower"),
    "off_policy_ctr_upper": ("estimates", True, "upper"),
    "off_policy_ratio": ("ratios", True, "estimate"),
    "off_policy_ratio_lower": ("ratios", True, "lower"),
    "off_policy_ratio_upper": ("ratios", True, "upper"),
    "served_ctr": ("served", False, "estimate"),
    "served_ctr_lower": ("served", False, "lower"),
    "served_ctr_upper": ("served", False, "upper"),
}
PAIRED_PROPERTIES = {  # property prefix -> Verdict.tests key
    "auc_diff": "auc",
    "log_loss_diff": "log_loss",
}


class Executor(stock_evaluator_executor.Executor):
    """A subclass of stock Evaluator's executor only so that orchestrators treat its blessing alike.

    On Vertex AI Pipelines, TFX's container entrypoint rewrites the model ids
    on the `blessing` of an Evaluator executor into Vertex ML Metadata
    resource names; the latest-blessed-model resolver matches models by
    those names. Nothing of the stock Do() is used.
    """

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        examples = newest_span(input_dict[EXAMPLES_KEY])
        candidate = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        baseline = optional_single(input_dict.get(BASELINE_MODEL_KEY), BASELINE_MODEL_KEY)
        gate = GateConfig.from_dict(json.loads(exec_properties[GATE_CONFIG_KEY]))
        split = exec_properties.get(EVAL_SPLIT_KEY) or DEFAULT_EVAL_SPLIT
        check_split(examples, split)
        carried = carried_eval_examples(input_dict.get(CARRIED_EXAMPLES_KEY), examples, split)
        evaluation = artifact_utils.get_single_instance(output_dict[EVALUATION_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])

        # The TFMA graph is as exposed as ingest to Beam 2.59's lossy runner-side flush under multi_processing.
        make_runner_data_plane_lossless()
        metrics = tfma_run.evaluate(
            self._make_beam_pipeline, examples, split, label_key=exec_properties[LABEL_KEY_KEY],
            slice_feature=gate.slice_feature, candidate_path=tfma_run.serving_model_path(candidate),
            baseline_path=tfma_run.serving_model_path(baseline) if baseline is not None else None,
            output_path=evaluation.uri, also=carried)
        off_policy = off_policy_estimate(exec_properties.get(JOIN_CONFIG_KEY), examples, split,
                                         exec_properties[LABEL_KEY_KEY], candidate, gate)
        verdict = gate_lib.decide(metrics[tfma_run.CANDIDATE], metrics.get(tfma_run.BASELINE), gate,
                                  ingested_counts(input_dict[EXAMPLES_KEY]), training_record(candidate),
                                  off_policy=off_policy)

        evaluation.set_string_custom_property(VERDICT_JSON_PROPERTY, verdict.to_json())
        record_off_policy(evaluation, blessing, verdict)
        record_blessing(blessing, verdict, candidate, baseline, examples,
                        component_id=exec_properties.get("current_component_id"), carried=carried)
        lease.fence(f"the gate's verdict on model {candidate.id}")  # only the lease's holder publishes
        logging.info("DriftlineEvaluator on span %d (%s split, carried spans %s): %s", examples.span, split,
                     [a.span for a in carried], verdict.reason)


def off_policy_estimate(join_config: Optional[str], examples: types.Artifact, split: str, label_key: str,
                        candidate: types.Artifact, gate: GateConfig) -> Optional[Dict[str, Any]]:
    """The off-policy record of the candidate on the newest span (join mode with `gate.off_policy`), else None.

    A failure to estimate (an unreadable log, a model without `serving_raw`) is recorded as the record's
    `why` and logged: the estimate informs the gate, it must not stop the cycle.
    """
    if not join_config or not gate.off_policy:
        return None
    from components.evaluator import off_policy_run
    from components.streaming_example_gen.join_component import join_config_from_json

    join = join_config_from_json(join_config)
    props = {name: _custom_property(examples, name) for name in ("span_start_ms", "span_end_ms", "start_position")}
    try:
        record = off_policy_run.estimate_span(
            join.impressions.log_dir, join.impressions.schema, join.max_position, join.position_field, examples.uri,
            props, split, label_key, tfma_run.serving_model_path(candidate), gate)
    except Exception as e:  # noqa: BLE001 - see the docstring: recorded, not raised
        logging.warning("DriftlineEvaluator: no off-policy estimate for model %d: %s: %s", candidate.id,
                        type(e).__name__, e)
        record = {"why": f"the estimate failed: {type(e).__name__}: {e}"}
    record["span"] = examples.span
    return record


def _custom_property(artifact: types.Artifact, name: str) -> Any:
    if not artifact.has_custom_property(name):
        return None
    value = artifact.get_custom_property(name)
    return value if isinstance(value, (int, float, str)) else None


def record_off_policy(evaluation: types.Artifact, blessing: types.Artifact, verdict: gate_lib.Verdict) -> None:
    """The verdict's off-policy record beside TFMA's output (a file in the `ModelEvaluation`), and as properties."""
    if not verdict.off_policy:
        return
    text = json.dumps(verdict.to_dict()["off_policy"], sort_keys=True, allow_nan=False)
    io_utils.write_string_file(os.path.join(evaluation.uri, OFF_POLICY_FILE), text)
    for artifact in (evaluation, blessing):
        artifact.set_string_custom_property(OFF_POLICY_JSON_PROPERTY, text)
    name = verdict.off_policy.get("estimator") or verdict.thresholds.get("off_policy_estimator")
    for prop, (key, per_estimator, field) in OFF_POLICY_FLOATS.items():
        part = verdict.off_policy.get(key) or {}
        value = (part.get(name) or {}).get(field) if per_estimator else part.get(field)
        if isinstance(value, (int, float)) and math.isfinite(value):
            blessing.set_float_custom_property(prop, float(value))
    if "explored_requests" in verdict.off_policy:
        blessing.set_int_custom_property("off_policy_explored_requests", int(verdict.off_policy["explored_requests"]))


def newest_span(examples: List[types.Artifact]) -> types.Artifact:
    """The `Examples` artifact with the largest span (then version, then id): the newest data."""
    if not examples:
        raise ValueError(f"{EXAMPLES_KEY!r} is empty: the evaluator needs the newest span's Examples")
    return max(examples, key=lambda a: (a.span, a.version, a.id))


def carried_eval_examples(carried: Optional[List[types.Artifact]], newest: types.Artifact,
                          split: str) -> List[types.Artifact]:
    """The carried spans' `Examples`, one per span, oldest first, without the newest span itself."""
    by_span: Dict[int, types.Artifact] = {}
    for a in carried or []:
        if a.span < newest.span and (a.span not in by_span or (a.version, a.id) > (by_span[a.span].version,
                                                                                   by_span[a.span].id)):
            by_span[a.span] = a
    for a in by_span.values():
        check_split(a, split)
    return [by_span[s] for s in sorted(by_span)]


def ingested_counts(examples: List[types.Artifact]) -> Optional[gate_lib.Ingested]:
    """The cycle's events and dead letters, from StreamingExampleGen's properties (None if any span lacks them)."""
    events = dead = 0
    for artifact in examples:
        if not (artifact.has_custom_property(vocab.EVENT_COUNT_PROPERTY)
                and artifact.has_custom_property(vocab.DEAD_LETTER_COUNT_PROPERTY)):
            return None
        events += artifact.get_int_custom_property(vocab.EVENT_COUNT_PROPERTY)
        dead += artifact.get_int_custom_property(vocab.DEAD_LETTER_COUNT_PROPERTY)
    return gate_lib.Ingested(events=events, dead_letters=dead)


def training_record(model: types.Artifact) -> Optional[gate_lib.Trained]:
    """Warm or cold, the example count and the vetted spans' labels, from WarmStartTrainer's properties
    (None for another trainer's; no vetted counts when its run_fn reported no positives per role)."""
    if not (model.has_custom_property("start") and model.has_custom_property("trained_examples")):
        return None
    vetted_examples = vetted_positives = None
    if (model.has_custom_property(vocab.TRAINED_EXAMPLES_BY_ROLE_PROPERTY)
            and model.has_custom_property(vocab.TRAINED_POSITIVES_BY_ROLE_PROPERTY)):
        examples = json.loads(model.get_string_custom_property(vocab.TRAINED_EXAMPLES_BY_ROLE_PROPERTY) or "{}")
        positives = json.loads(model.get_string_custom_property(vocab.TRAINED_POSITIVES_BY_ROLE_PROPERTY) or "{}")
        if positives:
            vetted_examples = sum(int(examples.get(r, 0)) for r in vocab.VETTED_TRAINING_ROLES)
            vetted_positives = sum(int(positives.get(r, 0)) for r in vocab.VETTED_TRAINING_ROLES)
    return gate_lib.Trained(warm=model.get_string_custom_property("start") == "warm",
                            examples=model.get_int_custom_property("trained_examples"),
                            vetted_examples=vetted_examples, vetted_positives=vetted_positives)


def optional_single(artifacts: Optional[List[types.Artifact]], key: str) -> Optional[types.Artifact]:
    if not artifacts:
        return None
    if len(artifacts) > 1:
        raise ValueError(f"there can be only one {key!r}, got {len(artifacts)}")
    return artifacts[0]


def check_split(examples: types.Artifact, split: str) -> None:
    names = artifact_utils.decode_split_names(examples.split_names) if examples.split_names else []
    if split not in names:
        raise ValueError(f"eval split {split!r} is not a split of Examples {examples.uri} (splits: {names}); "
                         f"set eval_split to one of them")


def record_blessing(blessing: types.Artifact, verdict: gate_lib.Verdict, candidate: types.Artifact,
                    baseline: Optional[types.Artifact], examples: types.Artifact,
                    component_id: Optional[str] = None, carried: List[types.Artifact] = ()) -> None:
    """The stock marker file and properties (as TFX Evaluator writes them), and ours.

    `eval_span` is the newest span judged on; `eval_spans` all of them (`carried` ones too), and
    `evidence_insufficient` says whether the next cycle carries them (`training_inputs.carried_and_released`).
    """
    marker = evaluator_constants.BLESSED_FILE_NAME if verdict.blessed else evaluator_constants.NOT_BLESSED_FILE_NAME
    io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
    blessing.set_int_custom_property(
        BLESSED_PROPERTY,
        evaluator_constants.BLESSED_VALUE if verdict.blessed else evaluator_constants.NOT_BLESSED_VALUE)
    blessing.set_string_custom_property(CURRENT_MODEL_PROPERTY, candidate.uri)
    blessing.set_int_custom_property(CURRENT_MODEL_ID_PROPERTY, candidate.id)
    if baseline is not None:
        blessing.set_string_custom_property(BASELINE_MODEL_PROPERTY, baseline.uri)
        blessing.set_int_custom_property(BASELINE_MODEL_ID_PROPERTY, baseline.id)
    if component_id:
        blessing.set_string_custom_property("component_id", component_id)
    blessing.set_string_custom_property(REASON_PROPERTY, verdict.reason)
    blessing.set_string_custom_property(VERDICT_JSON_PROPERTY, verdict.to_json())
    blessing.set_int_custom_property(EVAL_SPAN_PROPERTY, examples.span)
    blessing.set_string_custom_property(EVAL_SPANS_PROPERTY,
                                        json.dumps(sorted({a.span for a in carried} | {examples.span})))
    blessing.set_int_custom_property(EVIDENCE_INSUFFICIENT_PROPERTY, 1 if verdict.evidence_insufficient else 0)
    blessing.set_float_custom_property(EVAL_EXAMPLES_PROPERTY, _or_minus_one(verdict.eval_examples))
    blessing.set_float_custom_property(EVAL_POSITIVES_PROPERTY, _or_minus_one(verdict.eval_positives))
    blessing.set_float_custom_property(CANDIDATE_AUC_PROPERTY, _or_minus_one(verdict.candidate_auc))
    blessing.set_float_custom_property(BASELINE_AUC_PROPERTY, _or_minus_one(verdict.baseline_auc))
    if verdict.tests:
        blessing.set_string_custom_property(AUC_TEST_PROPERTY, verdict.tests["auc"]["test"])
        blessing.set_string_custom_property(LOG_LOSS_TEST_PROPERTY, verdict.tests["log_loss"]["test"])
        blessing.set_float_custom_property(CONFIDENCE_PROPERTY, float(verdict.tests["auc"]["confidence"]))
        for prefix, key in PAIRED_PROPERTIES.items():
            test = verdict.tests[key]
            # NaN (undefined, e.g. one class only) is left out, not -1 (the vocabulary's rule for counts and
            # AUCs): -1 is a possible difference, so absent is the only unambiguous "unknown" here.
            for suffix, field in (("", "diff"), ("_lower", "lower"), ("_upper", "upper"),
                                  ("_p_value", "p_value")):
                value = test[field]
                if value is not None and math.isfinite(value):
                    blessing.set_float_custom_property(prefix + suffix, float(value))


_or_minus_one = vocab.finite_or_unknown  # the one NaN rule (components/mlmd_vocabulary.py)
