"""The serving folder: TF Serving's `<serving_dir>/<version>/` layout, written atomically.

TF Serving (and anything else that follows its file-system convention) watches
`serving_dir`, treats every child folder whose name is a positive integer as a
model version, and serves the highest. Invariant 4 of driftline is that it
never sees a partial model, so every change here is made in two steps:

1. the SavedModel is copied into a temporary folder *inside* `serving_dir`
   whose name is not numeric (`.tmp-<uuid>`), which TF Serving ignores, and
   flushed to disk;
2. that folder is renamed to `<serving_dir>/<version>` with `os.rename`,
   which on one POSIX file system is atomic: the version either does not
   exist or exists complete.

A rollback is the same move: the content of an earlier version is copied
into a temporary folder and renamed into place as a *new*, highest version,
so serving switches atomically and the history of versions stays. Retention
first renames a version it drops out of the numeric namespace, then deletes
it, so a crash mid-delete cannot leave a partial numeric version either.

Remote paths (`gs://...`, any `tf.io.gfile` scheme) have no atomic rename:
on GCS, renaming a folder copies and deletes object after object in name
order, so `saved_model.pb` would land before `variables/`. There the invariant
is carried by a commit marker instead, and no folder is ever renamed:

1. the SavedModel is copied straight into `<serving_dir>/<version>`, every
   file first and `saved_model.pb` last: the marker. A version folder without
   it is incomplete, and driftline ignores it (`versions` lists only complete
   versions; a new version number is higher than every numeric folder, complete
   or not, so a crashed copy is never reused or overwritten);
2. a loader that needs `saved_model.pb` cannot see a partial model: before the
   marker it finds no SavedModel and fails to load the version (a watcher such
   as TF Serving has to retry it), after it every file is there;
3. retention deletes a version's marker first, then the rest; leftovers of
   crashed copies below the newest complete version are deleted with it.

What a local file system gives and an object store does not: two pushers
racing for the same new version number. Run one pusher per serving folder.

These are plain functions over folders; nothing here imports TFX.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import time
import uuid
from typing import Dict, List, Mapping, Optional, Sequence

TMP_PREFIX = ".tmp-"
SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")
# A temporary folder older than this is a leftover of a crash, not a copy in progress.
DEFAULT_STALE_TMP_SECONDS = 3600.0

# Custom properties of a PushedModel: the stock Pusher's three ...
PUSHED_PROPERTY = "pushed"  # int 1/0
PUSHED_DESTINATION_PROPERTY = "pushed_destination"  # str <serving_dir>/<version>, only when pushed
PUSHED_VERSION_PROPERTY = "pushed_version"  # str (as the stock Pusher writes it), only when pushed
# ... and driftline's.
MODEL_ID_PROPERTY = "model_id"  # int: id of the Model artifact pushed (or considered)
REASON_PROPERTY = "reason"  # str: why pushed or not
PUSHED_AT_MS_PROPERTY = "pushed_at_ms"  # int, only when pushed
ROLLBACK_OF_PROPERTY = "rollback_of"  # int, only on PushedModels recorded by a rollback

_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
_MAX_PUBLISH_ATTEMPTS = 16


class ServingError(RuntimeError):
    """Base class for errors of the serving folder."""


class PushError(ServingError):
    """A model could not be pushed; the serving folder is unchanged."""


class RollbackError(ServingError):
    """A rollback was impossible; the serving folder is unchanged."""


class NotBlessedError(ServingError):
    """A model was not pushed because a blessing says it is not blessed."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PushResult:
    version: int
    destination: str  # <serving_dir>/<version>


@dataclasses.dataclass(frozen=True)
class RollbackResult:
    from_version: int  # was serving before the rollback
    to_version: int  # the earlier version whose model now serves
    new_version: int  # the new highest version holding a copy of `to_version`
    destination: str = ""  # <serving_dir>/<new_version>
    # Filled by rollback.rollback_and_record (ML Metadata ids); None otherwise.
    execution_id: Optional[int] = None
    pushed_model_id: Optional[int] = None
    model_id: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class RetentionResult:
    kept: List[int]
    deleted: List[int]
    removed_tmp: List[str]


@dataclasses.dataclass(frozen=True)
class BlessingVerdict:
    blessed: bool
    reason: str


# ---------------------------------------------------------------------------
# Paths and listing


def _gfile():
    import tensorflow as tf  # heavy; only when a folder is actually touched

    return tf.io.gfile


def is_local(path: str) -> bool:
    """True for a plain file-system path (where os.rename is atomic)."""
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def version_dir(serving_dir: str, version: int) -> str:
    return os.path.join(serving_dir, str(int(version)))


