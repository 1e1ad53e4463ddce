"""Retention: delete the payload of old artifacts nothing needs, keep every record.

Stock TFX keeps every artifact of every run forever; run every few minutes,
a continuous pipeline fills its disk. After each cycle the controller calls
`apply`, and `driftline gc` calls it by hand. It deletes the payload (the
folder at the artifact's URI) of every artifact older than the newest
`RetentionConfig.keep_cycles` cycles unless something still needs it:

* **the next cycle**: the latest blessed model and its blessing (the next
  base model and baseline; in online mode also the serving champion's, which
  is), and the model a rollback pinned while the pin
  stands, each with the span it was judged on; the replay window
  (the newest `trainer.replay_spans + 1` spans that are not quarantined, as
  the replay resolver counts them), spans not trained yet
  (`recovery.untrained_spans`) or quarantined after failing cycles (for
  `driftline replay`), the spans whose eval splits are carried to the next
  gate or released to the next training (thin spans,
  `training_inputs.carried_and_released`), and the newest artifact of every type;
* **serving**: for each version in the serving folder (the serving one and
  those a rollback can return to), the `PushedModel` that put it there (its
  payload is that version, which the pusher's own `keep_versions` bounds) and
  the model behind it; with `keep_all_pushed_models`, every model ever pushed;
  and the open online comparison's challenger (it serves beside the champion).

Everything else (old spans, transform graphs and statistics, models,
model runs, evaluations, blessings, schemas) loses its payload, with two
limits:

* only what lies under the pipeline root is ever deleted (the serving
  folder's versions are the pusher's, as before). An artifact whose URI
  points elsewhere (an imported model, a folder a user named) is left
  alone, and the report says so (`outside_root`);
* a span's dead letters (its `dead_letter/` folder) stay when its examples
  go: for a Kafka topic they are the only copy of the records that failed.
  `RetentionConfig.dead_letter_keep_cycles` (default None: for ever) bounds
  how long.

A deleted artifact's ML Metadata record stays with every property, so lineage,
status and the quarantine of rejected spans read it as before; its state
goes LIVE -> MARKED_FOR_DELETION -> (folder deleted) -> DELETED, so a kill
midway is finished by the next call. TFX's input resolution considers LIVE
artifacts only, so no resolver ever hands a deleted payload to a component.

`remove_unused_folders` deletes what killed runs leave under the pipeline
root (output folders no artifact names), execution folders whose artifacts
all lost their payload, and the per-execution scratch folders of
`.system/`. Call both only while holding the home's controller lock, so
that no cycle is running. No TFX import here.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Dict, Iterable, List, Optional, Set, Tuple

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.blessing_pusher.rollback import current_pin
from components.streaming_example_gen.committed_state import COMMITTED_STATE_PROPERTY
from components.warm_start_trainer.quarantine import quarantined_after_failures, rejected_spans
from components.warm_start_trainer.training_inputs import carried_and_released, newest_judged_cycle
from components.mlmd_vocabulary import PIPELINE_CONTEXT_TYPE, PIPELINE_RUN_CONTEXT_TYPE, PUBLISHED_STATES
from pipelines.config import DriftlineConfig
from pipelines.metadata import open_store, prop, store_exists
from pipelines.recovery import interrupted_executions, untrained_spans

_LIVE = metadata_store_pb2.Artifact.LIVE
_MARKED = metadata_store_pb2.Artifact.MARKED_FOR_DELETION
_DELETED = metadata_store_pb2.Artifact.DELETED
_PUBLISHED = PUBLISHED_STATES
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
# Folders under <pipeline_root>/<node>/.system/ that hold one entry per execution.
_SCRATCH = ("executor_execution", "driver_execution", "stateful_working_dir")
# Set by StreamingExampleGen on the first span of a run: <span uri>/dead_letter.
DEAD_LETTER_URI_PROPERTY = "dead_letter_uri"


@dataclasses.dataclass
class RetentionPlan:
    """What `apply` would do: artifact id -> why it is kept, and the artifacts whose payload goes."""

    keep: Dict[int, str]
    delete: List[metadata_store_pb2.Artifact]
    type_names: Dict[int, str]
    recent_runs: List[str]
    # Artifact id -> URI of payloads that would go but lie outside the pipeline root: never deleted.
    outside_root: Dict[int, str] = dataclasses.field(default_factory=dict)
    # Spans in `delete` whose dead-letter folder stays: artifact id -> that folder.
    keep_dead_letters: Dict[int, str] = dataclasses.field(default_factory=dict)
    # Dead-letter folders of spans deleted earlier whose `dead_letter_keep_cycles` are up.
    expired_dead_letters: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RetentionReport:
    """What one `apply` did (or, with dry_run, would do)."""

    dry_run: bool
    keep_cycles: int
    deleted: Dict[str, int]  # artifact type -> payloads deleted
    deleted_ids: List[int]
    kept: Dict[str, int]  # reason -> artifacts kept for it (LIVE ones only)
    # Removed (killed runs' output, emptied execution folders, scratch), relative to the pipeline root.
    unused_folders: List[str]
    freed_bytes: int
    seconds: float
    # "artifact <id> (<type>) at <uri>" for each payload left alone because it lies outside the pipeline root.
    outside_root: List[str] = dataclasses.field(default_factory=list)
    dead_letters_kept: int = 0  # spans whose payload went but whose dead letters stay
    dead_letters_deleted: int = 0  # dead-letter folders deleted (dead_letter_keep_cycles)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        what = ", ".join(f"{n} {t}" for t, n in sorted(self.deleted.items())) or "nothing"
        text = f"retention (keep {self.keep_cycles} cycles): {verb} the payload of {what}"
        if self.unused_folders:
            text += f"; {'would remove' if self.dry_run else 'removed'} {len(self.unused_folders)} unused folders"
        if self.dead_letters_kept:
            text += f"; kept the dead letters of {self.dead_letters_kept} of those spans"
        if self.dead_letters_deleted:
            text += (f"; {'would delete' if self.dry_run else 'deleted'} {self.dead_letters_deleted} dead-letter "
                     "folders past dead_letter_keep_cycles")
        text += f"; {self.freed_bytes / 1e6:.1f} MB {'to free' if self.dry_run else 'freed'}"
        if self.outside_root:
            text += (f"; left {len(self.outside_root)} payloads outside the pipeline root alone (never deleted): "
                     + ", ".join(self.outside_root))
        return text


def _pipeline_context(store: metadata_store.MetadataStore, pipeline_name: str):
    return store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)


def recent_runs(store: metadata_store.MetadataStore, pipeline_context, n: int) -> List[metadata_store_pb2.Context]:
    """The newest `n` pipeline runs (TFX makes each run's context a child of the pipeline's)."""
    runs = [c for c in store.get_children_contexts_by_context(pipeline_context.id)
            if c.type == PIPELINE_RUN_CONTEXT_TYPE or _context_type(store, c) == PIPELINE_RUN_CONTEXT_TYPE]
    return sorted(runs, key=lambda c: c.id)[-n:]


def _context_type(store: metadata_store.MetadataStore, context) -> str:
    return store.get_context_types_by_id([context.type_id])[0].name


def _outputs_of_runs(store: metadata_store.MetadataStore, runs: Iterable) -> Set[int]:
    execution_ids = sorted({e.id for run in runs for e in store.get_executions_by_context(run.id)})
    if not execution_ids:
        return set()
    return {e.artifact_id for e in store.get_events_by_execution_ids(execution_ids) if e.type in _OUTPUT_EVENTS}


def plan(config: DriftlineConfig, store: Optional[metadata_store.MetadataStore] = None,
         keep_cycles: Optional[int] = None) -> RetentionPlan:
    """Decides, from ML Metadata and the serving folder alone, which payloads to keep and which to delete."""
    from components.blessing_pusher import serving

    keep_cycles = config.retention.keep_cycles if keep_cycles is None else keep_cycles
    if keep_cycles < 1:
        raise ValueError(f"keep_cycles must be >= 1, got {keep_cycles}")
    store = store or open_store(config.metadata_connection)
    type_names = {t.id: t.name for t in store.get_artifact_types()}
    context = _pipeline_context(store, config.pipeline_name)
    if context is None:
        return RetentionPlan({}, [], type_names, [])
    artifacts = store.get_artifacts_by_context(context.id)
    live = [a for a in artifacts if a.state == _LIVE]
    by_type: Dict[str, List[metadata_store_pb2.Artifact]] = {}
    for a in live:
        by_type.setdefault(type_names.get(a.type_id, "?"), []).append(a)
    keep: Dict[int, str] = {}

    def protect(ids: Iterable[int], reason: str) -> None:
        for i in ids:
            keep.setdefault(int(i), reason)

    runs = recent_runs(store, context, keep_cycles)
    protect(_outputs_of_runs(store, runs) & {a.id for a in live}, f"made by one of the newest {keep_cycles} cycles")

    # The next cycle's base model and baseline, as LatestBlessedModelStrategy picks it.
    blessed = {}
    for b in by_type.get("ModelBlessing", []):
        if prop(b, "blessed") == 1 and prop(b, "current_model_id") is not None:
            blessed[int(prop(b, "current_model_id"))] = b.id
    base = max((m for m in by_type.get("Model", []) if m.id in blessed), key=lambda m: m.id, default=None)
    if base is not None:
        protect([base.id, blessed[base.id]], "the latest blessed model: the next cycle's base model and baseline")
        judged_on = prop(base, "newest_examples_id")
        if judged_on is not None:
            protect([judged_on], "the span the base model was judged on: the next cycle trains on its eval split")
    # Online evaluation: the serving champion is the base model and baseline (the latest blessed model may be
    # a challenger); its blessing must stay LIVE for the resolver to offer it.
    if config.online.enabled:
        from components.online_evaluator.record import champion_model_id

        champion = champion_model_id(store, config.pipeline_name)
        models = {m.id: m for m in by_type.get("Model", [])}
        if champion in models:
            protect([champion] + ([blessed[champion]] if champion in blessed else []),
                    "the champion (online evaluation): the next cycle's base model and baseline")
            judged_on = prop(models[champion], "newest_examples_id")
            if judged_on is not None:
                protect([judged_on], "the span the champion was judged on: the next cycle trains on its eval split")
    # A rollback's pin replaces it as base model and baseline while it stands, however old the model.
    pin = current_pin(store, config.pipeline_name)
    if pin is not None:
        pinned = {a.id: a for a in by_type.get("Model", []) if a.id == pin.model_id}
        protect([pin.model_id] + ([blessed[pin.model_id]] if pin.model_id in blessed else []),
                "the pinned model (rollback): the next cycle's base model and baseline")
        judged_on = prop(pinned[pin.model_id], "newest_examples_id") if pinned else None
        if judged_on is not None:
            protect([judged_on], "the span the pinned model was judged on: the next cycle trains on its eval split")

    # Online evaluation: the open comparison's challenger serves beside the champion (`driftline serve` loads
    # it from its SavedModel), and a promotion pushes that SavedModel, however many cycles the comparison runs.
    from components.online_evaluator.record import open_comparison

    running = open_comparison(store, config.pipeline_name)
    if running is not None:
        protect([running.challenger_model_id], "the online comparison's challenger: it serves beside the champion")

    # The versions in the serving folder (serving, or ready for a rollback): their push records and models.
    pushes = [a for a in artifacts if type_names.get(a.type_id) == "PushedModel" and a.state in _PUBLISHED
              and prop(a, serving.PUSHED_PROPERTY) == 1]
    serving_dir = os.path.abspath(config.serving_dir)
    in_folder = set(serving.versions(serving_dir))
    for p in pushes:
        version = prop(p, serving.PUSHED_VERSION_PROPERTY)
        destination = prop(p, serving.PUSHED_DESTINATION_PROPERTY) or p.uri
        model_id = prop(p, serving.MODEL_ID_PROPERTY)
        if version is not None and int(version) in in_folder and os.path.normpath(destination) == \
                os.path.normpath(serving.version_dir(serving_dir, int(version))):
            protect([p.id], f"the record of serving version {version}")
            if model_id is not None:
                protect([model_id], f"behind serving version {version}")
        elif config.retention.keep_all_pushed_models and model_id is not None:
            protect([model_id], "was pushed (keep_all_pushed_models)")

    # The replay window, counted the way the replay resolver counts it.
    spans = [a for a in by_type.get("Examples", []) if COMMITTED_STATE_PROPERTY in a.custom_properties]
    quarantined = rejected_spans(store, [a.id for a in spans]) | quarantined_after_failures(store)
    newest_per_span: Dict[int, metadata_store_pb2.Artifact] = {}
    for a in spans:
        if a.id in quarantined:
            continue
        span = a.properties["span"].int_value
        if span not in newest_per_span or a.id > newest_per_span[span].id:
            newest_per_span[span] = a
    window = sorted(newest_per_span)[-(config.trainer.replay_spans + 1):]
    protect((newest_per_span[s].id for s in window), "in the replay window")
    # Thin spans: the eval splits the next cycle's gate scores on (carried) or its trainer trains on (released),
    # as CarriedEvalSpansStrategy picks them (quarantine does not matter to it: it wants refused cycles' spans).
    carried, released = carried_and_released(*newest_judged_cycle(store, config.pipeline_name),
                                             config.gate.max_carried_eval_spans)
    newest_of_span: Dict[int, metadata_store_pb2.Artifact] = {}
    for a in spans:
        span = a.properties["span"].int_value
        if span in set(carried) | set(released) and (span not in newest_of_span or a.id > newest_of_span[span].id):
            newest_of_span[span] = a
    protect((newest_of_span[s].id for s in carried if s in newest_of_span),
            "its eval split is carried: the next cycle's gate scores on it")
    protect((newest_of_span[s].id for s in released if s in newest_of_span),
            "its eval split is released: the next cycle trains on it")
    protect((a.id for a in untrained_spans(store, config.pipeline_name)),
            "published but not trained yet: the next cycle resumes on it")
    protect(quarantined_after_failures(store), "quarantined after failing cycles: `driftline replay` trains it")
    for name, rows in by_type.items():
        protect([max(a.id for a in rows)], f"the newest {name}")

    candidates = [a for a in artifacts
                  if a.state == _MARKED  # a deletion a kill interrupted: always finished
                  or (a.state == _LIVE and a.id not in keep)]
    # Deleted only under the pipeline root (or, as a record only, in the serving folder: see _delete_payload).
    outside = {a.id: a.uri for a in candidates
               if not _under(a.uri, config.pipeline_root) and not _under(a.uri, config.serving_dir)}
    delete = [a for a in candidates if a.id not in outside]

    # Dead letters outlive their span's examples, for ever or for dead_letter_keep_cycles cycles.
    dl_cycles = config.retention.dead_letter_keep_cycles
    dl_recent = None if dl_cycles is None else _outputs_of_runs(store, recent_runs(store, context, dl_cycles))

    def dead_letters_stay(a: metadata_store_pb2.Artifact) -> bool:
        return dl_recent is None or a.id in dl_recent

    keep_dead_letters = {a.id: _dead_letter_dir(a) for a in delete
                         if _dead_letter_dir(a) and dead_letters_stay(a) and _exists(_dead_letter_dir(a))}
    expired = []
    if dl_recent is not None:
        for a in _by_state(artifacts, _DELETED):
            folder = _dead_letter_dir(a)
            if folder and not dead_letters_stay(a) and _under(folder, config.pipeline_root) and _exists(folder):
                expired.append(folder)
    return RetentionPlan(keep=keep, delete=sorted(delete, key=lambda a: a.id), type_names=type_names,
                         recent_runs=[r.name for r in runs], outside_root=outside,
                         keep_dead_letters=keep_dead_letters, expired_dead_letters=expired)


def _by_state(artifacts: Iterable[metadata_store_pb2.Artifact], state: int) -> List[metadata_store_pb2.Artifact]:
    return [a for a in artifacts if a.state == state]


def _dead_letter_dir(a: metadata_store_pb2.Artifact) -> str:
    """The span's dead-letter folder (`dead_letter_uri`, set on the first span of a run), or ""."""
    value = prop(a, DEAD_LETTER_URI_PROPERTY)
    return value if isinstance(value, str) else ""


