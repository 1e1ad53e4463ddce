"""Crash recovery: continue from what ML Metadata says was committed.

A cycle is one TFX run, and TFX publishes each component's outputs together
with its execution in one ML Metadata transaction. So whatever moment a
SIGKILL hits, MLMD holds whole component results or nothing, and what a
killed cycle leaves behind is:

* **Executions stuck in RUNNING** (or NEW), with output folders on disk that
  no artifact names. `recover_interrupted` marks them CANCELED, saying why;
  `pipelines.retention.remove_unused_folders` deletes the folders.
* **Spans published but never trained.** StreamingExampleGen committed their
  stream position, so ingestion will not emit them again, but the cycle died
  before the gate judged a model trained on them. `untrained_spans` finds
  them, and the controller's next cycle is a resumed one over exactly these
  spans (`create_pipeline(config, resume=True)`), before anything new: no
  span is lost, none is trained twice. A span on which resumed cycles keep
  failing is quarantined after `controller.quarantine_after_failures` and
  left out (`pipelines/failures.py`), until `driftline replay` releases it.
* **A push cut short.** The pusher copies into a hidden folder and renames it
  into place atomically, then TFX records the `PushedModel`. Killed in
  between, serving holds a complete version ML Metadata does not know.
  `recover_interrupted` finishes that pusher execution the way TFX would
  have: it finds the version holding the model (byte for byte), or pushes
  the blessed model if the rename never happened, and publishes the
  `PushedModel` with the execution marked COMPLETE, in one transaction. A
  blessing is a committed verdict, so its push is owed; a push is never
  recorded for a model the gate did not bless, nor over a newer push.

Run these only while holding the home's controller lock, and with ML
Metadata on MySQL the pipeline's lease (`pipelines.controller.pipeline_lock`):
nothing else may be running a cycle. Plain functions over ML Metadata and folders; no TFX import.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence, Set

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.mlmd_vocabulary import PIPELINE_CONTEXT_TYPE
from components.warm_start_trainer.untrained import (_artifacts_of_type, judged_span_ids,  # noqa: F401
                                                    untrained_spans)  # (re-exported)
from pipelines.config import DriftlineConfig
from pipelines.metadata import PUSHER_ID, node_of_execution, open_store, prop, store_exists

_ACTIVE = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
# Custom property on an execution this module finished or cancelled: what happened and when.
RECOVERY_PROPERTY = "driftline_recovery"
SERVING_SUBDIRS = ("Format-Serving", "serving_model_dir", "")


@dataclasses.dataclass(frozen=True)
class PushRecovery:
    execution_id: int
    model_id: int
    version: Optional[int]  # None: not pushed (see reason)
    how: str  # "recorded" (the version was there), "pushed" (pushed now) or "not pushed"
    reason: str


@dataclasses.dataclass(frozen=True)
class RecoveryReport:
    cancelled: List[Dict[str, object]]  # [{"execution_id", "node"}]
    push: Optional[PushRecovery] = None

    @property
    def anything(self) -> bool:
        return bool(self.cancelled) or self.push is not None

    def describe(self) -> str:
        parts = []
        if self.cancelled:
            parts.append("marked interrupted executions CANCELED: " + ", ".join(
                f"{c['node']} ({c['execution_id']})" for c in self.cancelled))
        if self.push is not None:
            parts.append(self.push.reason)
        return "; ".join(parts) if parts else "nothing was interrupted"


def _pipeline_context(store: metadata_store.MetadataStore, pipeline_name: str):
    return store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)


def interrupted_executions(store: metadata_store.MetadataStore,
                           pipeline_name: str) -> List[metadata_store_pb2.Execution]:
    """Executions of the pipeline that never finished (NEW or RUNNING), oldest first."""
    context = _pipeline_context(store, pipeline_name)
    if context is None:
        return []
    return sorted((e for e in store.get_executions_by_context(context.id) if e.last_known_state in _ACTIVE),
                  key=lambda e: e.id)


def _now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def recover_interrupted(config: DriftlineConfig,
                        store: Optional[metadata_store.MetadataStore] = None) -> RecoveryReport:
    """Finishes an interrupted push and marks every other interrupted execution CANCELED.

    Idempotent: killed halfway, the next call finds the same evidence (the
    pusher execution is still RUNNING until the one transaction that records
    the push) and ends the same way.
    """
    if store is None:
        if not store_exists(config.metadata_connection):
            return RecoveryReport(cancelled=[])
        store = open_store(config.metadata_connection)
    interrupted = interrupted_executions(store, config.pipeline_name)
    if not interrupted:
        return RecoveryReport(cancelled=[])
    nodes = {e.id: node_of_execution(store, e.id, config.pipeline_name) for e in interrupted}
    push = None
    pushers = [e for e in interrupted if nodes[e.id] == PUSHER_ID]
    if pushers:
        # Only the newest can be owed: an older one was overtaken by later cycles.
        push = _recover_push(store, config, pushers[-1])
    cancelled = []
    for execution in interrupted:
        if push is not None and execution.id == push.execution_id and push.how != "not pushed":
            continue
        [current] = store.get_executions_by_id([execution.id])
        if current.last_known_state not in _ACTIVE:
            continue
        current.last_known_state = metadata_store_pb2.Execution.CANCELED
        current.custom_properties[RECOVERY_PROPERTY].string_value = (
            f"interrupted: the process running it died; marked CANCELED by pid {os.getpid()} at {_now_text()}"
            + (f"; {push.reason}" if push is not None and execution.id == push.execution_id else ""))
        store.put_executions([current])
        cancelled.append({"execution_id": execution.id, "node": nodes[execution.id] or "?"})
    return RecoveryReport(cancelled=cancelled, push=push)


def _inputs(store: metadata_store.MetadataStore, execution_id: int) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    events = [e for e in store.get_events_by_execution_ids([execution_id])
              if e.type == metadata_store_pb2.Event.INPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id(sorted({e.artifact_id for e in events}))}
    result: Dict[str, List[metadata_store_pb2.Artifact]] = {}
    for event in events:
        for step in event.path.steps:
            if step.HasField("key") and event.artifact_id in artifacts:
                result.setdefault(step.key, []).append(artifacts[event.artifact_id])
    return result


def model_serving_dir(model_uri: str) -> Optional[str]:
    """The folder holding a Model artifact's SavedModel (`<uri>/Format-Serving` in the stock layout)."""
    from components.blessing_pusher import serving

    for sub in SERVING_SUBDIRS:
        candidate = os.path.join(model_uri, sub) if sub else model_uri
        if serving.has_saved_model(candidate):
            return candidate
    return None