def _children(serving_dir: str) -> List[str]:
    if is_local(serving_dir):
        try:
            return os.listdir(_local(serving_dir))
        except FileNotFoundError:
            return []
    gfile = _gfile()
    if not gfile.exists(serving_dir):
        return []
    return [name.rstrip("/") for name in gfile.listdir(serving_dir)]


def _isdir(path: str) -> bool:
    return os.path.isdir(_local(path)) if is_local(path) else _gfile().isdir(path)


def _numeric_folders(serving_dir: str) -> List[int]:
    return sorted(int(name) for name in _children(serving_dir)
                  if _VERSION_RE.match(name) and _isdir(os.path.join(serving_dir, name)))


def versions(serving_dir: str) -> List[int]:
    """The model versions in `serving_dir`, ascending.

    A version is a folder named by a positive integer in canonical form
    (`7`, not `007`); temporary folders and anything else are ignored, as
    TF Serving ignores them. A missing folder has no versions. On an object
    store a version is complete only once its `saved_model.pb` is there
    (see the module doc); incomplete ones are not versions.
    """
    found = _numeric_folders(serving_dir)
    if is_local(serving_dir):
        return found
    return [v for v in found if has_saved_model(version_dir(serving_dir, v))]


def serving_version(serving_dir: str) -> Optional[int]:
    """The version TF Serving serves (the highest), or None when there is none."""
    found = versions(serving_dir)
    return found[-1] if found else None


def temp_dirs(serving_dir: str) -> List[str]:
    """Names of the temporary folders in `serving_dir` (copies in progress or crash leftovers)."""
    return sorted(n for n in _children(serving_dir) if n.startswith(TMP_PREFIX))


def has_saved_model(model_dir: str) -> bool:
    if is_local(model_dir):
        return any(os.path.isfile(os.path.join(_local(model_dir), f)) for f in SAVED_MODEL_FILENAMES)
    gfile = _gfile()
    return any(gfile.exists(os.path.join(model_dir, f)) for f in SAVED_MODEL_FILENAMES)


# ---------------------------------------------------------------------------
# Copy, flush, rename


def _copy_tree(src: str, dst: str) -> None:
    """Copies the folder `src` to the new folder `dst` with tf.io.gfile; the SavedModel proto last."""
    gfile = _gfile()
    gfile.makedirs(dst)
    last = []
    for root, dirs, files in gfile.walk(src):
        rel = os.path.relpath(root, src)
        target_root = dst if rel == "." else os.path.join(dst, rel)
        for d in dirs:
            gfile.makedirs(os.path.join(target_root, d.rstrip("/")))
        for f in files:
            pair = (os.path.join(root, f), os.path.join(target_root, f))
            if rel == "." and f in SAVED_MODEL_FILENAMES:
                last.append(pair)
            else:
                gfile.copy(*pair, overwrite=False)
    for pair in last:
        gfile.copy(*pair, overwrite=False)


def _fsync_tree(path: str) -> None:
    """Flushes every file and folder under the local folder `path` to disk."""
    for root, _, files in os.walk(path, topdown=False):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: str) -> None:
    if is_local(path):
        import shutil

        shutil.rmtree(_local(path), ignore_errors=True)
    else:
        gfile = _gfile()
        if gfile.exists(path):
            gfile.rmtree(path)


def _new_temp_dir(serving_dir: str) -> str:
    return os.path.join(serving_dir, f"{TMP_PREFIX}{uuid.uuid4().hex}")


def _publish(src_dir: str, serving_dir: str, version: Optional[int]) -> PushResult:
    """Copies `src_dir` into a temp folder of `serving_dir`, then renames it to a new version.

    With `version=None` the version is the highest existing plus one; if a
    concurrent writer takes that number first, the next one is tried. An
    explicit version that exists is an error: a version is never overwritten.
    """
    if not is_local(serving_dir):
        return _publish_to_object_store(src_dir, serving_dir, version)
    os.makedirs(_local(serving_dir), exist_ok=True)
    tmp = _new_temp_dir(serving_dir)
    try:
        _copy_tree(src_dir, tmp)
        if is_local(tmp):
            _fsync_tree(_local(tmp))
        for _ in range(_MAX_PUBLISH_ATTEMPTS):
            existing = versions(serving_dir)
            target = version if version is not None else (existing[-1] + 1 if existing else 1)
            if target in existing:
                raise PushError(f"version {target} already exists in {serving_dir}; a version is never "
                                f"overwritten (existing: {_fmt(existing)})")
            destination = version_dir(serving_dir, target)
            if _rename_no_replace(tmp, destination):
                return PushResult(version=target, destination=destination)
            if version is not None:
                raise PushError(f"version {target} appeared in {serving_dir} while pushing; not overwritten")
        raise PushError(f"could not find a free version in {serving_dir} after {_MAX_PUBLISH_ATTEMPTS} attempts "
                        "(concurrent pushes?)")
    finally:
        if _exists(tmp):
            _remove_tree(tmp)


