"""What ML Metadata knows about the served version: its push time, and how fresh its data is.

`driftline serve` loads versions from the serving folder, which holds files,
not history. ML Metadata (the single source of truth of the home) says which
model a version is, when it was pushed, and the newest event time of the data
that model learned from. `LineageWatch` reads these through the lineage
queries (`pipelines/lineage_queries.py`) in the model store's thread: after
each swap, not per request. The pusher publishes a version's folder before TFX
records its `PushedModel`, so a swap can find no record yet: the watch then
asks again every `retry_seconds` until it has one (or the next swap). A home
with no ML Metadata (a folder filled by hand, or TF Serving-style) has none
of these facts, and the gauges that need them are left out of /metrics.

With shadow scoring on (`serve.shadow`), the watch also keeps `shadow`: the
newest blessed model in ML Metadata when it is not the one serving (blessed
but not pushed, say refused by the latency gate, or not pushed yet, or the
model a rollback replaced), loaded from its Model artifact's SavedModel. It is
looked for after every swap and every `shadow_poll_seconds`, and loaded in
the model store's thread (a swap waits behind a candidate's load); nothing is
shadowed while the served version is unknown to ML Metadata (the watch could
not tell the candidate from the served model), nor when the newest blessed
model is the served one (an older one is no candidate).

Reading the store never fails the server: an error is logged, counted, and
retried like a missing record.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional, Tuple

log = logging.getLogger(__name__)

# How often a version whose record ML Metadata does not have yet is looked up again.
DEFAULT_RETRY_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class ServedLineage:
    """ML Metadata's facts about one served version (None where it has none)."""

    version: int
    model_id: Optional[int]
    pushed_at_ms: Optional[int]
    # The newest event time of the data the version's model was trained on.
    newest_event_ms: Optional[int]


@dataclasses.dataclass(frozen=True)
class ShadowModel:
    """The shadow candidate: a blessed Model artifact, loaded (a model_store.LoadedModel)."""

    model_id: int
    path: str
    model: Any


def shadow_candidate(metadata: Any, pipeline_name: str, serving_model_id: int) -> Optional[Tuple[int, str]]:
    """(model id, SavedModel folder) of the newest blessed model if it is not `serving_model_id`, else None.

    A model whose payload retention deleted, or whose folder holds no SavedModel, is no candidate.
    """
    from pipelines.lineage_queries import models
    from pipelines.metadata import open_store, store_exists
    from pipelines.recovery import model_serving_dir

    if not store_exists(metadata):
        return None
    blessed = [m for m in models(open_store(metadata), pipeline_name) if m.blessed and not m.payload_deleted]
    newest = max(blessed, key=lambda m: (m.created_ms, m.model_id), default=None)
    if newest is None or newest.model_id == serving_model_id:
        return None
    path = model_serving_dir(newest.uri)
    return (newest.model_id, path) if path is not None else None


def served_lineage(metadata: Any, serving_dir: str, pipeline_name: str, version: int) -> Optional[ServedLineage]:
    """The facts of `version` of `serving_dir`, or None while ML Metadata has no push of it (or no store)."""
    from pipelines.lineage_queries import models, serving
    from pipelines.metadata import open_store, store_exists

    if not store_exists(metadata):
        return None
    store = open_store(metadata)
    info = serving(store, serving_dir, pipeline_name, version=version)
    if info.model_id is None:
        return None
    record = next((m for m in models(store, pipeline_name) if m.model_id == info.model_id), None)
    return ServedLineage(version=version, model_id=info.model_id, pushed_at_ms=info.pushed_at_ms,
                         newest_event_ms=record.max_event_time_ms if record is not None else None)


