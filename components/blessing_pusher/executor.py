"""BlessingPusher executor: a thin `Do()` around `serving.push` and `serving.apply_retention`."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components import lease
from components.blessing_pusher import serving
# The PushedModel's custom property names live beside the serving code, which imports no TFX.
from components.blessing_pusher.serving import (  # noqa: F401  (re-exported)
    MODEL_ID_PROPERTY, PUSHED_AT_MS_PROPERTY, PUSHED_DESTINATION_PROPERTY, PUSHED_PROPERTY, PUSHED_VERSION_PROPERTY,
    REASON_PROPERTY, ROLLBACK_OF_PROPERTY)

MODEL_KEY = "model"
MODEL_BLESSING_KEY = "model_blessing"
# A stock InfraBlessing, as stock Pusher takes it: the LatencyValidator's (or stock InfraValidator's).
INFRA_BLESSING_KEY = "infra_blessing"
PUSHED_MODEL_KEY = "pushed_model"
SERVING_DIR_KEY = "serving_dir"
KEEP_VERSIONS_KEY = "keep_versions"
CHALLENGER_MODE_KEY = "challenger_mode"
# PushedModel (challenger mode): int 1 when a blessed model was not pushed because a champion serves.
CHALLENGER_PROPERTY = "challenger"

# The blessings checked, in order; a missing optional one is skipped.
BLESSING_KEYS = (MODEL_BLESSING_KEY, INFRA_BLESSING_KEY)


def absolute_serving_dir(serving_dir: str) -> str:
    """Local paths made absolute, so `pushed_destination` names one folder wherever it is read."""
    if serving.is_local(serving_dir) and not serving_dir.startswith("file://"):
        return os.path.abspath(serving_dir)
    return serving_dir


def custom_properties(artifact: types.Artifact) -> Dict[str, Any]:
    """An artifact's custom properties as plain Python values."""
    return {key: artifact.get_custom_property(key) for key in artifact.mlmd_artifact.custom_properties}


def check_blessings(input_dict: Dict[str, List[types.Artifact]]) -> Tuple[bool, str]:
    """(blessed, reason): blessed only if every blessing given is; the reason names each gate's own reason."""
    parts = []
    for key in BLESSING_KEYS:
        artifacts = input_dict.get(key) or []
        if not artifacts:
            continue
        blessing = artifact_utils.get_single_instance(artifacts)
        verdict = serving.blessing_verdict(custom_properties(blessing))
        if not verdict.blessed:
            return False, f"{key} (artifact {blessing.id}) is not blessed: {verdict.reason}"
        parts.append(f"{key}: {verdict.reason}")
    if not parts:
        return False, "no blessing given"
    return True, "blessed (" + "; ".join(parts) + ")"


def serving_model_path(model: types.Artifact) -> str:
    """Where a Model artifact's SavedModel is: `<uri>/Format-Serving` (the stock layout).

    Stock `path_utils.serving_model_path` guesses the layout from the artifact's
    `tfx_version` property, which imported artifacts lack, so the folder that
    actually holds a SavedModel is preferred; then the older layouts.
    """
    candidates = [path_utils.serving_model_path(model.uri, False),
                  path_utils.serving_model_path(model.uri, True), model.uri]
    for candidate in candidates:
        if serving.has_saved_model(candidate):
            return candidate
    raise serving.PushError(f"Model artifact {model.id} has no SavedModel at {candidates[0]} "
                            f"(nor {candidates[1]} or {candidates[2]})")


def mark_pushed(pushed_model: types.Artifact, model_id: int, result: serving.PushResult, reason: str,
                at_ms: Optional[int] = None) -> None:
    pushed_model.set_int_custom_property(PUSHED_PROPERTY, 1)
    pushed_model.set_string_custom_property(PUSHED_DESTINATION_PROPERTY, result.destination)
    pushed_model.set_string_custom_property(PUSHED_VERSION_PROPERTY, str(result.version))
    pushed_model.set_int_custom_property(MODEL_ID_PROPERTY, int(model_id))
    pushed_model.set_string_custom_property(REASON_PROPERTY, reason)
    pushed_model.set_int_custom_property(PUSHED_AT_MS_PROPERTY, int(time.time() * 1000) if at_ms is None else at_ms)


def mark_not_pushed(pushed_model: types.Artifact, model_id: int, reason: str) -> None:
    pushed_model.set_int_custom_property(PUSHED_PROPERTY, 0)
    pushed_model.set_int_custom_property(MODEL_ID_PROPERTY, int(model_id))
    pushed_model.set_string_custom_property(REASON_PROPERTY, reason)


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        pushed_model = artifact_utils.get_single_instance(output_dict[PUSHED_MODEL_KEY])
        serving_dir = absolute_serving_dir(exec_properties[SERVING_DIR_KEY])
        blessed, why = check_blessings(input_dict)
        if not blessed:
            # Not a failure: the cycle ran and the gate said no; serving stays as it is.
            reason = f"not pushed: {why}"
            mark_not_pushed(pushed_model, model.id, reason)
            lease.fence(f"the record that model {model.id} was not pushed")
            logging.warning("BlessingPusher: model %s (%s) %s; %s is untouched (serving version %s)",
                            model.id, model.uri, reason, serving_dir, serving.serving_version(serving_dir))
            return
        model_dir = serving_model_path(model)
        champion = serving.serving_version(serving_dir) if exec_properties.get(CHALLENGER_MODE_KEY) else None
        if champion is not None:
            # Online evaluation: a blessed candidate earns its place on live traffic beside the champion, so
            # serving is untouched here. Nor is it a push for recovery to finish after a crash
            # (pipelines/recovery.py reads the execution's challenger_mode): the controller deploys it as the challenger from ML Metadata after the cycle.
            reason = (f"not pushed: {why}; deployed as the challenger beside serving version {champion} "
                      "(online.enabled): promoted only by the online comparison")
            mark_not_pushed(pushed_model, model.id, reason)
            pushed_model.set_int_custom_property(CHALLENGER_PROPERTY, 1)
            lease.fence(f"the record that model {model.id} is a challenger")
            logging.info("BlessingPusher: model %s %s", model.id, reason)
            return
        # Right before serving changes: a controller that lost its lease (another took over) pushes nothing.
        lease.fence(f"the push of model {model.id} into {serving_dir}")
        result = serving.push(model_dir, serving_dir)
        reason = f"pushed as version {result.version}: {why}"
        mark_pushed(pushed_model, model.id, result, reason)
        retention = serving.apply_retention(serving_dir, int(exec_properties[KEEP_VERSIONS_KEY]))
        logging.info("BlessingPusher: model %s pushed to %s (version %d); retention kept %s, deleted %s, "
                     "removed stale temp folders %s", model.id, result.destination, result.version,
                     retention.kept, retention.deleted, retention.removed_tmp)