def _publish_to_object_store(src_dir: str, serving_dir: str, version: Optional[int]) -> PushResult:
    """Copies `src_dir` into a new version folder, `saved_model.pb` last (the commit marker)."""
    gfile = _gfile()
    gfile.makedirs(serving_dir)
    taken = _numeric_folders(serving_dir)
    target = version if version is not None else (taken[-1] + 1 if taken else 1)
    if target in taken:
        raise PushError(f"version {target} already exists in {serving_dir} (complete or not); a version is never "
                        f"overwritten (existing: {_fmt(taken)})")
    destination = version_dir(serving_dir, target)
    _copy_tree(src_dir, destination)
    return PushResult(version=target, destination=destination)


def _exists(path: str) -> bool:
    return os.path.exists(_local(path)) if is_local(path) else _gfile().exists(path)


def _rename_no_replace(tmp: str, destination: str) -> bool:
    """Renames the local folder `tmp` to `destination`; False when `destination` already exists.

    `os.rename` refuses a non-empty existing target (ENOTEMPTY), and every
    version folder holds a SavedModel, so a concurrent writer that took the
    number first is detected, never overwritten. (Object stores never get
    here: they have no folder rename, see the module doc.)
    """
    src, dst = _local(tmp), _local(destination)
    if os.path.exists(dst):
        return False
    try:
        # Atomic on one file system; fails on a non-empty existing target.
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    _fsync_dir(os.path.dirname(dst) or ".")
    return True


def _fmt(vs: Sequence[int]) -> str:
    return ", ".join(str(v) for v in vs) if vs else "none"


# ---------------------------------------------------------------------------
# Push


def push(model_dir: str, serving_dir: str, version: Optional[int] = None) -> PushResult:
    """Pushes the SavedModel in `model_dir` to `serving_dir` as a new version, atomically.

    The model is copied (with `tf.io.gfile`, so `gs://` works) into
    `<serving_dir>/.tmp-<uuid>`, which TF Serving ignores, flushed with
    fsync, and renamed to `<serving_dir>/<version>` with `os.rename`. The
    version is the highest existing one plus one (1 for an empty folder)
    unless given; an existing version is never overwritten (PushError).

    On GCS and other object stores, which have no atomic rename, the model is
    copied straight into the new version folder with `saved_model.pb` last,
    the marker that makes it a version (see the module doc).
    """
    if not has_saved_model(model_dir):
        raise PushError(f"{model_dir} holds no SavedModel (no saved_model.pb): nothing to push")
    if version is not None and (int(version) != version or version < 1):
        raise PushError(f"version must be a positive integer, got {version!r}")
    if version is not None and version in versions(serving_dir):
        raise PushError(f"version {version} already exists in {serving_dir}; a version is never overwritten")
    return _publish(model_dir, serving_dir, version)


def blessing_verdict(properties: Mapping[str, object]) -> BlessingVerdict:
    """Reads a ModelBlessing's custom properties: blessed means the int property `blessed` == 1."""
    value = properties.get("blessed")
    # Vertex AI Pipelines hands artifact metadata over as JSON numbers: 1.0 is as blessed as 1.
    blessed = isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1
    reason = properties.get("reason")
    reason = str(reason) if reason not in (None, "") else "no reason recorded"
    return BlessingVerdict(blessed=blessed, reason=reason)


def push_blessed(model_dir: str, blessing_properties: Mapping[str, object], serving_dir: str,
                 version: Optional[int] = None,
                 more_blessings: Optional[Mapping[str, Mapping[str, object]]] = None) -> PushResult:
    """Pushes `model_dir` only if every blessing says blessed; otherwise NotBlessedError and nothing changes.

    `blessing_properties` are the ModelBlessing's custom properties (`blessed`,
    `reason`, ...); `more_blessings` maps a name (e.g. "infra_blessing") to
    the properties of further gates, each of which must also be blessed.
    """
    gates = {"model_blessing": blessing_properties, **dict(more_blessings or {})}
    for name, props in gates.items():
        verdict = blessing_verdict(props)
        if not verdict.blessed:
            raise NotBlessedError(f"not pushing {model_dir}: {name} is not blessed: {verdict.reason}",
                                  reason=verdict.reason)
    return push(model_dir, serving_dir, version)


# ---------------------------------------------------------------------------
# Retention