def apply(config: DriftlineConfig, store: Optional[metadata_store.MetadataStore] = None, *,
          keep_cycles: Optional[int] = None, dry_run: bool = False) -> RetentionReport:
    """Deletes the payloads `plan` picks and the folders of killed runs; marks the artifacts DELETED."""
    started = time.monotonic()
    keep_cycles = config.retention.keep_cycles if keep_cycles is None else keep_cycles
    if not store_exists(config.metadata_connection):
        return RetentionReport(dry_run, keep_cycles, {}, [], {}, [], 0, 0.0)
    store = store or open_store(config.metadata_connection)
    p = plan(config, store, keep_cycles)
    deleted: Dict[str, int] = {}
    freed = 0
    if p.delete:
        if not dry_run:
            # Marked first: a kill during the deletions leaves them MARKED_FOR_DELETION, never LIVE
            # without a payload, and the next call finishes them.
            _set_state(store, [a for a in p.delete if a.state == _LIVE], _MARKED)
        for a in p.delete:
            spared = p.keep_dead_letters.get(a.id)
            freed += _tree_bytes(a.uri) - (_tree_bytes(spared) if spared and _under(spared, a.uri) else 0)
            if not dry_run:
                _delete_payload(a.uri, config.serving_dir, spare=spared)
            name = p.type_names.get(a.type_id, "?")
            deleted[name] = deleted.get(name, 0) + 1
        if not dry_run:
            _set_state(store, p.delete, _DELETED)
    for folder in p.expired_dead_letters:
        freed += _tree_bytes(folder)
        if not dry_run:
            _delete_payload(folder, config.serving_dir)
    unused, unused_bytes = remove_unused_folders(config, store, dry_run=dry_run)
    kept: Dict[str, int] = {}
    for reason in p.keep.values():
        kept[reason] = kept.get(reason, 0) + 1
    outside = [f"artifact {a.id} ({p.type_names.get(a.type_id, '?')}) at {a.uri}"
               for a in _artifacts_by_id(store, sorted(p.outside_root))]
    return RetentionReport(dry_run=dry_run, keep_cycles=keep_cycles, deleted=deleted,
                           deleted_ids=[a.id for a in p.delete], kept=kept, unused_folders=unused,
                           freed_bytes=freed + unused_bytes, seconds=round(time.monotonic() - started, 3),
                           outside_root=outside, dead_letters_kept=len(p.keep_dead_letters),
                           dead_letters_deleted=len(p.expired_dead_letters))


