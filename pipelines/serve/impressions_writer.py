"""The impressions log's writer process (`python -m pipelines.serve.impressions_writer TARGET_JSON`).

TARGET_JSON says where the lines go: {"kind": "event_log", "log_dir", "max_segment_bytes"} (an event log
folder, through EventLogWriter) or {"kind": "kafka", "bootstrap_servers", "topic", "client_config",
"secret_env", "secret_files", "message_timeout_ms"} (a topic, through components/kafka_log.py's
KafkaLineWriter; secrets are resolved here, from this process's environment, never passed on).

Building a request's 1,000 JSON lines (`impressions.lines_of`, ~0.5 ms) runs
here, in its own interpreter, not under the server's GIL. It runs at the
server's CPU priority: at a lower one (nice 10) it served the server better on
a quiet machine, but on a busy one it fell behind, and its backlog (the encoded
requests queued in the server) grew the server's memory by hundreds of MiB
(benchmarks/serving.py, 2026-12-05). It reads frames from stdin (a 4-byte
big-endian length, then a pickle of a list of `impressions.EncodedColumns`, one
per request) and answers each with one frame: ("done", logged, dropped,
error). EOF on stdin ends it.
"""
from __future__ import annotations

import pickle
import struct
import sys
from typing import BinaryIO, Optional


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

    from pipelines.serve.impressions import lines_of

    target = json.loads((argv or sys.argv[1:])[0])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    writer = None
    while True:
        batches = read_frame(stdin)
        if batches is None:
            break
        lines, dropped, error = [], 0, None
        for encoded in batches:
            try:
                lines += lines_of(encoded)
            except ValueError as e:  # columns of unequal lengths: a bug, never a reason to stop logging
                dropped, error = dropped + encoded[0], f"cannot build the impressions' lines: {e}"
        logged = len(lines)
        if lines:
            try:
                if writer is None:
                    writer = open_writer(target)
                writer.write_lines(lines)
            except Exception as e:  # OSError mostly (gone, full, read-only), or Kafka unreachable: this batch only
                # A topic may have taken some of the lines (KafkaSinkError.delivered); a folder takes all or none.
                logged = getattr(e, "delivered", 0)
                dropped, error = dropped + len(lines) - logged, f"{type(e).__name__}: {e}"
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