def _is_stale(path: str, stale_tmp_seconds: float, now: float) -> bool:
    if stale_tmp_seconds <= 0:
        return True
    try:
        if is_local(path):
            mtime = os.stat(_local(path)).st_mtime
        else:
            mtime = _gfile().stat(path).mtime_nsec / 1e9
    except Exception:  # object-store "folders" may have no stat: keep them unless told otherwise
        return False
    return now - mtime >= stale_tmp_seconds


def apply_retention(serving_dir: str, keep: int,
                    stale_tmp_seconds: float = DEFAULT_STALE_TMP_SECONDS) -> RetentionResult:
    """Keeps the newest `keep` versions and deletes older ones and stale temporary folders.

    The current (highest) version is never deleted (`keep` must be >= 1). A
    version is first renamed to a temporary name, then deleted, so a crash
    never leaves a partial numeric version. Temporary folders are deleted
    only when older than `stale_tmp_seconds` (by modification time), so a
    copy another process has in progress is left alone; 0 deletes them all.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (serving needs its current version), got {keep}")
    now = time.time()
    removed_tmp = []
    for name in temp_dirs(serving_dir):
        path = os.path.join(serving_dir, name)
        if _is_stale(path, stale_tmp_seconds, now):
            _remove_tree(path)
            removed_tmp.append(name)
    existing = versions(serving_dir)
    kept, dropped = existing[-keep:], existing[:-keep]
    deleted = []
    for v in dropped:
        src = version_dir(serving_dir, v)
        doomed = _new_temp_dir(serving_dir)
        if is_local(src):
            try:
                os.rename(_local(src), _local(doomed))
            except FileNotFoundError:
                continue  # deleted concurrently
            _remove_tree(doomed)
        else:
            _remove_marked_folder(src)
        deleted.append(v)
    if not is_local(serving_dir) and existing:
        # Crashed copies below the newest complete version are no copy in progress (one pusher at a time).
        for v in _numeric_folders(serving_dir):
            if v < existing[-1] and v not in existing:
                _remove_tree(version_dir(serving_dir, v))
                removed_tmp.append(str(v))
    return RetentionResult(kept=kept, deleted=deleted, removed_tmp=removed_tmp)


def _remove_marked_folder(path: str) -> None:
    """Deletes an object-store version: its marker first, so it stops being a version at once."""
    gfile = _gfile()
    for name in SAVED_MODEL_FILENAMES:
        marker = os.path.join(path, name)
        if gfile.exists(marker):
            gfile.remove(marker)
    _remove_tree(path)


# ---------------------------------------------------------------------------
# Rollback


def plan_rollback(serving_dir: str, to_version: Optional[int] = None) -> Dict[str, int]:
    """Checks a rollback without changing anything: {"from_version", "to_version"}, or RollbackError.

    `to_version=None` means the version just below the current one. Note that
    after a rollback the version below the current one is the version that
    was rolled back from, so a second argument-less rollback undoes the first.
    """
    existing = versions(serving_dir)
    if not existing:
        raise RollbackError(f"no model versions in {serving_dir}: nothing to roll back")
    current = existing[-1]
    if to_version is None:
        if len(existing) < 2:
            raise RollbackError(f"only version {current} exists in {serving_dir}: there is no earlier "
                                "version to roll back to")
        target = existing[-2]
    else:
        target = int(to_version)
        if target not in existing:
            raise RollbackError(f"version {target} does not exist in {serving_dir}; available: {_fmt(existing)}")
        if target == current:
            raise RollbackError(f"version {target} is already the serving version in {serving_dir}; "
                                f"available: {_fmt(existing)}")
    if not has_saved_model(version_dir(serving_dir, target)):
        raise RollbackError(f"version {target} in {serving_dir} holds no SavedModel (no saved_model.pb)")
    return {"from_version": current, "to_version": target}


def rollback(serving_dir: str, to_version: Optional[int] = None) -> RollbackResult:
    """Makes serving serve an earlier version's model, atomically, as a new highest version.

    The content of `<serving_dir>/<to_version>` is copied into a temporary
    folder and renamed to `<serving_dir>/<highest + 1>`, so TF Serving, which
    serves the highest version, switches in one step and every earlier
    version stays. `to_version=None` means the version just below the current
    one. A version that does not exist (or is the current one) raises
    RollbackError and changes nothing.
    """
    plan = plan_rollback(serving_dir, to_version)
    src = version_dir(serving_dir, plan["to_version"])
    try:
        pushed = _publish(src, serving_dir, None)
    except PushError as e:
        raise RollbackError(f"rollback to version {plan['to_version']} failed: {e}") from e
    return RollbackResult(from_version=plan["from_version"], to_version=plan["to_version"],
                          new_version=pushed.version, destination=pushed.destination)