def _artifacts_by_id(store: metadata_store.MetadataStore, ids: List[int]) -> List[metadata_store_pb2.Artifact]:
    return store.get_artifacts_by_id(ids) if ids else []


def _set_state(store: metadata_store.MetadataStore, artifacts: List[metadata_store_pb2.Artifact], state: int) -> None:
    if not artifacts:
        return
    updates = []
    for a in artifacts:
        update = metadata_store_pb2.Artifact(id=a.id, type_id=a.type_id, state=state)
        updates.append(update)
    # Only the state changes: every property, and so the lineage, stays as it was.
    store.put_artifacts(updates, field_mask_paths=["state"])


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _tree_bytes(uri: str) -> int:
    if not _is_local(uri):
        return 0
    total = 0
    for dirpath, _, names in os.walk(_local(uri)):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def _delete_payload(uri: str, serving_dir: str, spare: Optional[str] = None) -> None:
    """Deletes the folder at `uri`, except `spare` (a span's dead letters) when it is a child of it."""
    if _under(uri, serving_dir):
        # A rollback's PushedModel names its serving version: that folder is the pusher's to keep or drop.
        return
    spare_name = os.path.basename(spare.rstrip("/")) if spare and _under(spare, uri) and \
        _norm(os.path.dirname(spare.rstrip("/"))) == _norm(uri) else None
    if not _is_local(uri):
        import tensorflow as tf  # remote payloads (gs://...) only

        if not tf.io.gfile.exists(uri):
            return
        if spare_name is None:
            tf.io.gfile.rmtree(uri)
            return
        for child in tf.io.gfile.listdir(uri):
            child = child.rstrip("/")
            if child != spare_name:
                path = os.path.join(uri, child)
                (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else tf.io.gfile.remove)(path)
        return
    # The execution's folder around it (<root>/<node>/<key>/<execution id>) goes with
    # `remove_unused_folders` once no artifact that keeps its payload (or dead letters) is in it.
    path = _local(uri)
    if spare_name is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        if child == spare_name:
            continue
        target = os.path.join(path, child)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            os.remove(target)


