"""A hostile producer: appends, beside the well-behaved writers, what real producers get wrong.

Run as a process (``python tests/hostile_producer.py LOG_DIR SEED``) by the controller chaos test
(test_controller_crash.py). About once every ``--every`` seconds it appends one of:

* ``garbage``: random bytes, no JSON at all;
* ``nested``: 5,000 levels of ``[`` or of ``{"a":``, the line that used to crash ingestion;
* ``future``: a valid event a year ahead of the clock (a producer with a wrong clock), id ``future-*``;
* ``too_late``: a valid event two hours behind the clock, id ``too_late-*`` (only after
  ``--too-late-after`` seconds, once spans have been emitted: before, it would open an old span);
* ``duplicate``: the exact bytes of a recent valid line of the log again (a retry after a lost ack);
* ``torn``: half of a valid line, written under the writers' lock, and then the process dies at once
  (``os._exit``), as a producer crashing mid-write does; the next writer to take the lock starts on a
  new line, so the fragment becomes one line of its own. The test restarts the producer.

It writes through the same lock as `EventLogWriter`, so the log stays the single truth the test
audits; it exits 0 on SIGTERM and 17 after a torn write.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import signal
import sys
import time

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS))
sys.path.insert(0, TESTS)

from components.event_log import SEGMENT_SUFFIX, WRITER_LOCK_FILE, EventLogWriter  # noqa: E402
from ingest_helpers import ad_click_event  # noqa: E402

HOUR_MS = 3_600_000
TORN_EXIT = 17


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _recent_valid_line(log_dir: str, rng: random.Random) -> bytes:
    """A complete line of a well-behaved writer's event from the newest segment's tail, or b''."""
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(SEGMENT_SUFFIX))
    if not names:
        return b""
    with open(os.path.join(log_dir, names[-1]), "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 32_768))
        lines = f.read().split(b"\n")[1:-1]  # drop the partial first and the unterminated last piece
    good = [ln for ln in lines if ln.startswith(b'{"event_id":"e')]
    return rng.choice(good) if good else b""


def _torn_write_and_die(log_dir: str, line: bytes) -> None:
    """Half a line into the newest segment under the writers' lock, then death without a newline."""
    fd = os.open(os.path.join(log_dir, WRITER_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(SEGMENT_SUFFIX))
    segment = os.open(os.path.join(log_dir, names[-1]), os.O_WRONLY | os.O_APPEND)
    os.write(segment, line[: len(line) // 2])
    os._exit(TORN_EXIT)  # the kernel drops the lock, as it would for a crashed producer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("log_dir")
    p.add_argument("seed", type=int)
    p.add_argument("--every", type=float, default=1.0, help="seconds between hostile lines (on average)")
    p.add_argument("--too-late-after", type=float, default=60.0)
    p.add_argument("--torn-after", type=float, default=20.0, help="no torn write before this many seconds")
    p.add_argument("--torn-chance", type=float, default=0.05)
    args = p.parse_args()
    rng = random.Random(args.seed)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    started = time.monotonic()
    n = 0
    with EventLogWriter(args.log_dir) as writer:
        while not stop["now"]:
            time.sleep(rng.expovariate(1.0 / args.every))
            n += 1
            age = time.monotonic() - started
            kinds = ["garbage", "nested", "future", "duplicate"] + (["too_late"] if age > args.too_late_after else [])
            if age > args.torn_after and rng.random() < args.torn_chance:
                event = ad_click_event(f"torn-{args.seed}-{n}", _now_ms(), rng)
                _torn_write_and_die(args.log_dir, json.dumps(event, separators=(",", ":")).encode())
            kind = rng.choice(kinds)
            if kind == "garbage":
                line = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b"?")
            elif kind == "nested":
                line = rng.choice([b"[" * 5000, b'{"a":' * 5000])
            elif kind == "future":
                line = json.dumps(ad_click_event(f"future-{args.seed}-{n}", _now_ms() + 365 * 24 * HOUR_MS, rng),
                                  separators=(",", ":")).encode()
            elif kind == "too_late":
                line = json.dumps(ad_click_event(f"too_late-{args.seed}-{n}", _now_ms() - 2 * HOUR_MS, rng),
                                  separators=(",", ":")).encode()
            else:
                line = _recent_valid_line(args.log_dir, rng)
            if line.strip():
                writer.write_lines([line])
    return 0


if __name__ == "__main__":
    sys.exit(main())
