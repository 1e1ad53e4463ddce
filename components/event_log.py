"""The event log: an append-only folder of JSON Lines segment files.

Segments are named ``segment-<12-digit index>.jsonl`` by our writer; any
``*.jsonl`` names work as long as sorting the names sorts them by age. A
:class:`Position` (segment name, byte offset) says where reading stopped, and
ordering positions as tuples orders them in the log.

Reading goes through ``tf.io.gfile`` so a log may live on ``gs://``. Writing
(the simulator) is local: it relies on O_APPEND so that a concurrent reader
only ever sees whole lines, apart from a partial line at the very tail of the
newest segment, which readers leave for the next run.

Several writers may share a folder. Every writer takes an exclusive
``flock`` on ``<log_dir>/.writer.lock`` around each append and rotation and
appends only to the newest segment: once a segment is older than the newest,
it never changes again. The reader relies on that, and stops with an
:class:`EventLogError` when a segment it has already read to its end grows
(a writer appending without the lock).

A line longer than ``max_line_bytes`` is never held whole: the reader yields
an :class:`OverlongLine`, a bounded prefix that carries the line's length, so
the parser dead-letters it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

# A line longer than this is yielded as an OverlongLine (configurable per read: the schema's max_line_bytes).
from components.event_schema import DEFAULT_MAX_LINE_BYTES

SEGMENT_SUFFIX = ".jsonl"
SEGMENT_PREFIX = "segment-"
_SEGMENT_NAME = re.compile(re.escape(SEGMENT_PREFIX) + r"(\d+)" + re.escape(SEGMENT_SUFFIX) + "$")
# The file every writer flocks; it does not end in SEGMENT_SUFFIX, so readers never see it.
WRITER_LOCK_FILE = ".writer.lock"
_TAIL_BLOCK = 64 * 1024
# How much of an over-long line is kept, for its dead letter.
OVERLONG_PREFIX_BYTES = 1024
# How many passed segments (older than the newest) a committed state remembers the size of.
PASSED_SEGMENTS_KEPT = 64


class EventLogError(RuntimeError):
    """The log cannot be read as configured; the message says what to fix."""


class OverlongLine(bytes):
    """A line longer than the read's ``max_line_bytes``: its first bytes only, and its true length.

    The content is a prefix (at most ``OVERLONG_PREFIX_BYTES``), enough for a
    dead letter to show what the line was; ``full_length`` is the length of
    the whole line without its newline. The line is never held whole.
    """

    full_length: int

    def __new__(cls, prefix: bytes, full_length: int) -> "OverlongLine":
        self = super().__new__(cls, prefix)
        self.full_length = full_length
        return self

    def __reduce__(self):
        # bytes' own pickling would call __new__ without full_length (Beam pickles what crosses a stage).
        return (OverlongLine, (bytes(self), self.full_length))

    def __repr__(self) -> str:
        return f"OverlongLine({bytes(self)!r}, full_length={self.full_length})"


@dataclasses.dataclass(frozen=True, order=True)
class Position:
    """A byte offset in a segment: everything before it has been read."""

    segment: str
    offset: int

    def to_json(self) -> str:
        return json.dumps(self.to_json_value())

    def to_json_value(self) -> list:
        return [self.segment, self.offset]

    def covers(self, position: "Position") -> bool:
        """True when the line at `position` lies before this position (was read)."""
        return position < self

    def with_pending(self, pending: Optional["Position"]) -> "Position":
        """Where to resume: the first pending line if there is one, else here."""
        return self if pending is None else pending

    @classmethod
    def from_json(cls, text: str) -> "Position":
        segment, offset = json.loads(text)
        return cls(str(segment), int(offset))

    def __str__(self) -> str:
        return f"{self.segment}@{self.offset}"


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Lines that *start* in [start, end) of one segment; the unit of parallel reading."""

    index: int
    segment: str
    start: int
    end: int
    # Byte offset at which the segment is known to end for this read; a line
    # starting before `end` is read up to here at most.
    segment_limit: int

    @property
    def name(self) -> str:
        return f"{self.index:06d}"


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    start: Position
    end: Position
    chunks: Tuple[Chunk, ...]
    # (name, size) of the newest PASSED_SEGMENTS_KEPT segments older than the newest, as this
    # plan saw them: read to their end by now, so they must never grow. The committed state
    # keeps them for the next plan's check (CommittedState.segment_sizes).
    segment_sizes: Tuple[Tuple[str, int], ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(c.end - c.start for c in self.chunks)

    @property
    def units(self) -> Tuple[Chunk, ...]:
        return self.chunks

    def describe(self) -> str:
        return f"{self.total_bytes} bytes in {len(self.chunks)} chunk(s)"


def _gfile():
    import tensorflow as tf  # local: the simulator and plain log readers need no TF import

    return tf.io.gfile


def segment_name(index: int) -> str:
    return f"{SEGMENT_PREFIX}{index:012d}{SEGMENT_SUFFIX}"


def list_segments(log_dir: str) -> List[Tuple[str, int]]:
    """(name, size) of every segment, oldest first."""
    gfile = _gfile()
    if not gfile.exists(log_dir):
        raise EventLogError(
            f"event log folder {log_dir!r} does not exist. Point the source's log_dir at the folder the "
            f"producer writes to, or create it with 'driftline simulate --log {log_dir}'.")
    if not gfile.isdir(log_dir):
        raise EventLogError(f"event log path {log_dir!r} is a file, not a folder of {SEGMENT_SUFFIX} segments")
    try:
        names = sorted(n for n in gfile.listdir(log_dir) if n.endswith(SEGMENT_SUFFIX))
    except Exception as e:  # permissions and remote errors surface here with their own detail
        raise EventLogError(f"cannot list event log folder {log_dir!r}: {e}. Check that it is readable.") from e
    return [(n, gfile.stat(os.path.join(log_dir, n)).length) for n in names]


def _last_newline_end(path: str, size: int) -> int:
    """Offset just after the last newline in a file: the end of its complete lines."""
    with _gfile().GFile(path, "rb") as f:
        pos = size
        while pos > 0:
            start = max(0, pos - _TAIL_BLOCK)
            f.seek(start)
            block = f.read(pos - start)
            i = block.rfind(b"\n")
            if i >= 0:
                return start + i + 1
            pos = start
    return 0


def check_passed_segments(log_dir: str, segments: Sequence[Tuple[str, int]],
                          passed_sizes: Mapping[str, int]) -> None:
    """Raises EventLogError when a segment read to its end by an earlier plan has grown since.

    `segments` is the log as listed now, `passed_sizes` the sizes an earlier
    plan recorded (ReadPlan.segment_sizes). A segment that is gone is not an
    error here: what was read of it was read. A grown one is: the reader never
    goes back to a passed segment, and the committed end covers every position
    in it, so the appended lines would be lost without a word.
    """
    grown = [(name, passed_sizes[name], size) for name, size in segments
             if name in passed_sizes and size > passed_sizes[name]]
    if not grown:
        return
    newest = segments[-1][0]
    name, before, after = grown[0]
    others = (f" ({len(grown) - 1} more segment(s) grew too: {', '.join(n for n, _, _ in grown[1:])})"
              if grown[1:] else "")
    raise EventLogError(
        f"segment {name!r} in {log_dir!r} grew from {before} to {after} bytes after ingestion had read it to its "
        f"end{others}. A second writer appended to a segment that another writer had already rotated away from, "
        f"without the writer lock; the reader never goes back to a passed segment, so those lines would be lost. "
        f"Make every producer append through components.event_log.EventLogWriter, or take an exclusive flock on "
        f"{os.path.join(log_dir, WRITER_LOCK_FILE)!r} around each append and rotation and append only to the "
        f"newest segment. To keep the stray lines, move them under that lock: append bytes {before}..{after} of "
        f"{name!r} to the newest segment {newest!r} (starting on a new line), truncate {name!r} back to {before} "
        f"bytes, and run ingestion again.")


def plan_read(log_dir: str, start: Optional[Position], chunk_bytes: int = 8 << 20,
              passed_sizes: Sequence[Tuple[str, int]] = ()) -> ReadPlan:
    """Splits what lies between `start` and the end of the log into chunks.

    The end is the end of the last complete line of the newest segment: a
    line the producer is still writing is left for the next run. In older
    segments the producer has moved on, so a missing final newline is a
    truncated line; it is read (and dead-lettered if it does not parse).

    `passed_sizes` are the `segment_sizes` of the plan whose end the
    committed state holds: a segment among them that has grown since is an
    EventLogError (see `check_passed_segments`).
    """
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be >= 1")
    segments = list_segments(log_dir)
    check_passed_segments(log_dir, segments, dict(passed_sizes))
    if start is not None:
        names = [n for n, _ in segments]
        if start.segment and start.segment not in names:
            raise EventLogError(
                f"the committed position {start} names segment {start.segment!r}, which is no longer in "
                f"{log_dir!r}. Segments were deleted or renamed before they were fully ingested; restore "
                "them, or start a new pipeline (a new pipeline name) to ingest the log from its beginning.")
    chunks: List[Chunk] = []
    end = start
    for i, (name, size) in enumerate(segments):
        if start is not None and name < start.segment:
            continue
        begin = start.offset if (start is not None and name == start.segment) else 0
        newest = i == len(segments) - 1
        limit = _last_newline_end(os.path.join(log_dir, name), size) if newest else size
        if begin > limit:
            raise EventLogError(
                f"segment {name!r} in {log_dir!r} is {limit} bytes of complete lines, shorter than the committed "
                f"offset {begin}. The log is append-only: a segment must never be rewritten or truncated.")
        for s in range(begin, limit, chunk_bytes):
            chunks.append(Chunk(len(chunks), name, s, min(s + chunk_bytes, limit), limit))
        end = Position(name, limit)
    if start is None:
        start = Position(segments[0][0], 0) if segments else Position("", 0)
    # Every segment but the newest has been read to its end once this plan is done (earlier plans
    # read those before `start`); only the newest may still grow. The sizes of passed segments
    # that were recorded before equal these, or check_passed_segments stopped above.
    passed = tuple(segments[:-1][-PASSED_SEGMENTS_KEPT:])
    return ReadPlan(start=start, end=end or start, chunks=tuple(chunks), segment_sizes=passed)


def _is_blank(line: bytes) -> bool:
    # bytes.isspace tests without copying; strip() would copy a long line.
    return not line or line.isspace()


def _bounded(line: bytes, max_line_bytes: int) -> bytes:
    """The line itself, or its OverlongLine when it is longer than max_line_bytes."""
    if len(line) <= max_line_bytes:
        return line
    return OverlongLine(line[:min(OVERLONG_PREFIX_BYTES, max_line_bytes)], len(line))


def _finish_line(f, head: bytes, pos: int, limit: int, max_line_bytes: int) -> Optional[bytes]:
    """Reads on from `pos` (where `f` stands) to the end of a line begun by `head`, or to `limit`.

    Returns the line, its OverlongLine when longer than max_line_bytes, or
    None when it is blank. At most max_line_bytes plus one block of what lies
    past `pos` is held, however long the line runs.
    """
    parts = [head]
    kept = length = len(head)
    blank = _is_blank(head)
    while pos < limit:
        block = f.read(min(_TAIL_BLOCK, limit - pos))
        if not block:
            break
        nl = block.find(b"\n")
        piece = block if nl < 0 else block[:nl]
        length += len(piece)
        pos += len(block)
        blank = blank and _is_blank(piece)
        if kept <= max_line_bytes:
            # Until the line is known to be over-long, keep it whole; after, only its length counts.
            parts.append(piece)
            kept += len(piece)
        if nl >= 0:
            break
    if blank:
        return None
    if length <= max_line_bytes:
        return b"".join(parts)
    prefix_bytes = min(OVERLONG_PREFIX_BYTES, max_line_bytes)
    prefix, have = [], 0
    for part in parts:
        if have >= prefix_bytes:
            break
        prefix.append(part[:prefix_bytes - have])
        have += len(prefix[-1])
    return OverlongLine(b"".join(prefix), length)


def read_chunk(log_dir: str, chunk: Chunk, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Tuple[int, bytes]]:
    """Yields (offset, line without newline) for each line starting in the chunk.

    A line longer than `max_line_bytes` comes out as an :class:`OverlongLine`
    (a prefix and its true length), and is never read whole: the chunk itself
    is read at once (at most `chunk.end - chunk.start` bytes), and a line that
    runs past the chunk's end is finished block by block, keeping at most
    `max_line_bytes` of it.
    """
    if max_line_bytes < 1:
        raise ValueError("max_line_bytes must be >= 1")
    path = os.path.join(log_dir, chunk.segment)
    with _gfile().GFile(path, "rb") as f:
        begin = chunk.start
        if begin > 0:
            # The chunk owns a line only if the line starts inside it: skip a
            # line that began in the previous chunk.
            f.seek(begin - 1)
            data = f.read(chunk.end - begin + 1)
            if data[:1] != b"\n":
                nl = data.find(b"\n")
                if nl < 0:
                    data = b""
                    begin = chunk.end
                else:
                    begin = begin - 1 + nl + 1
                    data = data[nl + 1:]
            else:
                data = data[1:]
        else:
            data = f.read(chunk.end - begin)
        if begin >= chunk.end:
            # The whole chunk lies inside a line owned by an earlier chunk.
            return
        # `data` is [begin, chunk.end): whole lines, then what follows the last newline, a line
        # that runs on past the chunk's end (or the truncated last line of an older segment).
        lines = data.split(b"\n")
        rest = lines.pop()
        del data
        offset = begin
        for line in lines:
            if len(line) > max_line_bytes:
                if not _is_blank(line):
                    yield offset, _bounded(line, max_line_bytes)
            elif line.strip():
                yield offset, line
            offset += len(line) + 1
        if rest:
            last = _finish_line(f, rest, chunk.end, chunk.segment_limit, max_line_bytes)
            if last is not None:
                yield offset, last


class EventLogWriter:
    """Appends JSON Lines to a local log folder, rotating segments by size.

    Each batch of lines is written with one ``write`` on an O_APPEND
    descriptor, so a reader never sees a torn line except at the tail of the
    newest segment. Any number of writers, in any processes, may share a
    folder: each batch and each rotation runs under an exclusive ``flock`` on
    ``<log_dir>/.writer.lock``, and under it the writer re-finds the newest
    segment and its size, so it never appends to a segment another writer has
    rotated away from, and rotation decisions see every writer's lines. A
    newest segment that does not end in a newline (a writer died mid-line)
    gets one first, so the next line starts whole; the torn fragment stays a
    line of its own, which ingestion dead-letters.
    """

    def __init__(self, log_dir: str, max_segment_bytes: int = 16 << 20):
        if max_segment_bytes < 1:
            raise ValueError("max_segment_bytes must be >= 1")
        self.log_dir = log_dir
        self.max_segment_bytes = max_segment_bytes
        os.makedirs(log_dir, exist_ok=True)
        self._lock_fd: Optional[int] = os.open(os.path.join(log_dir, WRITER_LOCK_FILE), os.O_RDWR | os.O_CREAT,
                                               0o644)
        self._fd: Optional[int] = None
        self._index = -1
        self._size = 0
        with self._locked():
            pass  # opens (creates) the newest segment now, and ends a line a crashed writer left torn

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd is None:
            raise ValueError(f"the writer of {self.log_dir!r} is closed")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._attach()
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _newest_index(self) -> int:
        if self._index < 0:
            indices = [int(m.group(1)) for m in map(_SEGMENT_NAME.match, os.listdir(self.log_dir)) if m]
            return max(indices, default=0)
        # Writers rotate one index at a time under the lock, so probing the next names finds the newest
        # without listing a folder of many segments on every batch.
        index = self._index
        while os.path.exists(os.path.join(self.log_dir, segment_name(index + 1))):
            index += 1
        return index

    def _attach(self) -> None:
        """Under the lock: open the newest segment (another writer may have rotated), learn its size,
        and end a torn last line."""
        index = self._newest_index()
        if index != self._index or self._fd is None:
            self._close_segment()
            self._index = index
            self._open()
        self._size = os.fstat(self._fd).st_size
        if self._size and os.pread(self._fd, 1, self._size - 1) != b"\n":
            self._write_all(b"\n")

    def _open(self) -> None:
        path = os.path.join(self.log_dir, segment_name(self._index))
        # Read as well as append: _attach looks at the last byte.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Appends lines (each without its newline), rotating between lines."""
        if not lines:
            return
        with self._locked():
            data = b"\n".join(lines) + b"\n"
            if self._size + len(data) <= self.max_segment_bytes:
                # The whole batch fits the segment: one write, no walk over the lines (a server logs
                # thousands a second, pipelines/serve/impressions.py).
                self._flush([data])
                return
            records = [line + b"\n" for line in lines]
            batch: List[bytes] = []
            batch_size = 0
            for record in records:
                if self._size + batch_size > 0 and self._size + batch_size + len(record) > self.max_segment_bytes:
                    self._flush(batch)
                    batch, batch_size = [], 0
                    self._rotate()
                batch.append(record)
                batch_size += len(record)
            self._flush(batch)

    def write_block(self, data: bytes) -> None:
        """Appends whole lines given as one bytes, each ended by its newline: what `write_lines` writes for
        them, without splitting them first when they fit the segment (the impressions writer's batches)."""
        if not data:
            return
        if not data.endswith(b"\n"):
            raise ValueError("a block of lines must end with a newline")
        with self._locked():
            if self._size + len(data) <= self.max_segment_bytes:
                self._flush([data])
                return
        self.write_lines(data[:-1].split(b"\n"))  # rotates between lines, under the lock again

    def write_events(self, events: Sequence[dict]) -> None:
        self.write_lines([json.dumps(e, separators=(",", ":")).encode() for e in events])

    def _flush(self, batch: List[bytes]) -> None:
        if batch:
            # Whole lines in one write: O_APPEND makes it land as a unit at the end.
            self._write_all(b"".join(batch))

    def _write_all(self, data: bytes) -> None:
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, data[written:])
        self._size += len(data)

    def _rotate(self) -> None:
        os.fsync(self._fd)
        self._close_segment()
        self._index += 1
        self._open()

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_segment()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "EventLogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