def same_tree(a: str, b: str) -> bool:
    """Whether two folders hold the same files with the same bytes (local or remote, through tf.io.gfile).

    An empty or missing folder is never "the same": no files prove nothing.
    """
    import tensorflow as tf

    def files(root: str) -> List[str]:
        out = []
        if not tf.io.gfile.isdir(root):
            return out
        for dirpath, _, names in tf.io.gfile.walk(root):
            out += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
        return sorted(out)

    names = files(a)
    if not names or names != files(b):
        return False
    for name in names:
        with tf.io.gfile.GFile(os.path.join(a, name), "rb") as fa, tf.io.gfile.GFile(os.path.join(b, name), "rb") as fb:
            while True:
                chunk_a, chunk_b = fa.read(1 << 20), fb.read(1 << 20)
                if chunk_a != chunk_b:
                    return False
                if not chunk_a:
                    break
    return True


def _recorded_versions(store: metadata_store.MetadataStore, serving_dir: str) -> Set[int]:
    from components.blessing_pusher import serving

    recorded = set()
    for a in _artifacts_of_type(store, "PushedModel"):
        if prop(a, serving.PUSHED_PROPERTY) != 1 or prop(a, serving.PUSHED_VERSION_PROPERTY) is None:
            continue
        destination = prop(a, serving.PUSHED_DESTINATION_PROPERTY) or a.uri
        version = int(prop(a, serving.PUSHED_VERSION_PROPERTY))
        if os.path.normpath(destination) == os.path.normpath(serving.version_dir(serving_dir, version)):
            recorded.add(version)
    return recorded


