"""Log and wait: every scored item, appended to the impressions log.

Each item the server scores becomes one line of an event log
(`components/event_log.py`, by default `<home>/impressions/`), written through
`EventLogWriter`, so behind its writer lock and in its segment format. A line
is the event exactly as the model received it, under the event schema's field
names (the id field holds the impression id, the event-time field the time the
request arrived, in epoch milliseconds), plus what the server added:

* `request_id`: the request's id (the client's `X-Request-Id`, or one the server made);
* `model_version`: the version that scored it;
* `score`: the model's output;
* `position`: the item's place in the ranked order (rank), or in the request (predict).

`impressions_schema` declares these lines, so `StreamingExampleGen` ingests
the log like any stream. An impression has no label yet: the label field is
declared optional, and the join with outcomes (a later issue) fills it.

Writing is off the request path: a request hands its lines to a bounded queue
and returns; one background thread drains the queue in batches. When the queue
is full (the disk is slower than the traffic) or a write fails (the folder is
gone, the disk is full), the lines are dropped and counted, and serving goes
on: the server never waits for, or fails on, its log.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import orjson

from components.event_log import EventLogWriter
from components.event_schema import EventSchema, FieldSpec

log = logging.getLogger(__name__)

# The fields the server adds to each event (see the module doc).
SERVER_FIELDS = (FieldSpec("request_id", "string"), FieldSpec("model_version", "int"),
                 FieldSpec("score", "float"), FieldSpec("position", "int"))
# Requests' batches waiting for the writer; beyond it lines are dropped and counted (queue_full).
DEFAULT_MAX_PENDING = 4096
# Lines joined into one append (one lock, one write).
BATCH_LINES = 20_000


def impressions_schema(schema: EventSchema) -> EventSchema:
    """The event schema of the impressions log of a stream with `schema`.

    The stream's fields, the label optional (an impression has none until its
    outcome is joined), the event time as the int epoch milliseconds the
    server writes, and the server's fields. Its max_line_bytes leaves room
    for them.
    """
    names = {f.name for f in schema.fields}
    clash = sorted(names & {f.name for f in SERVER_FIELDS})
    if clash:
        raise ValueError(f"the event schema {schema.name!r} declares {clash}, which the impressions log uses for "
                         "what the server adds; rename them in the schema")
    fields = []
    for f in schema.fields:
        if f.name == schema.label_field:
            f = dataclasses.replace(f, required=False)
        elif f.name == schema.event_time_field:
            f = dataclasses.replace(f, type="int")
        fields.append(f)
    return dataclasses.replace(schema, name=f"{schema.name}_impressions", fields=tuple(fields) + SERVER_FIELDS,
                               event_time_format="epoch_ms")


class ImpressionLog:
    """The asynchronous, batched writer of the impressions log.

    `on_logged(n)` and `on_dropped(n, reason)` are told what became of every
    line (the server's metrics); `reason` is `queue_full` or `write_error`.
    """

    def __init__(self, log_dir: str, max_pending: int = DEFAULT_MAX_PENDING,
                 on_logged: Optional[Callable[[int], None]] = None,
                 on_dropped: Optional[Callable[[int, str], None]] = None,
                 max_segment_bytes: int = 64 << 20):
        self.log_dir = log_dir
        self.max_segment_bytes = max_segment_bytes
        self._queue: "queue.Queue[Optional[Tuple[Dict[str, Sequence], int]]]" = queue.Queue(maxsize=max_pending)
        self._on_logged = on_logged or (lambda n: None)
        self._on_dropped = on_dropped or (lambda n, reason: None)
        self._writer: Optional[EventLogWriter] = None
        self.last_error: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._thread.start()

    def submit(self, columns: Dict[str, Sequence], n: int) -> None:
        """Queues one request's `n` impressions, given as columns (field -> n values).

        Never blocks and never raises: a full queue drops them and counts them.
        The rows are built and serialized by the writer's thread.
        """
        try:
            self._queue.put_nowait((columns, n))
        except queue.Full:
            self._on_dropped(n, "queue_full")

    @staticmethod
    def _lines(columns: Dict[str, Sequence], n: int) -> List[bytes]:
        """One JSON line per row. Columns holding one object n times (the context's fields, the request id,
        the version, the event time) are serialized once and appended to every line: it halves the cost."""
        if not n:
            return []
        shared = {k: col[0] for k, col in columns.items() if len(set(map(id, col))) == 1}
        varying = [k for k in columns if k not in shared]
        if not varying:
            return [orjson.dumps(shared)] * n
        tail = b"," + orjson.dumps(shared)[1:] if shared else b"}"  # '"k":v,...}'
        return [orjson.dumps(dict(zip(varying, row)))[:-1] + tail for row in zip(*(columns[k] for k in varying))]

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batches = [first]
            count = first[1]
            while count < BATCH_LINES:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batches.append(more)
                count += more[1]
            lines: List[bytes] = []
            for columns, n in batches:
                # Let the request threads in between requests' rows: this thread holds the GIL while it serializes.
                time.sleep(0)
                try:
                    lines += self._lines(columns, n)
                except TypeError as e:  # a value orjson cannot write: a bug, never a reason to stop logging
                    self.last_error = f"cannot serialize an impression: {e}"
                    self._on_dropped(n, "write_error")
            if lines:
                self._write(lines)
        self._close_writer()

    def _write(self, lines: List[bytes]) -> None:
        try:
            if self._writer is None:
                self._writer = EventLogWriter(self.log_dir, max_segment_bytes=self.max_segment_bytes)
            self._writer.write_lines(lines)
        except Exception as e:  # OSError mostly (gone, full, read-only); any failure drops this batch only
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("could not append %d impressions to %s: %s", len(lines), self.log_dir, self.last_error)
            self._on_dropped(len(lines), "write_error")
            self._close_writer()  # the next batch opens the log again: it may be back
            return
        self._on_logged(len(lines))

    def _close_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
            self._writer = None

    def close(self, timeout: float = 30.0) -> None:
        """Writes what is queued, then stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)
