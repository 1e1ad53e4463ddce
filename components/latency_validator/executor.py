"""LatencyValidator executor: a thin `Do()` around `loadtest.validate_model`, recording an `InfraBlessing`."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Union

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components.blessing_pusher.executor import serving_model_path
from components.blessing_pusher.serving import PushError
from components.evaluator.executor import CURRENT_MODEL_ID_PROPERTY, check_split, newest_span, optional_single
from components.latency_validator import loadtest
from components.warm_start_trainer.training_inputs import split_pattern
from components.latency_validator.config import LatencyConfig
from components import lease, mlmd_vocabulary as vocab

MODEL_KEY = "model"
EXAMPLES_KEY = "examples"
TRANSFORM_GRAPH_KEY = "transform_graph"
MODEL_BLESSING_KEY = "model_blessing"
BLESSING_KEY = "blessing"
LATENCY_CONFIG_KEY = "latency_config"
LABEL_KEY_KEY = "label_key"
EVAL_SPLIT_KEY = "eval_split"
DEFAULT_EVAL_SPLIT = "eval"

# As stock InfraValidator marks its InfraBlessing (and stock Pusher reads `blessed`).
BLESSED_FILE_NAME = "INFRA_BLESSED"
NOT_BLESSED_FILE_NAME = "INFRA_NOT_BLESSED"
BLESSED_PROPERTY = vocab.BLESSED_PROPERTY  # int 1 / 0
# driftline's.
REASON_PROPERTY = vocab.REASON_PROPERTY
MODEL_ID_PROPERTY = "model_id"  # the Model load-tested (lineage matches on it)
LOAD_TESTED_PROPERTY = "load_tested"  # int 1 / 0: 0 when skipped or the model could not be loaded
PROFILE_JSON_PROPERTY = "profile_json"
PROFILE_URI_PROPERTY = "profile_uri"
# Figures of the batch size the verdict is about (the one with the lowest p99).
FIGURE_PROPERTIES = ("p50_ms", "p95_ms", "p99_ms", "requests_per_second", "candidates_per_second")
SHARE_PROPERTIES = ("parse_share", "transform_share", "model_share")


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        examples = newest_span(input_dict[EXAMPLES_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        config = LatencyConfig.from_dict(json.loads(exec_properties[LATENCY_CONFIG_KEY]))
        config.validate()
        label_key = exec_properties.get(LABEL_KEY_KEY) or None
        split = exec_properties.get(EVAL_SPLIT_KEY) or DEFAULT_EVAL_SPLIT

        model_blessing = optional_single(input_dict.get(MODEL_BLESSING_KEY), MODEL_BLESSING_KEY)
        skip = skip_reason(model_blessing, model, config)
        model_ref = blessed_model_ref(model_blessing) if model_blessing is not None else None
        if skip is not None:
            verdict = loadtest.LatencyVerdict(False, skip, config.slo_p99_ms)
            record_blessing(blessing, model, examples, None, verdict, config, model_ref)
            fence(model)
            logging.info("LatencyValidator: model %s %s", model.id, skip)
            return

        check_split(examples, split)
        try:
            model_dir = serving_model_path(model)
        except PushError as e:
            raise loadtest.LatencyTestError(str(e)) from e
        transform_graph = optional_single(input_dict.get(TRANSFORM_GRAPH_KEY), TRANSFORM_GRAPH_KEY)
        profile, verdict = loadtest.validate_model(
            model_dir, split_pattern(examples.uri, split), config, label_key=label_key,
            transform_graph_dir=transform_graph.uri if transform_graph is not None else None)
        record_blessing(blessing, model, examples, profile, verdict, config, model_ref)
        fence(model)
        logging.info("LatencyValidator: model %s on span %d's %s split: %s", model.id, examples.span, split,
                     verdict.reason)


def fence(model: types.Artifact) -> None:
    """Under a controller's lease (ML Metadata on MySQL): a verdict reached by a holder that lost the lease is
    not published (the pusher would act on it). Last, after the load test's seconds, right before TFX records
    the blessing."""
    lease.fence(f"the LatencyValidator's verdict on model {model.id}")


def skip_reason(model_blessing: Optional[types.Artifact], model: types.Artifact,
                config: LatencyConfig) -> Optional[str]:
    """Why the load test is skipped (the evaluator refused this candidate), or None to run it.

    A blessing of another model means a mis-wired pipeline: an error, not a verdict.
    """
    if model_blessing is None:
        return None
    blessed_model = blessed_model_ref(model_blessing)
    if blessed_model is not None and not refers_to(blessed_model, model):
        raise ValueError(f"{MODEL_BLESSING_KEY} (artifact {model_blessing.id}) is about model {blessed_model}, "
                         f"not the candidate {model.id}: wire the evaluator's blessing of this same model")
    if not config.skip_unblessed or model_blessing.get_int_custom_property("blessed") == 1:
        return None
    why = model_blessing.get_string_custom_property("reason") if model_blessing.has_custom_property("reason") \
        else "no reason recorded"
    return f"not load-tested: the evaluator did not bless it ({why})"


def blessed_model_ref(model_blessing: types.Artifact) -> Union[int, str, None]:
    """The evaluator blessing's `current_model_id`: an MLMD id, or (on Vertex) the model's resource name.

    TFX's Vertex entrypoint rewrites the id of an Evaluator executor's blessing
    into the model's Vertex ML Metadata resource name, and Vertex hands numbers
    over as doubles.
    """
    if not model_blessing.has_custom_property(CURRENT_MODEL_ID_PROPERTY):
        return None
    value = model_blessing.get_custom_property(CURRENT_MODEL_ID_PROPERTY)
    if isinstance(value, str):
        return value
    return None if value is None else int(value)


def refers_to(ref: Union[int, str], model: types.Artifact) -> bool:
    """True when `ref` (see `blessed_model_ref`) names `model`.

    On Vertex an input artifact's `id` is TFX's hash of its resource name, so
    a name is compared by that same hash.
    """
    if isinstance(ref, str):
        from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint

        return entrypoint._get_hashed_id(ref, {}) == model.id  # pylint: disable=protected-access
    return ref == model.id


def record_blessing(blessing: types.Artifact, model: types.Artifact, examples: types.Artifact,
                    profile: Optional[loadtest.LatencyProfile], verdict: loadtest.LatencyVerdict,
                    config: LatencyConfig, model_ref: Union[int, str, None] = None) -> None:
    """The stock marker file and `blessed` property, the figures as properties, the profile as a file.

    `model_ref`: the evaluator blessing's name for `model` (`blessed_model_ref`); a
    resource name (Vertex) is recorded as `model_id`, otherwise the MLMD id is.
    """
    marker = BLESSED_FILE_NAME if verdict.blessed else NOT_BLESSED_FILE_NAME
    io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
    blessing.set_int_custom_property(BLESSED_PROPERTY, 1 if verdict.blessed else 0)
    blessing.set_string_custom_property(REASON_PROPERTY, verdict.reason)
    if isinstance(model_ref, str):
        # On Vertex: the resource name, as the evaluator's blessing names the model there.
        blessing.set_string_custom_property(MODEL_ID_PROPERTY, model_ref)
    else:
        blessing.set_int_custom_property(MODEL_ID_PROPERTY, model.id)
    blessing.set_int_custom_property(vocab.EVAL_SPAN_PROPERTY, examples.span)
    blessing.set_int_custom_property(LOAD_TESTED_PROPERTY, 1 if profile is not None else 0)
    blessing.set_float_custom_property("slo_p99_ms", float(config.slo_p99_ms))
    blessing.set_int_custom_property("candidates_per_request", config.candidates_per_request)
    blessing.set_int_custom_property("concurrency", config.concurrency)
    if verdict.result is not None:
        blessing.set_int_custom_property("batch_size", verdict.result.batch_size)
        for key in FIGURE_PROPERTIES:
            value = getattr(verdict.result, key)
            if value is not None:
                blessing.set_float_custom_property(key, vocab.finite_or_unknown(value))
    if profile is not None and profile.stages is not None:
        for key in SHARE_PROPERTIES:
            blessing.set_float_custom_property(key, vocab.finite_or_unknown(getattr(profile.stages, key)))
    blessing.set_string_custom_property(PROFILE_JSON_PROPERTY, loadtest.profile_json(profile, verdict))
    blessing.set_string_custom_property(PROFILE_URI_PROPERTY, loadtest.write_profile(blessing.uri, profile, verdict))