def _recover_push(store: metadata_store.MetadataStore, config: DriftlineConfig,
                  execution: metadata_store_pb2.Execution) -> PushRecovery:
    from components.blessing_pusher import serving

    serving_dir = os.path.abspath(config.serving_dir)
    inputs = _inputs(store, execution.id)
    models = inputs.get("model") or []
    # The pusher's blessing inputs (components/blessing_pusher/executor.py BLESSING_KEYS): every one must say yes.
    blessings = inputs.get("model_blessing", []) + inputs.get("infra_blessing", [])
    model_id = models[0].id if models else -1

    def no(reason: str) -> PushRecovery:
        return PushRecovery(execution.id, model_id, None, "not pushed",
                            f"interrupted push of model {model_id} not completed: {reason}")

    if not models or not inputs.get("model_blessing"):
        return no("its inputs are not recorded")
    verdicts = [serving.blessing_verdict({k: prop(b, k) for k in b.custom_properties}) for b in blessings]
    if not all(v.blessed for v in verdicts):
        return no("the model is not blessed")
    if prop(execution, "challenger_mode") == 1 and serving.serving_version(serving_dir) is not None:
        # Online evaluation: a blessed model never goes over a serving champion; the controller deploys it as
        # the challenger from its blessing (pipelines/online.py), so there is no push to finish.
        return no(f"online evaluation: a champion serves (version {serving.serving_version(serving_dir)}), so the "
                  "model is deployed as the challenger, not pushed")
    started = execution.create_time_since_epoch
    newer = [a.id for a in _artifacts_of_type(store, "PushedModel")
             if prop(a, serving.PUSHED_PROPERTY) == 1 and a.create_time_since_epoch >= started]
    if newer:
        return no(f"a later push (PushedModel {max(newer)}) already serves a newer model")
    model = models[0]
    model_dir = model_serving_dir(model.uri)
    if model_dir is None:
        return no(f"its SavedModel is gone from {model.uri}")
    recorded = _recorded_versions(store, serving_dir)
    found = None
    for version in reversed(serving.versions(serving_dir)):
        if version in recorded:
            continue
        if same_tree(model_dir, serving.version_dir(serving_dir, version)):
            found = version
            break
    if found is not None:
        version, how = found, "recorded"
        why = f"the push of model {model.id} was interrupted after version {version} was in place; recorded it"
    else:
        result = serving.push(model_dir, serving_dir)
        version, how = result.version, "pushed"
        why = f"the push of model {model.id} was interrupted before its version was in place; pushed it as {version}"
    destination = serving.version_dir(serving_dir, version)
    _publish_push(store, config, execution, model.id, version, destination, why)
    keep = prop(execution, "keep_versions", config.pusher.keep_versions)
    serving.apply_retention(serving_dir, int(keep))
    return PushRecovery(execution.id, model.id, version, how, why)


def _publish_push(store: metadata_store.MetadataStore, config: DriftlineConfig,
                  execution: metadata_store_pb2.Execution, model_id: int, version: int, destination: str,
                  why: str) -> None:
    """Publishes the pusher execution's PushedModel and marks it COMPLETE, as TFX would have, in one transaction."""
    from components.blessing_pusher import serving
    from components.mlmd_store import pushed_model_type_id

    # Where TFX put the output folder of this execution: <pipeline_root>/<node>/<output key>/<execution id>.
    uri = os.path.join(os.path.abspath(config.pipeline_root), PUSHER_ID, "pushed_model", str(execution.id))
    os.makedirs(uri, exist_ok=True)
    pushed = metadata_store_pb2.Artifact(type_id=pushed_model_type_id(store), uri=uri,
                                         state=metadata_store_pb2.Artifact.LIVE)
    props = pushed.custom_properties
    props[serving.PUSHED_PROPERTY].int_value = 1
    props[serving.PUSHED_DESTINATION_PROPERTY].string_value = destination
    props[serving.PUSHED_VERSION_PROPERTY].string_value = str(version)
    props[serving.MODEL_ID_PROPERTY].int_value = int(model_id)
    props[serving.REASON_PROPERTY].string_value = f"pushed as version {version}: blessed (recovered: {why})"
    props[serving.PUSHED_AT_MS_PROPERTY].int_value = int(time.time() * 1000)
    event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
    event.path.steps.add().key = "pushed_model"
    event.path.steps.add().index = 0
    [current] = store.get_executions_by_id([execution.id])
    current.last_known_state = metadata_store_pb2.Execution.COMPLETE
    current.custom_properties[RECOVERY_PROPERTY].string_value = (
        f"completed by pid {os.getpid()} at {_now_text()} after its process died: {why}")
    contexts = store.get_contexts_by_execution(execution.id)
    store.put_execution(current, [(pushed, event)], contexts, force_reuse_context=True)


def spans_text(artifacts: Sequence[metadata_store_pb2.Artifact]) -> str:
    return ", ".join(str(a.properties["span"].int_value) for a in artifacts)
