"""The impressions log's writer process (`python -m pipelines.serve.impressions_writer TARGET_JSON [NICE]`).

TARGET_JSON says where the lines go: {"kind": "event_log", "log_dir", "max_segment_bytes"} (an event log
folder, through EventLogWriter) or {"kind": "kafka", "bootstrap_servers", "topic", "client_config",
"secret_env", "secret_files", "message_timeout_ms"} (a topic, through components/kafka_log.py's
KafkaLineWriter; secrets are resolved here, from this process's environment, never passed on).

Building a request's 1,000 JSON lines (`impressions.lines_block`, ~0.4 ms) runs
here, in its own interpreter, not under the server's GIL, with NICE added to
its CPU niceness (`os.nice`; `driftline serve --impressions-writer-nice`, 0
by default: see impressions.DEFAULT_WRITER_NICE). When it falls behind, the
server's queue (bounded by count and by bytes) drops and counts, so a slow
writer costs lines, never the server's latency.

It reads batches from stdin (`write_batch`: a 4-byte big-endian length, a pickle
of the batch's layout [(n, [(field, size, repeated)])], then the columns' JSON
texts as raw bytes, no pickling of them) and answers each with one frame (a
4-byte length and a pickle): ("done", logged, dropped, error). EOF on stdin
ends it.
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import BinaryIO, List, Optional

# Pipe capacity asked for the hand-off (Linux's default is 64 KiB, less than one request of 1,000 candidates;
# an unprivileged process may ask up to /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_BYTES = 1 << 20
# Most buffers one writev takes (Linux's IOV_MAX).
_IOV_MAX = 1024


def read_frame(stream: BinaryIO) -> Optional[object]:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


def write_frame(stream: BinaryIO, obj: object) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">I", len(body)) + body)
    stream.flush()


def widen_pipe(fd: int) -> None:
    """Asks for a 1 MiB pipe: a batch then goes over in one or two writes, not a write per 64 KiB read."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:  # over the system's pipe-max-size: the default size works, in more round trips
        pass


def write_batch(fd: int, batch: List[tuple]) -> None:
    """Sends a batch of encoded requests ([(n, [(field, JSON text, repeated)])]) to the writer on `fd`.

    The layout is pickled (small); the JSON texts go as they are, gathered by writev: the server copies
    none of them (the kernel does, into the pipe), and the call releases the GIL while it waits.
    """
    layout = [(n, [(name, len(text), repeated) for name, text, repeated in columns]) for n, columns in batch]
    head = pickle.dumps(layout, protocol=pickle.HIGHEST_PROTOCOL)
    buffers = [struct.pack(">I", len(head)) + head] + [text for _, columns in batch for _, text, _ in columns]
    for i in range(0, len(buffers), _IOV_MAX):
        chunk = buffers[i:i + _IOV_MAX]
        written, size = os.writev(fd, chunk), sum(len(b) for b in chunk)
        if written < size:  # interrupted part way (a signal): the rest in one piece
            rest = b"".join(chunk)[written:]
            while rest:
                rest = rest[os.write(fd, rest):]


def read_batch(stream: BinaryIO) -> Optional[List[tuple]]:
    """A batch as `write_batch` sent it; None at EOF."""
    layout = read_frame(stream)
    if layout is None:
        return None
    body = stream.read(sum(size for _, columns in layout for _, size, _ in columns))
    batch, at = [], 0
    for n, columns in layout:
        encoded = []
        for name, size, repeated in columns:
            encoded.append((name, body[at:at + size], repeated))
            at += size
        batch.append((n, encoded))
    if at > len(body):
        return None  # the server went away part way through the batch
    return batch


def open_writer(target: dict):
    """The writer of a TARGET_JSON: anything with write_lines(lines) and close()."""
    if target["kind"] == "kafka":
        from components import kafka_log

        settings = kafka_log.producer_settings(target["bootstrap_servers"], target.get("client_config"),
                                               target.get("secret_env"), target.get("secret_files"),
                                               message_timeout_ms=target.get("message_timeout_ms", 10_000))
        return kafka_log.KafkaLineWriter(settings, target["topic"])
    from components.event_log import EventLogWriter

    return EventLogWriter(target["log_dir"], max_segment_bytes=int(target["max_segment_bytes"]))


def main(argv=None) -> int:
    import json

    from pipelines.serve.impressions import lines_block

    args = argv or sys.argv[1:]
    target = json.loads(args[0])
    if len(args) > 1 and int(args[1]):
        try:
            os.nice(int(args[1]))
        except OSError:  # not allowed here (a container without it): the writer runs, at the server's priority
            pass
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    writer = None
    while True:
        batches = read_batch(stdin)
        if batches is None:
            break
        blocks, logged, dropped, error = [], 0, 0, None
        for encoded in batches:
            try:
                blocks.append(lines_block(encoded))
                logged += encoded[0]
            except ValueError as e:  # columns of unequal lengths: a bug, never a reason to stop logging
                dropped, error = dropped + encoded[0], f"cannot build the impressions' lines: {e}"
        if logged:
            try:
                if writer is None:
                    writer = open_writer(target)
                data = b"".join(blocks)
                if hasattr(writer, "write_block"):
                    writer.write_block(data)
                else:
                    writer.write_lines(data.split(b"\n")[:-1])
            except Exception as e:  # OSError mostly (gone, full, read-only), or Kafka unreachable: this batch only
                # A topic may have taken some of the lines (KafkaSinkError.delivered); a folder takes all or none.
                delivered = getattr(e, "delivered", 0)
                dropped, error, logged = dropped + logged - delivered, f"{type(e).__name__}: {e}", delivered
                if writer is not None:
                    try:
                        writer.close()
                    except OSError:
                        pass
                    writer = None  # the next batch opens the log again: it may be back
        write_frame(stdout, ("done", logged, dropped, error))
    if writer is not None:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
