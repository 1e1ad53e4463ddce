"""The impressions log's writer process (`python -m pipelines.serve.impressions_writer LOG_DIR MAX_SEGMENT_BYTES`).

Building 1,000 JSON lines costs ~1.3 ms of Python per request, and in the
server's process it holds the GIL the event loop and the model call's return
need: benchmarks/serving.py measured it adding 4-12 ms to p99. Here it runs in
its own interpreter. It reads frames from stdin (a 4-byte big-endian length,
then a pickle of a list of (columns, n)) and answers each with one frame:
("logged", n) or ("dropped", n, error). EOF on stdin ends it.
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


def main(argv=None) -> int:
    from components.event_log import EventLogWriter
    from pipelines.serve.impressions import ImpressionLog

    log_dir, max_segment_bytes = (argv or sys.argv[1:])[:2]
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    writer = None
    while True:
        batches = read_frame(stdin)
        if batches is None:
            break
        lines, dropped, error = [], 0, None
        for columns, n in batches:
            try:
                lines += ImpressionLog._lines(columns, n)
            except TypeError as e:  # a value orjson cannot write: a bug, never a reason to stop logging
                dropped, error = dropped + n, f"cannot serialize an impression: {e}"
        if lines:
            try:
                if writer is None:
                    writer = EventLogWriter(log_dir, max_segment_bytes=int(max_segment_bytes))
                writer.write_lines(lines)
            except Exception as e:  # OSError mostly (gone, full, read-only): this batch only
                dropped, error = dropped + len(lines), f"{type(e).__name__}: {e}"
                lines = []
                if writer is not None:
                    try:
                        writer.close()
                    except OSError:
                        pass
                    writer = None  # the next batch opens the log again: it may be back
        write_frame(stdout, ("done", len(lines), dropped, error))
    if writer is not None:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