def _norm(uri: str) -> str:
    return os.path.realpath(_local(uri)) if _is_local(uri) else uri.rstrip("/")


def _under(uri: str, folder: str) -> bool:
    """Whether `uri` lies strictly inside `folder` (symbolic links resolved; never the folder itself)."""
    if not uri or not folder or _is_local(uri) != _is_local(folder):
        return False
    path, top = _norm(uri), _norm(folder)
    if _is_local(uri):
        return path != top and os.path.commonpath([path, top]) == top
    return path.startswith(top + "/")


def _exists(uri: str) -> bool:
    if _is_local(uri):
        return os.path.isdir(_local(uri))
    import tensorflow as tf  # remote payloads (gs://...) only

    return tf.io.gfile.exists(uri)


def _parts(path: str, root: str) -> Tuple[str, ...]:
    rel = os.path.relpath(path, root)
    if rel == "." or rel.startswith(".."):
        return ()
    return tuple(rel.split(os.sep))


def remove_unused_folders(config: DriftlineConfig, store: metadata_store.MetadataStore,
                   dry_run: bool = False) -> Tuple[List[str], int]:
    """Deletes folders under the pipeline root that nothing uses; returns (relative paths, bytes).

    An output folder `<root>/<node>/<key>/<execution id>` goes when no
    artifact in ML Metadata whose payload is kept has its URI in it: its
    execution never published (a killed run), or retention deleted all it
    held. `<root>/<node>/.system/*/<entry>` are per-execution scratch folders.
    Folders of executions still NEW or RUNNING are left alone; call
    `recovery.recover_interrupted` first, under the controller lock.
    """
    root = os.path.abspath(config.pipeline_root)
    if not _is_local(root) or not os.path.isdir(root):
        return [], 0
    active = {e.id for e in interrupted_executions(store, config.pipeline_name)}
    referenced: Set[Tuple[str, ...]] = set()
    for a in store.get_artifacts():
        # A span whose examples went may keep its dead letters in its folder (RetentionConfig.dead_letter_keep_cycles).
        kept = a.uri if a.state != _DELETED else _dead_letter_dir(a)
        if kept and _is_local(kept) and (a.state != _DELETED or os.path.isdir(_local(kept))):
            parts = _parts(os.path.abspath(_local(kept)), root)
            if parts:
                referenced.add(parts[:3])
    removed: List[str] = []
    freed = 0

    def drop(path: str) -> None:
        nonlocal freed
        freed += _tree_bytes(path)
        removed.append(os.path.relpath(path, root))
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)

    for node in sorted(os.listdir(root)):
        node_dir = os.path.join(root, node)
        if node.startswith(".") or not os.path.isdir(node_dir) or (node,) in referenced:
            continue
        for key in sorted(os.listdir(node_dir)):
            key_dir = os.path.join(node_dir, key)
            if not os.path.isdir(key_dir) or (node, key) in referenced:
                continue
            if key == ".system":
                for scratch in _SCRATCH:
                    scratch_dir = os.path.join(key_dir, scratch)
                    if not os.path.isdir(scratch_dir):
                        continue
                    for entry in sorted(os.listdir(scratch_dir)):
                        # executor_execution/<execution id>; the others are named by no execution id.
                        busy = (int(entry) in active) if (scratch == "executor_execution" and entry.isdigit()) \
                            else bool(active)
                        if not busy:
                            drop(os.path.join(scratch_dir, entry))
                continue
            for entry in sorted(os.listdir(key_dir)):
                if not entry.isdigit() or int(entry) in active or (node, key, entry) in referenced:
                    continue
                drop(os.path.join(key_dir, entry))
    return removed, freed
