"""The model the server serves: the newest version of the serving folder, swapped atomically.

The serving folder is TF Serving's layout (`<serving_dir>/<version>/`, written
atomically by `components/blessing_pusher/serving.py`), and like TF Serving the
server serves its highest version: a push and a rollback both publish a new,
highest version. A background thread polls the folder; when the highest
version changes it loads that version, checks that it has the raw-features
signature and that the event schema covers its inputs, warms it up with one
request (the first call of a loaded function costs far more than the next),
and only then publishes it with a single reference assignment. While a model
serves, the store's thread paces itself (`pace_thread`): loading a version,
freeing the old one and everything else it does pause every millisecond, so
the requests get the GIL and the cores. A request reads
`ModelStore.current` once and uses that model for all of its work, so a swap
never changes the model under a request in flight, and no request waits for a
load. The old model is dropped after the swap; once its last request is done
nothing references it and its memory goes.

A version that fails to load (corrupt, or exported without `serving_raw` by an
older driftline) is skipped with its reason, counted, and tried again after
`retry_seconds`; the server keeps serving what it has.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from components.blessing_pusher import serving
from components.event_schema import EventSchema

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A version cannot be served; the message says why."""


@dataclasses.dataclass
class LoadedModel:
    """One loaded version: its raw-features function and what it takes."""

    version: int
    path: str
    loaded_at_s: float
    # The version folder's modification time: when the push (or rollback) published it.
    published_at_s: float
    # field name -> tf.DType of the raw signature's inputs (every raw field but the label).
    inputs: Dict[str, object]
    output_key: str
    _fn: Callable
    _saved: object  # the loaded SavedModel: keeps the function's variables alive

    def predict(self, columns: Dict[str, Sequence]) -> np.ndarray:
        """Scores of a batch given as one list (or array) per input field: float32[batch]."""
        import tensorflow as tf

        feed = {name: tf.constant(columns[name], dtype=dtype) for name, dtype in self.inputs.items()}
        out = self._fn(**feed)[self.output_key]
        return np.reshape(out.numpy(), [-1])


_base_frozen = False
_base_lock = threading.Lock()


def freeze_base() -> None:
    """Once per process, before its first model loads: freezes everything alive (TensorFlow's ~330,000 objects).

    The collections that requests' garbage triggers then never walk them, nor does `collect_dropped_models`.
    The models themselves (~8,000 objects each) stay unfrozen: a frozen object is never freed, and a dropped
    model must be.
    """
    global _base_frozen
    with _base_lock:
        if _base_frozen:
            return
        import tensorflow  # noqa: F401  (its modules are most of what is frozen)

        gc.collect()
        gc.freeze()
        _base_frozen = True


def collect_dropped_models() -> None:
    """Frees a dropped model (a swapped-out version, a replaced shadow or challenger) now, not at some later
    collection: its graph and variables hold reference cycles.

    A full collection over what is not frozen (`freeze_base`): the models and what requests left, ~2 ms
    to walk, and ~28 ms of finalizers when it frees a model, paced in the store's thread (`pace_thread`).
    Unfreezing TensorFlow's objects to walk them too held the GIL ~130 ms per swap, one
    request's worth of stall each time (benchmarks/serving.py's swap windows).
    """
    freeze_base()
    gc.collect()


# While a model serves, the store's thread (loading the next version, freeing the old one, reading ML Metadata
# for the lineage and routing watchers) sleeps PAUSE_S after every WORK_S of its work. Unpaced, loading a
# version held the GIL in C calls of 5-11 ms (the 0.5 ms switch interval only acts between bytecodes) and
# took a core; freeing a swapped-out version ran ~28 ms of its objects' finalizers at once. Under one client's
# load the requests in a swap window then had a p99 of 32.1 ms against 9.9 ms outside them; paced, 20.3 ms
# against 12.1 ms, and a swap takes ~3.3 s from the push instead of ~0.9 s (8 swaps each, /tmp scratch runs of
# benchmarks/serving.py's hot swaps, 2026-12-06 13:40 UTC).
WORK_S = 0.001
PAUSE_S = 0.001


def pace_thread(when: Callable[[], bool], work_s: float = WORK_S, pause_s: float = PAUSE_S) -> None:
    """From now on the calling thread sleeps `pause_s` after every `work_s` of running, while `when()` is true.

    A profile function (`sys.setprofile`, this thread's only) sees every Python call and return and every
    call into C, also in library code (TensorFlow's loader) and in the finalizers a collection runs. So the
    thread pauses between them, releasing the GIL, however long it runs without a blocking call. One C call
    is never cut: its time is paid before the next pause.
    """
    perf, sleep = time.perf_counter, time.sleep
    last = [perf()]

    def pace(frame, event, arg) -> None:
        now = perf()
        if now - last[0] >= work_s:
            if when():
                sleep(pause_s)
            last[0] = perf()

    sys.setprofile(pace)


def load_version(serving_dir: str, version: int, schema: EventSchema) -> LoadedModel:
    """Loads `<serving_dir>/<version>` and warms it up; ModelLoadError when it cannot serve."""
    return load_saved_model(serving.version_dir(serving_dir, version), version, schema)