class LineageWatch:
    """Keeps `served` (a ServedLineage of the served version) current; `tick` runs in the store's thread."""

    def __init__(self, metadata: Any, serving_dir: str, pipeline_name: str,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS,
                 on_error: Optional[Callable[[str], None]] = None,
                 shadow_schema: Any = None, shadow_poll_seconds: float = 10.0,
                 on_shadow_load_error: Optional[Callable[[int, str], None]] = None):
        self.metadata = metadata
        self.serving_dir = serving_dir
        self.pipeline_name = pipeline_name
        self.retry_seconds = retry_seconds
        self.on_error = on_error
        # Replaced whole, never mutated: /metrics reads it from another thread.
        self.served: Optional[ServedLineage] = None
        self._asked_version: Optional[int] = None
        self._asked_at = 0.0
        # Shadow scoring: on when given the event schema (the candidate is checked against it as a version is).
        self.shadow_schema = shadow_schema
        self.shadow_poll_seconds = shadow_poll_seconds
        self.on_shadow_load_error = on_shadow_load_error
        # The one reference requests read (like ModelStore.current); replaced whole.
        self.shadow: Optional[ShadowModel] = None
        self._shadow_checked: Optional[Tuple[Optional[int], float]] = None  # (served version, when)
        self._shadow_failed: Optional[int] = None  # a candidate that did not load: not tried again

    def current(self, version: Optional[int]) -> Optional[ServedLineage]:
        """The facts of `version` if they are known (never those of another version)."""
        served = self.served
        return served if served is not None and version is not None and served.version == version else None

    def tick(self, model: Any) -> None:
        """After a poll of the serving folder: the served version's facts, then the shadow candidate."""
        self._tick_served(model)
        if self.shadow_schema is not None:
            self._tick_shadow(model)

    def _tick_shadow(self, model: Any) -> None:
        served = self.current(model.version) if model is not None else None
        if served is None:
            # A new version whose model ML Metadata has not named yet may be the shadow itself: stop shadowing.
            self.shadow = None
            return
        version = model.version
        if self._shadow_checked is not None and self._shadow_checked[0] == version and \
                time.monotonic() - self._shadow_checked[1] < self.shadow_poll_seconds:
            return
        self._shadow_checked = (version, time.monotonic())
        try:
            found = shadow_candidate(self.metadata, self.pipeline_name, served.model_id)
        except Exception as e:  # as for the served version's facts: asked again at the next check
            if self.on_error is not None:
                self.on_error(f"{type(e).__name__}: {e}")
            log.warning("could not look for a shadow candidate in ML Metadata: %s: %s", type(e).__name__, e)
            return
        if found is None:
            if self.shadow is not None:
                log.info("no shadow candidate any more (model %s)", self.shadow.model_id)
            self.shadow = None
            return
        model_id, path = found
        if (self.shadow is not None and self.shadow.model_id == model_id) or self._shadow_failed == model_id:
            return
        from pipelines.serve.model_store import ModelLoadError, collect_dropped_models, load_saved_model

        try:
            loaded = load_saved_model(path, model_id, self.shadow_schema, what=f"shadow candidate model {model_id}")
        except ModelLoadError as e:
            self._shadow_failed = model_id
            log.error("not shadowing model %s: %s", model_id, e)
            if self.on_shadow_load_error is not None:
                self.on_shadow_load_error(model_id, str(e))
            return
        self.shadow = ShadowModel(model_id=model_id, path=path, model=loaded)
        del loaded
        # As after a swap (model_store.ModelStore.refresh): free the previous candidate now.
        collect_dropped_models()
        log.info("shadow scoring with model %s (%s)", model_id, path)

    def _tick_served(self, model: Any) -> None:
        if model is None or self.current(model.version) is not None:
            return
        if self._asked_version == model.version and time.monotonic() - self._asked_at < self.retry_seconds:
            return
        self._asked_version, self._asked_at = model.version, time.monotonic()
        try:
            found = served_lineage(self.metadata, self.serving_dir, self.pipeline_name, model.version)
        except Exception as e:  # a locked, moved or unreadable store: serving goes on, asked again later
            why = f"{type(e).__name__}: {e}"
            log.warning("could not read ML Metadata for version %s: %s", model.version, why)
            if self.on_error is not None:
                self.on_error(why)
            return
        if found is not None:
            self.served = found
            log.info("version %s is model %s in ML Metadata, pushed at %s ms, data up to %s ms", found.version,
                     found.model_id, found.pushed_at_ms, found.newest_event_ms)
