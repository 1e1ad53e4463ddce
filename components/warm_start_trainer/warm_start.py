"""The warm-start decision and the weight hand-over between cycles.

Plain functions, tested without TFX:

* `fingerprints` / `decide_start` — warm start only when the feature set,
  the transform and the architecture are what the base model was trained
  with; otherwise a cold start with the reason.
* `save_warm_start_state` / `load_base_weights` — the weights travel as a TF
  checkpoint next to the serving SavedModel, with a manifest of variable
  names and shapes, so a mismatch is reported, never a crash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

WARM_START_DIR = "warm_start"
MANIFEST = "manifest.json"
CHECKPOINT_PREFIX = "weights"

FEATURE_SET = "feature_set_fingerprint"
TRANSFORM = "transform_fingerprint"
ARCHITECTURE = "architecture_fingerprint"
FINGERPRINT_KEYS = (FEATURE_SET, TRANSFORM, ARCHITECTURE)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprints(*, feature_set: Mapping[str, str], transform: str, transformed_feature_spec: Mapping[str, str],
                 run_fn: str, model_config: Mapping[str, Any], feature_buckets: Mapping[str, int]) -> Dict[str, str]:
    """The three things that must match for a warm start to be safe."""
    return {
        FEATURE_SET: _digest(sorted(feature_set.items())),
        TRANSFORM: _digest({"config": transform, "output": sorted(transformed_feature_spec.items())}),
        ARCHITECTURE: _digest({"run_fn": run_fn, "model": model_config, "buckets": sorted(feature_buckets.items())}),
    }


_WHAT_CHANGED = {FEATURE_SET: "the feature set changed", TRANSFORM: "the transform changed",
                 ARCHITECTURE: "the model architecture changed"}


def decide_start(base_model_id: Optional[int], base_fingerprints: Mapping[str, str],
                 current: Mapping[str, str]) -> Tuple[bool, str]:
    """(warm, reason)."""
    if base_model_id is None:
        return False, "cold start: no blessed base model yet"
    changed = [_WHAT_CHANGED[k] for k in FINGERPRINT_KEYS if base_fingerprints.get(k) != current[k]]
    if changed:
        return False, f"cold start: {' and '.join(changed)} since base model {base_model_id}"
    return True, f"warm start from model {base_model_id}"


def _shapes(model) -> Dict[str, list]:
    return {v.name: list(v.shape) for v in model.weights}


def save_warm_start_state(model, model_dir: str, architecture: str) -> str:
    """Writes the model's weights and a manifest under `<model_dir>/warm_start`."""
    import tensorflow as tf

    folder = os.path.join(model_dir, WARM_START_DIR)
    tf.io.gfile.makedirs(folder)
    model.save_weights(os.path.join(folder, CHECKPOINT_PREFIX))
    with tf.io.gfile.GFile(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"architecture": architecture, "variables": _shapes(model)}, f, sort_keys=True)
    return folder


@dataclasses.dataclass(frozen=True)
class LoadReport:
    loaded: bool
    reason: str
    variables: int = 0


def load_base_weights(model, base_model_dir: str) -> LoadReport:
    """Loads the base model's weights into `model` if every variable matches by name and shape.

    The model must be built. On any mismatch nothing is loaded and the
    report says what differs, so the caller cold-starts instead of crashing.
    """
    import tensorflow as tf

    folder = os.path.join(base_model_dir, WARM_START_DIR)
    manifest_path = os.path.join(folder, MANIFEST)
    if not tf.io.gfile.exists(manifest_path):
        return LoadReport(False, f"cold start: base model {base_model_dir} has no warm-start weights")
    with tf.io.gfile.GFile(manifest_path) as f:
        saved = json.load(f)["variables"]
    current = _shapes(model)
    missing = sorted(set(saved) ^ set(current))
    if missing:
        return LoadReport(False, f"cold start: variables differ from the base model: {missing[:5]}")
    wrong = [f"{k} {saved[k]} -> {current[k]}" for k in sorted(current) if saved[k] != current[k]]
    if wrong:
        return LoadReport(False, f"cold start: variable shapes differ from the base model: {wrong[:3]}")
    model.load_weights(os.path.join(folder, CHECKPOINT_PREFIX)).assert_existing_objects_matched()
    return LoadReport(True, "warm start: base weights loaded", len(current))