def load_saved_model(path: str, version: int, schema: EventSchema, what: Optional[str] = None) -> LoadedModel:
    """Loads the SavedModel at `path` (as `version`) and warms it up; ModelLoadError when it cannot serve.

    `what` names it in errors (default "version N"): the shadow candidate is a model, not a version.
    """
    import tensorflow as tf

    from pipelines.serve.signatures import RAW_SIGNATURE

    what = what or f"version {version}"
    freeze_base()  # before the first model: models are never frozen
    try:
        published = os.stat(path).st_mtime if serving.is_local(path) else time.time()
        saved = tf.saved_model.load(path)
    except Exception as e:  # a corrupt or vanished version: every reason is "cannot load"
        raise ModelLoadError(f"{what} at {path!r} does not load: {type(e).__name__}: {e}") from e
    if RAW_SIGNATURE not in saved.signatures:
        raise ModelLoadError(
            f"{what} at {path!r} has no {RAW_SIGNATURE!r} signature (it has {sorted(saved.signatures)}): "
            f"it was exported before driftline serve existed. Push a model trained by this driftline, or serve "
            f"the folder with TF Serving, which uses serving_default.")
    fn = saved.signatures[RAW_SIGNATURE]
    specs = fn.structured_input_signature[1]
    fields = schema.field_map
    unknown = sorted(set(specs) - set(fields))
    if unknown:
        raise ModelLoadError(f"{what} takes fields {unknown} that the event schema {schema.name!r} does "
                             f"not declare: the home's config is not the one this model was trained with")
    outputs = list(fn.structured_outputs)
    if len(outputs) != 1:
        raise ModelLoadError(f"{what}'s {RAW_SIGNATURE} has outputs {outputs}, expected one score")
    model = LoadedModel(version=version, path=path, loaded_at_s=time.time(), published_at_s=published,
                        inputs={name: spec.dtype for name, spec in specs.items()},
                        output_key=outputs[0], _fn=fn, _saved=saved)
    # Warm-up: the first call initialises the function's kernels and resources.
    dummy = {name: ["" if dtype == tf.string else 0] for name, dtype in model.inputs.items()}
    try:
        model.predict(dummy)
    except Exception as e:
        raise ModelLoadError(f"{what} loads but fails on a warm-up request: {type(e).__name__}: {e}") from e
    return model


class ModelStore:
    """The current model, and the thread that keeps it the newest version of `serving_dir`."""

    def __init__(self, serving_dir: str, schema: EventSchema, poll_seconds: float = 1.0,
                 retry_seconds: float = 30.0, on_load_error: Optional[Callable[[int, str], None]] = None,
                 on_swap: Optional[Callable[["LoadedModel"], None]] = None,
                 on_poll: Optional[Callable[[Optional["LoadedModel"]], None]] = None):
        self.serving_dir = serving_dir
        self.schema = schema
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.on_load_error = on_load_error
        self.on_swap = on_swap
        # Called after every poll with the served model, in this store's thread: what must follow a swap
        # but may need retries (ML Metadata's facts about the version) runs here, never on a request.
        self.on_poll = on_poll
        # The one reference requests read; replaced whole, never mutated.
        self.current: Optional[LoadedModel] = None
        self.swaps = 0
        self.last_error: Optional[str] = None
        self._failed: Dict[int, Tuple[float, str]] = {}  # version -> (when it last failed to load, why)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def available_versions(self) -> List[int]:
        return serving.versions(self.serving_dir)

    def failed_versions(self) -> Dict[int, str]:
        """Versions that failed to load (and are not below the served one): version -> why."""
        return {v: why for v, (_, why) in self._failed.items()}

    def refresh(self) -> bool:
        """One poll: load and swap to the highest version if it is not the one served. True on a swap."""
        newest = serving.serving_version(self.serving_dir)
        current = self.current
        if newest is None or (current is not None and current.version == newest):
            return False
        failed = self._failed.get(newest)
        if failed is not None and time.monotonic() - failed[0] < self.retry_seconds:
            return False
        try:
            model = load_version(self.serving_dir, newest, self.schema)
        except ModelLoadError as e:
            self._failed[newest] = (time.monotonic(), str(e))
            self.last_error = str(e)
            log.error("not serving version %s: %s", newest, e)
            if self.on_load_error is not None:
                self.on_load_error(newest, str(e))
            return False
        # Versions below the served one will never be tried again: forget their failures.
        self._failed = {v: f for v, f in self._failed.items() if v > newest}
        self.current = model  # the swap: one assignment, atomic for every reader
        self.swaps += 1
        self.last_error = None
        log.info("serving version %s (%s)", model.version, model.path)
        if self.on_swap is not None:
            self.on_swap(model)
        del current, model
        collect_dropped_models()
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-store", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pace_thread(lambda: self.current is not None)  # no model yet: no request to yield to, load at full speed
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # listing a vanished folder, a transient FS error: poll again
                log.exception("polling %s failed", self.serving_dir)
            if self.on_poll is not None:
                try:
                    self.on_poll(self.current)
                except Exception:  # whatever follows a poll is never a reason to stop polling
                    log.exception("after polling %s", self.serving_dir)
            self._stop.wait(self.poll_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
