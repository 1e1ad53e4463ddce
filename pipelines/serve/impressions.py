"""Log and wait: every scored item, appended to the impressions log.

Each item the server scores becomes one line of an event log
(`components/event_log.py`, by default `<home>/impressions/`), written through
`EventLogWriter`, so behind its writer lock and in its segment format; or one
record of a Kafka topic (`KafkaImpressions`), through the Kafka sink of
`components/kafka_log.py`, which the same Kafka source reads back. A line
is the event exactly as the model received it, under the event schema's field
names (the id field holds the impression id, the event-time field the time the
request arrived, in epoch milliseconds), plus what the server added:

* `request_id`: the request's id (the client's `X-Request-Id`, or one the server made);
* `model_version`: the version the server served (the champion's; a line the challenger scored says so
  in `arm` and names its model in `model_id`);
* `score`: the output of the model that scored it;
* `position`: the item's place in the order served (rank), or in the request (predict);
* `arm` ("champion" or "challenger") and `arm_propensity`, the probability with which that arm was
  drawn for the request (Thompson sampling; 1.0 when no comparison is open); while one is open,
  `challenger_model_id` (its challenger's ML Metadata id, on both arms' lines); `model_id`, the ML
  Metadata id of the model that scored the line, when the server knows it (pipelines/serve/routing.py);
* `arm_latency_ms`: how long the call of the model that scored the request took, in ms; while a comparison is
  open, `challenger_fallback`: 1 when the request was drawn for the challenger but the champion answered
  (the challenger failed, or is not loaded), else 0: what the challenger's guardrails are read from
  (components/online_evaluator/guardrails.py);
* rank requests only: `greedy_position` (the item's place in the score order), `explored` (1: the
  order was the exploration draw, a random permutation) and `propensity` (the probability that the
  ranking policy put the item at `position`: `(1 - eps) * [position == greedy_position] + eps / N`);
* `shadow_model_id`, `shadow_score`: with shadow scoring on, the ML Metadata id of the shadow
  candidate (the newest blessed model that is not serving) and its score of the same features;
  absent when no candidate scored the item.

`impressions_schema` declares these lines, so `StreamingExampleGen` ingests
the log like any stream. An impression has no label yet: the label field is
declared optional, and the join with outcomes (a later issue) fills it.

Writing is off the request path, and mostly off the server's interpreter: a
request encodes each of its columns (the parsed features plus the request id,
version, scores) as one JSON array (`encode_columns`: a few orjson calls,
~0.15 ms per 1,000 rows, never a Python loop over them; a column every row
shares, `Repeated`, as its one value), puts them on a queue bounded by count
and by bytes, and returns. One background thread takes what is queued and
hands it to a writer process (`pipelines/serve/impressions_writer.py`) as raw
bytes, with whatever else gathered meanwhile (it does not wait for more: see
`_run`). The writer splits the arrays into
values and joins them into one line per row (`lines_block`, ~0.4 ms per 1,000
rows) and appends them. The values in a line are the JSON texts orjson wrote
in the server from the model's own columns. A request that the shadow
candidate should also score queues its columns and a reference to the
candidate instead; this thread has it score them, then encodes them, so the
response never waits for the shadow's score. When the queue is full (the
writer or the disk is slower than the traffic) or a write fails (the folder
is gone, the disk is full, the writer process died: the next batch starts a
new one), the lines are dropped and counted, and serving goes on: the server
never waits for, or fails on, its log.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import orjson

from components.event_schema import EventSchema, FieldSpec
from pipelines.serve import impressions_writer

if TYPE_CHECKING:
    from pipelines.serve.lineage_watch import ShadowModel

log = logging.getLogger(__name__)
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The fields the server adds to each event (see the module doc).
SERVER_FIELDS = (FieldSpec("request_id", "string"), FieldSpec("model_version", "int"),
                 FieldSpec("score", "float"), FieldSpec("position", "int"),
                 FieldSpec("shadow_model_id", "int", required=False),
                 FieldSpec("shadow_score", "float", required=False),
                 # Optional: logs written before routing and exploration existed have none of them.
                 FieldSpec("arm", "string", required=False), FieldSpec("arm_propensity", "float", required=False),
                 FieldSpec("challenger_model_id", "int", required=False), FieldSpec("model_id", "int", required=False),
                 FieldSpec("greedy_position", "int", required=False), FieldSpec("explored", "int", required=False),
                 FieldSpec("propensity", "float", required=False),
                 # The guardrails' evidence (components/online_evaluator/guardrails.py).
                 FieldSpec("arm_latency_ms", "float", required=False),
                 FieldSpec("challenger_fallback", "int", required=False))
# Requests' batches waiting for the writer; beyond it lines are dropped and counted (queue_full).
DEFAULT_MAX_PENDING = 4096
# ... and their encoded columns' bytes (~150 KB a request of 1,000 candidates). Configurable
# (`driftline serve --impressions-max-pending-bytes`).
DEFAULT_MAX_PENDING_BYTES = 64 << 20
# Lines joined into one append (one lock, one write).
BATCH_LINES = 20_000
# The writer process's niceness over the server's. 0: the server's priority. At nice 10, with other work on
# the 2 cores (load average 3-5), the writer fell behind and dropped 55 % of the lines of one client's
# requests, the backlog at its byte bound growing the server's RSS by ~400 MiB in 20 s; at 0 it kept up,
# RSS flat (benchmarks/serving.py's server under wrk, 2026-12-05 20:43 UTC).
DEFAULT_WRITER_NICE = 0


def check_max_pending_bytes(value: object, what: str) -> int:
    """`value` as the byte bound of the impressions queue; ValueError naming `what` and the fix otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_PENDING_BYTES:
        raise ValueError(f"{what} must be a whole number of bytes >= {MIN_PENDING_BYTES} (1 MiB: one request of "
                         f"1,000 candidates is ~150 KB), got {value!r}: e.g. {DEFAULT_MAX_PENDING_BYTES} (64 MiB, "
                         "the default)")
    return value


