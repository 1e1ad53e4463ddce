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

Reading the store never fails the server: an error is logged, counted, and
retried like a missing record.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional

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
                 on_error: Optional[Callable[[str], None]] = None):
        self.metadata = metadata
        self.serving_dir = serving_dir
        self.pipeline_name = pipeline_name
        self.retry_seconds = retry_seconds
        self.on_error = on_error
        # Replaced whole, never mutated: /metrics reads it from another thread.
        self.served: Optional[ServedLineage] = None
        self._asked_version: Optional[int] = None
        self._asked_at = 0.0

    def current(self, version: Optional[int]) -> Optional[ServedLineage]:
        """The facts of `version` if they are known (never those of another version)."""
        served = self.served
        return served if served is not None and version is not None and served.version == version else None

    def tick(self, model: Any) -> None:
        """After a poll of the serving folder: look the served version up when it is new, or still unknown."""
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
