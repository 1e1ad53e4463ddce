"""What `make demo` runs: continuous training on the built-in drifting stream.

The stream is replayed ten minutes at a time: each step appends one span's
worth of events to the event log (the simulator continues the same drifting
world) and runs one cycle through TFX's LocalDagRunner, Beam DirectRunner
and SQLite ML Metadata. One span is poisoned (every label flipped) to show
the gate keeping a bad model out of serving. The table is read from MLMD.

Freshness here is measured on a replayed stream: from the moment the events
that close a span land in the log to the moment its model serves. (On a
live stream the allowed lateness comes on top: a span closes that much
after its last event.)

`driftline demo --home DIR` starts from an empty DIR, so it deletes a
previous demo there; but only a folder the demo made itself, which it marks
with a `.driftline-demo` file when it creates it (`prepare_home`). Any
other folder is refused unless `--force`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from typing import Callable, Iterator, List, Optional

from pipelines.config import DriftlineConfig, default_config
from pipelines.simulator import SimulatorConfig, format_ms, simulate

Progress = Callable[[str], None]
# Written into a demo home when `driftline demo` creates it: the proof that the folder is the demo's to delete.
MARKER_FILE = ".driftline-demo"
_MARKER_OWNER = "driftline demo"


class DemoHomeError(RuntimeError):
    """The demo home is a folder the demo did not create; the message names --force."""


def is_demo_home(home: str) -> bool:
    """Whether `home` is a folder `driftline demo` created (it holds the demo's marker file)."""
    try:
        with open(os.path.join(home, MARKER_FILE), encoding="utf-8") as f:
            return json.load(f).get("created_by") == _MARKER_OWNER
    except (OSError, ValueError, AttributeError):
        return False


def prepare_home(home: str, force: bool = False, progress: Optional[Progress] = None) -> None:
    """Leaves `home` an empty folder marked as the demo's: the demo replays its stream from the start.

    A previous demo's folder (marked) is deleted, as is anything with
    `force`; an empty folder is used as it is. Anything else raises
    DemoHomeError and is left untouched: `--home` may name a folder that
    holds someone's work.
    """
    say = progress or _stderr
    if os.path.lexists(home):
        empty_dir = os.path.isdir(home) and not os.path.islink(home) and not os.listdir(home)
        if is_demo_home(home) or (force and not empty_dir):
            say(f"removing the previous {'demo' if is_demo_home(home) else 'contents'} in {home}")
            if os.path.isdir(home) and not os.path.islink(home):
                shutil.rmtree(home)
            else:  # a file, or a link (never what it points to)
                os.remove(home)
        elif not empty_dir:
            what = "a symbolic link" if os.path.islink(home) else "a file" if not os.path.isdir(home) else \
                "a folder that `driftline demo` did not create"
            raise DemoHomeError(
                f"{home} exists and is {what}: the demo starts from an empty home and would delete it. Give "
                f"another --home (or none: demo_home), or add --force to delete {home} and everything in it.")
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, MARKER_FILE), "w", encoding="utf-8") as f:
        json.dump({"created_by": _MARKER_OWNER, "created_at_ms": time.time_ns() // 1_000_000, "pid": os.getpid()},
                  f)


def _stderr(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


class ComponentProgress(logging.Handler):
    """Turns LocalDagRunner's "Component X is running" log lines into progress output."""

    def __init__(self, progress: Progress, prefix: str):
        super().__init__(logging.INFO)
        self.progress, self.prefix, self.started = progress, prefix, {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Component ") and message.endswith(" is running."):
            node = message[len("Component "):-len(" is running.")]
            self.started[node] = time.monotonic()
        elif message.startswith("Component ") and message.endswith(" is finished."):
            node = message[len("Component "):-len(" is finished.")]
            took = time.monotonic() - self.started.get(node, time.monotonic())
            self.progress(f"{self.prefix}{node} done ({took:.1f} s)")


@contextlib.contextmanager
def component_progress(progress: Progress, prefix: str) -> Iterator[None]:
    """For one cycle, TFX's log shows only as "<component> done (s)" progress lines, plus errors.

    TFX reports component progress at INFO, among hundreds of other INFO
    lines: inside the block absl's records go only to the progress handler
    and, from ERROR up, to stderr.
    """
    absl_logger = logging.getLogger("absl")
    handlers = [ComponentProgress(progress, prefix), logging.StreamHandler(sys.stderr)]
    handlers[1].setLevel(logging.ERROR)
    saved = absl_logger.level, absl_logger.propagate
    for handler in handlers:
        absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    absl_logger.propagate = False
    # Transform's executor re-applies absl's verbosity flag (WARNING) to this
    # logger mid-cycle, which would silence the rest of the progress.
    absl_logger.setLevel = lambda level: None
    try:
        yield
    finally:
        for handler in handlers:
            absl_logger.removeHandler(handler)
        del absl_logger.setLevel
        absl_logger.setLevel(saved[0])
        absl_logger.propagate = saved[1]


def span_table(config: DriftlineConfig, since_artifact_id: int = 0) -> str:
    from pipelines.metadata import describe_position, ingested_spans, open_store
    from pipelines.report import format_table

    rows = []
    for r in ingested_spans(open_store(config.metadata_connection), config.pipeline_name):
        if r.artifact_id <= since_artifact_id:
            continue
        rows.append((r.span, format_ms(r.span_start_ms)[11:16], r.event_count, r.train_count, r.eval_count,
                     r.late_count, r.dead_letter_count, r.duplicate_count, describe_position(r.start_position),
                     describe_position(r.end_position)))
    return format_table(("span", "start", "events", "train", "eval", "late", "dead-letter", "duplicates",
                         "read from", "read to"), rows)


@dataclasses.dataclass
class DemoRow:
    cycle: int
    report: object  # local_runner.CycleReport
    # When the span's closing events landed in the log (a replayed stream);
    # None on a live stream, where freshness counts from the newest event time.
    appended_at_ms: Optional[int]
    poisoned: bool

    @property
    def freshness_s(self) -> Optional[float]:
        start = self.appended_at_ms if self.appended_at_ms is not None else self.report.newest_event_ms
        if self.report.pushed_at_ms is None or start is None:
            return None
        return (self.report.pushed_at_ms - start) / 1000.0


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cycle_table(rows: List[DemoRow]) -> str:
    from pipelines.report import format_table

    body = []
    for row in rows:
        r = row.report
        spans = ",".join(str(s)[-3:] for s in r.spans) or "-"
        verdict = "-" if r.blessed is None else ("blessed" if r.blessed else "REJECTED")
        why = (r.reason or r.start_reason or "no closed span").split(": ", 1)[-1]
        if r.blessed and r.latency_blessed is False:  # the gate passed it, the load test did not
            verdict, why = "too slow", (r.latency_reason or "").split(": ", 1)[-1]
        body.append((row.cycle, spans + (" (poisoned)" if row.poisoned else ""), r.events, r.start or "-",
                     _fmt(r.train_seconds, ".1f"), _fmt(r.candidate_auc, ".3f"), _fmt(r.baseline_auc, ".3f"),
                     _fmt(r.latency_p99_ms, ".1f"), verdict, r.pushed_version or "-", _fmt(row.freshness_s, ".0f"),
                     _fmt(r.wall_seconds, ".0f"), why[:70]))
    return format_table(("cycle", "span", "events", "start", "train s", "cand AUC", "base AUC", "p99 ms", "gate",
                         "pushed", "fresh s", "cycle s", "why"), body)


def run_demo(home: str, cycles: int = 8, events_per_minute: int = 1000, poison_cycle: Optional[int] = 5,
             progress: Progress = _stderr) -> List[DemoRow]:
    from pipelines.local_runner import run_cycle

    config = default_config(home)
    log_dir = config.source.log_dir
    # Cycle 1 emits spans 0-2, cycle k >= 2 emits span k + 1: poison exactly that span's minutes.
    poisoned_minutes = (10.0 * (poison_cycle + 1), 10.0 * (poison_cycle + 2)) if poison_cycle else None
    sim = SimulatorConfig(events_per_minute=events_per_minute, bad_fraction=0.0005,
                          flip_labels_minutes=poisoned_minutes)
    rows: List[DemoRow] = []
    for cycle in range(1, cycles + 1):
        poisoned = cycle == poison_cycle
        # The first cycle starts with three spans of history; later ones get one new span each.
        minutes = 32.0 if cycle == 1 else 10.0
        summary = simulate(log_dir, dataclasses.replace(sim, minutes=minutes), append=cycle > 1)
        appended_at_ms = time.time_ns() // 1_000_000
        progress(f"cycle {cycle}/{cycles}: the log grew by {summary.events_written} events to "
                 f"{format_ms(summary.last_event_ms)}{' (this span has every label flipped)' if poisoned else ''}")
        with component_progress(progress, f"cycle {cycle}/{cycles}:   "):
            report = run_cycle(config)
        rows.append(DemoRow(cycle, report, appended_at_ms, poisoned))
        progress(f"cycle {cycle}/{cycles}: {report.start or 'no training'}; "
                 f"{(report.reason or report.start_reason or '')}; pushed {report.pushed_version or 'nothing'} "
                 f"({report.wall_seconds:.0f} s)")
    return rows