MIN_PENDING_BYTES = 1 << 20


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


# One request's impressions as the writer process receives them: (n, [(field, JSON text, repeated)]): the
# field's n values as one JSON array, or, `repeated`, the JSON text of the one value all n rows share.
EncodedColumns = Tuple[int, List[Tuple[str, bytes, bool]]]


class Repeated:
    """A column whose n values are all `value` (the request id, the version, ...): encoded once, not n times.

    `submit` takes one in place of a list of n equal values; the line holds the same text either way.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Repeated) and other.value == self.value

    def __repr__(self) -> str:
        return f"Repeated({self.value!r})"


def encode_columns(columns: Dict[str, Union[Sequence, Repeated]], n: int) -> EncodedColumns:
    """One request's columns as JSON arrays, one per field: a few C calls, no Python loop over the rows.

    This is all the server does for a logged request; the writer process (`lines_block`) turns them into
    lines. A `Repeated` column is written once, as its value's JSON text. TypeError: a value JSON cannot hold.
    """
    dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    return n, [(name, dumps(col.value, option=opt), True) if isinstance(col, Repeated) else
               (name, dumps(col, option=opt), False) for name, col in columns.items()]


def plain_columns(columns: Dict[str, Union[Sequence, Repeated]], n: int) -> Dict[str, Sequence]:
    """`columns` with each `Repeated` column spelled out as n values (what a model's predict takes)."""
    return {name: [col.value] * n if isinstance(col, Repeated) else col for name, col in columns.items()}


def encoded_bytes(encoded: EncodedColumns) -> int:
    """The bytes of one request's encoded columns: what it holds in the queue, and sends to the writer."""
    return sum(len(text) for _, text, _ in encoded[1])


def _elements(array: bytes, n: int) -> Tuple[List[bytes], bool]:
    """The n values of a JSON array (as orjson writes it) as their JSON texts, split without parsing.

    Returns (values, quoted): quoted, the values are the inside of strings (their quotes dropped, to be
    put back around them). A split is used only where it is exact: with no backslash in the array
    there is no escaped quote, so an array of n strings holds exactly 2n quotes and '","' exactly n - 1
    times, between them; in an array with no string (numbers, null, booleans) every ',' separates two values. Any
    other array (a mix, a comma inside a string, escapes) gives another count, and is parsed instead.
    """
    inner = array[1:-1]
    if inner[:1] == b'"' and inner[-1:] == b'"' and b"\\" not in inner and inner.count(b'"') == 2 * n:
        values = inner[1:-1].split(b'","')
        if len(values) == n:
            return values, True
    elif b'"' not in inner:
        values = inner.split(b",")
        if len(values) == n:
            return values, False
    values = [orjson.dumps(v) for v in orjson.loads(array)]
    if len(values) != n:
        raise ValueError(f"a column of {len(values)} values in a batch of {n} impressions")
    return values, False


def lines_of(encoded: EncodedColumns) -> List[bytes]:
    """The JSON lines (no newline) of one request's encoded columns (`lines_block`, split)."""
    return lines_block(encoded).split(b"\n")[:-1]  # JSON text holds no raw newline: each one ends a line


def lines_block(encoded: EncodedColumns) -> bytes:
    """One request's JSON lines, each ended by a newline, as one bytes: one object per row, keys in column
    order, the columns whose value every row shares after the others (in column order too).

    Each value's JSON text is the one orjson wrote for it in the server, so a line holds exactly what
    the model received. Built with one join over the rows' pieces, not one serialization per row: a
    value that every row shares (the context's fields, the request id, the version) is written once
    into the constant text after the varying ones. The writer appends the block as it is: no split into
    lines and join again.
    """
    n, arrays = encoded
    if not n:
        return b""
    varying: List[Tuple[bytes, bytes, List[bytes]]] = []  # (text before the value, text after it, values)
    shared = []
    for name, array, repeated in arrays:
        key = orjson.dumps(name) + b":"
        if not repeated:
            same = _same_value(array, n)
        elif n == 1 or b"," not in array:
            same = array
        else:  # placed where its n copies would be: _same_value does not find a value with a ',' shared
            array, same = b"[" + b",".join([array] * n) + b"]", None
        if same is not None:
            shared.append(key + same)
            continue
        values, quoted = _elements(array, n)
        quote = b'"' if quoted else b""
        varying.append((key + quote, quote, values))
    if not varying:
        return (b"{" + b",".join(shared) + b"}\n") * n
    end = (b"," + b",".join(shared) if shared else b"") + b"}\n"
    # The rows' pieces interleaved: ('{"a":', a0, ',"b":', b0, '}\n', '{"a":', a1, ...), placed a column
    # at a time by slice assignment, then joined once.
    width = 2 * len(varying) + 1
    pieces: List[bytes] = [b""] * (width * n)
    after = b""
    for i, (head, quote_after, values) in enumerate(varying):
        pieces[2 * i::width] = [(b"{" if i == 0 else after + b",") + head] * n
        pieces[2 * i + 1::width] = values
        after = quote_after
    pieces[width - 1::width] = [after + end] * n
    return b"".join(pieces)


def _same_value(array: bytes, n: int) -> Optional[bytes]:
    """The JSON text of the value that fills all of `array` (n values), or None if they differ.

    The array's first value is cut at the first ',' (a string with a ',' inside gives a prefix that
    does not repeat, hence None, as does any value with a ','): the array is then compared with that
    value n times, one comparison of bytes instead of n.
    """
    first = array[1:array.find(b",")] if n > 1 else array[1:-1]
    if n > 1 and array != b"[" + (first + b",") * (n - 1) + first + b"]":
        return None
    try:
        orjson.loads(first)  # a whole value, not a prefix that happens to repeat
    except orjson.JSONDecodeError:
        return None
    return first


@dataclasses.dataclass(frozen=True)
class KafkaImpressions:
    """An impressions log that is a Kafka topic (`driftline serve --impressions-kafka-topic`).

    Written through components/kafka_log.py's KafkaLineWriter, one line a
    record; read back by StreamingExampleGen's `KafkaSource` like any topic.
    """

    bootstrap_servers: str
    topic: str
    client_config: Dict[str, object] = dataclasses.field(default_factory=dict)
    # Secret settings by reference, as for a Kafka source: setting -> environment variable, or setting -> file.
    # Only the names travel to the writer process, which resolves them from its own environment and files.
    secret_env: Dict[str, str] = dataclasses.field(default_factory=dict)
    secret_files: Dict[str, str] = dataclasses.field(default_factory=dict)
    # The longest a line may wait for its delivery report: then it is counted as not logged (write_error).
    message_timeout_ms: int = 10_000

    def describe(self) -> str:
        return f"Kafka topic {self.topic!r} at {self.bootstrap_servers}"


class ImpressionLog:
    """The asynchronous, batched writer of the impressions log.

    `log_dir`: the event log folder, or a KafkaImpressions topic.

    `max_pending` bounds the requests waiting for the writer, `max_pending_bytes` their encoded columns'
    bytes (a request of 1,000 candidates is ~150 KB: a count alone lets a backlog of large requests hold
    hundreds of MB); beyond either, a request's lines are dropped and counted (`queue_full`).
    `writer_nice`: the writer process's CPU niceness, added to the server's (`os.nice`); above 0 it takes
    only the CPU that the server and its clients leave idle, and when it falls behind the bounds drop,
    never the server.

    `on_logged(n)` and `on_dropped(n, reason)` are told what became of every
    line (the server's metrics); `reason` is `queue_full` or `write_error`.
    `on_shadow(n, error)`: `n` items the shadow candidate scored (error None),
    or failed to score (the lines are logged without a shadow score).
    """

    def __init__(self, log_dir: Union[str, KafkaImpressions], max_pending: int = DEFAULT_MAX_PENDING,
                 on_logged: Optional[Callable[[int], None]] = None,
                 on_dropped: Optional[Callable[[int, str], None]] = None,
                 max_segment_bytes: int = 64 << 20,
                 on_shadow: Optional[Callable[[int, Optional[str]], None]] = None,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
                 writer_nice: int = DEFAULT_WRITER_NICE):
        self.log_dir = log_dir
        self.max_segment_bytes = max_segment_bytes
        self.max_pending_bytes = check_max_pending_bytes(max_pending_bytes, "max_pending_bytes")
        self.writer_nice = writer_nice
        # (encoded columns, n, its bytes), or (columns, n, the shadow candidate to score them); None: stop.
        self._queue: "queue.Queue[Optional[Tuple[object, int, object]]]" = queue.Queue(maxsize=max_pending)
        self._pending_bytes = 0  # the encoded bytes in the queue; under the lock (submit and the thread change it)
        self._bytes_lock = threading.Lock()
        self._on_logged = on_logged or (lambda n: None)
        self._on_dropped = on_dropped or (lambda n, reason: None)
        self._on_shadow = on_shadow or (lambda n, error: None)
        self._child: Optional[subprocess.Popen] = None
        self.last_error: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._thread.start()

    @property
    def writer_pid(self) -> Optional[int]:
        """The writer process's pid while one runs (it starts with the first batch)."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def submit(self, columns: Dict[str, Union[Sequence, Repeated]], n: int,
               shadow: Optional["ShadowModel"] = None) -> None:
        """Queues one request's `n` impressions, given as columns (field -> n values, or a `Repeated` value).

        Never blocks and never raises: a full queue (by count or by bytes) drops them and counts them, as
        does a value JSON cannot hold. The columns are encoded here (`encode_columns`, ~0.15 ms of C calls
        per 1,000 rows), so the queue holds a few bytes objects per request, not its thousands of parsed
        values: a backlog then gives the garbage collector nothing to walk on every request. With `shadow`,
        the columns are queued as they are (bounded by count only), and the log's thread has the shadow
        candidate score them first.
        """
        if shadow is None:
            try:
                encoded = encode_columns(columns, n)
            except TypeError as e:  # a value JSON cannot hold: a bug, never a reason to fail the request
                self._unserializable(n, e)
                return
            size = encoded_bytes(encoded)
            with self._bytes_lock:
                if self._pending_bytes + size > self.max_pending_bytes:
                    full = True
                else:
                    full, self._pending_bytes = False, self._pending_bytes + size
            if full:
                self._on_dropped(n, "queue_full")
                return
            item = (encoded, n, size)
        else:
            item, size = (columns, n, shadow), 0
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._release(size)
            self._on_dropped(n, "queue_full")

    def _release(self, size: int) -> None:
        if size:
            with self._bytes_lock:
                self._pending_bytes -= size

    def _unserializable(self, n: int, e: Exception) -> None:
        self.last_error = f"cannot serialize an impression: {e}"
        log.warning("could not log %d impressions: %s", n, self.last_error)
        self._on_dropped(n, "write_error")

    def _shadow_score(self, columns: Dict[str, Sequence], n: int, shadow: "ShadowModel") -> Dict[str, Sequence]:
        """`columns` plus the shadow candidate's id and scores; as they were if it fails (counted)."""
        try:
            scores = shadow.model.predict(plain_columns(columns, n))
            if len(scores) != n:
                raise ValueError(f"{len(scores)} scores for {n} items")
        except Exception as e:  # a candidate that cannot score these features never stops the logging
            self._on_shadow(n, f"{type(e).__name__}: {e}")
            return columns
        self._on_shadow(n, None)
        return {**columns, "shadow_model_id": Repeated(shadow.model_id), "shadow_score": scores.tolist()}

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get_nowait()  # a backlog (the writer was busy): hand it over now
            except queue.Empty:
                # Handed over at once, never waiting for more to gather: waiting 20 ms (one GIL hand-over per
                # batch, not per request) made the tail worse on a quiet machine, the log adding 8.6 ms to p99
                # with 1 client and 59 ms with 4 against 2.2 and 12 ms at once; the writer then got each batch
                # as a burst of CPU beside the server's (benchmarks/serving.py, back to back, 2026-12-05 21:13 UTC).
                first = self._queue.get()
            if first is None:
                break
            batch: List[EncodedColumns] = []
            count = self._take(first, batch)
            while count < BATCH_LINES:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                count += self._take(more, batch)
            if batch:
                self._send(batch)
        self._stop_child()

    def _take(self, item, batch: List["EncodedColumns"]) -> int:
        """Appends one queued request's encoded columns to `batch`; a shadow's request is scored first."""
        payload, n, extra = item
        if isinstance(extra, int):
            self._release(extra)
        else:  # the shadow candidate's request: its columns as the request gave them
            try:
                payload = encode_columns(self._shadow_score(payload, n, extra), n)
            except TypeError as e:
                self._unserializable(n, e)
                return 0
        batch.append(payload)
        return n

    def _send(self, batch: List["EncodedColumns"]) -> None:
        """Hands `batch` to the writer process and counts what it did; a dead or unstartable one drops them."""
        n = sum(k for k, _ in batch)
        try:
            if self._child is None or self._child.poll() is not None:
                self._child = subprocess.Popen(
                    [sys.executable, "-m", "pipelines.serve.impressions_writer", self._target_json(),
                     str(self.writer_nice)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    cwd=_REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                        p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)})
                impressions_writer.widen_pipe(self._child.stdin.fileno())
            impressions_writer.write_batch(self._child.stdin.fileno(), batch)
            answer = impressions_writer.read_frame(self._child.stdout)
            if answer is None:
                raise EOFError("the impressions writer process ended")
        except (OSError, EOFError, ValueError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("could not hand %d impressions to the writer process: %s", n, self.last_error)
            self._on_dropped(n, "write_error")
            self._stop_child()
            return
        _, logged, dropped, error = answer
        if error:
            self.last_error = error
            log.warning("could not append %d impressions to %s: %s", dropped, self.describe(), error)
        if dropped:
            self._on_dropped(dropped, "write_error")
        if logged:
            self._on_logged(logged)

    def _target_json(self) -> str:
        """Where the writer process appends (impressions_writer's TARGET_JSON)."""
        target = self.log_dir
        if isinstance(target, KafkaImpressions):
            return orjson.dumps({"kind": "kafka", **dataclasses.asdict(target)}).decode()
        return orjson.dumps({"kind": "event_log", "log_dir": target,
                             "max_segment_bytes": self.max_segment_bytes}).decode()

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()
            child.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()

    def describe(self) -> str:
        return self.log_dir.describe() if isinstance(self.log_dir, KafkaImpressions) else self.log_dir

    def close(self, timeout: float = 30.0) -> None:
        """Writes what is queued, then stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)
