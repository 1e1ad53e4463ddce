"""The continuous controller: one long-lived process that runs a cycle whenever a span has closed.

* One controller per home: `single_instance` holds an exclusive `flock` on
  `<home>/controller.lock`, which the kernel releases when the process dies,
  however it dies; so a lock left by a killed controller is simply taken
  over, while a live one is refused with its pid.
* Cycles never overlap: they run one after another in this process.
* When to run: `due` asks the same question ingestion will (`windowing.decide`
  on the events after the committed position), so a cycle starts exactly
  when it has a closed span to emit; optionally also once N new events wait.
* SIGTERM or Ctrl-C: the cycle in progress finishes (a TFX run publishes
  everything or nothing), then the controller exits 0.
* SIGKILL, at any moment: the next controller continues from what ML
  Metadata says was committed (`pipelines/recovery.py`). On start it
  finishes an interrupted push or records that there was none to finish,
  marks the dead run's executions CANCELED, and then runs a resumed cycle
  over any span that was published but never trained, before new ones.
* Retention (`pipelines/retention.py`), after each cycle and on start:
  the payload of artifacts older than `retention.keep_cycles` cycles that
  nothing needs any more is deleted, their records stay; so are the folders
  killed runs left. Disk stays bounded however long the controller runs.

Whatever the controller caches is only an optimisation: ML Metadata and the
saved models are the truth, and each cycle starts from what MLMD says.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Optional

from pipelines.config import DriftlineConfig

class ControllerRunning(RuntimeError):
    """Another controller holds this home."""


@contextlib.contextmanager
def single_instance(home: str) -> Iterator[str]:
    """Holds the home's controller lock for the duration of the block; yields the lock path."""
    from pipelines.lineage import controller_lock_path  # the file `driftline status` reads

    os.makedirs(home, exist_ok=True)
    path = controller_lock_path(home)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        who = f"pid {holder.get('pid')}, started {holder.get('started_at', '?')}" if holder else "another process"
        raise ControllerRunning(
            f"a controller is already running on {home} ({who}). Stop it first (kill -TERM "
            f"{holder.get('pid', '<pid>') if holder else '<pid>'}) or give this one another --home.") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                  time.gmtime())}).encode(), 0)
        os.fsync(fd)
        yield path
    finally:
        # Empty, not deleted: deleting would let a second controller lock a
        # new file while a third still waits on this one.
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


@dataclasses.dataclass(frozen=True)
class Due:
    run: bool
    why: str
    # A resumed cycle: spans an interrupted cycle published are still untrained.
    resume: bool = False


def due(config: DriftlineConfig, min_new_events: Optional[int] = None) -> Due:
    """Whether a cycle would have a closed span to emit now (or enough new events are waiting).

    Spans that an interrupted cycle published but no judged model trained on
    come first: then a resumed cycle is due.
    """
    from components.event_schema import InvalidEvent
    from components.streaming_example_gen import ingest, sources, windowing
    from components.streaming_example_gen.committed_state import latest_committed_state
    from pipelines.metadata import STREAMING_EXAMPLE_GEN_ID, open_store
    from pipelines.recovery import spans_text, untrained_spans

    store = open_store(config.metadata_path)
    untrained = untrained_spans(store, config.pipeline_name)
    if untrained:
        return Due(True, f"span{'s' if len(untrained) > 1 else ''} {spans_text(untrained)} published by an "
                         f"interrupted cycle, never trained: resuming", resume=True)
    state, _ = latest_committed_state(store, config.pipeline_name, STREAMING_EXAMPLE_GEN_ID)
    window = config.window.runtime()
    schema = config.source.schema
    source = sources.from_config(config.source)
    # The same bounds ingestion applies: an event from the future must not make a span look closed here.
    bounds = windowing.TimeBounds.for_run(window, state, time.time_ns() // 1_000_000)
    parser = ingest.RecordParser(schema, window, source.event_time_from_record, bounds)
    plan = source.plan(state)
    newest, spans, new_events = None, set(), 0
    for unit in plan.units:
        lane = source.lane(unit)
        for offset, payload, record_time_ms in source.read(unit):
            try:
                t = parser.event(payload, record_time_ms)[schema.event_time_field]
            except InvalidEvent:
                continue
            position = source.position(lane, offset)
            if ingest.time_verdict(bounds, position, t, window.span_of(t)) is not None:
                continue
            if windowing.is_new_line(state, position):
                new_events += 1
            newest = t if newest is None or t > newest else newest
            if state.last_span is None or window.span_of(t) > state.last_span:
                spans.add(window.span_of(t))
    decision = windowing.decide(window, state, newest, spans, bounds=bounds)
    if decision.emits:
        return Due(True, f"span{'s' if len(decision.emitted_spans) > 1 else ''} "
                         f"{', '.join(map(str, sorted(decision.emitted_spans)))} closed")
    if min_new_events is not None and new_events >= min_new_events:
        return Due(True, f"{new_events} new events waiting (at least {min_new_events})")
    return Due(False, f"no span closed; {new_events} new events waiting")


def run_continuous(config: DriftlineConfig, *, poll_seconds: float = 5.0, min_new_events: Optional[int] = None,
                   max_cycles: Optional[int] = None, until_idle: bool = False,
                   stop: Optional[threading.Event] = None, emit: Optional[Callable[[str], None]] = None,
                   say: Optional[Callable[[str], None]] = None) -> int:
    """Runs cycles as spans close until stopped (SIGTERM, Ctrl-C, `stop`) or `max_cycles`; returns cycles run.

    With `until_idle` it also returns as soon as no cycle is due. Prints one
    JSON line per cycle through `emit` and a human line through `say`.
    """
    from pipelines import recovery, retention
    from pipelines.local_runner import run_cycle

    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    emit = emit or (lambda line: print(line, flush=True))
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    cycles = 0
    try:
        with single_instance(config.home):
            say(f"controller {os.getpid()} on {config.home}: watching {config.source.describe()}")
            recovered = recovery.recover_interrupted(config)
            if recovered.anything:
                say(f"recovery: {recovered.describe()}")
            if config.retention.enabled:
                say(retention.apply(config).describe())
            while not stop.is_set() and (max_cycles is None or cycles < max_cycles):
                check = due(config, min_new_events)
                if not check.run:
                    if until_idle:
                        say(f"idle: {check.why}")
                        break
                    stop.wait(poll_seconds)
                    continue
                say(f"cycle {cycles + 1}: {check.why}")
                report = run_cycle(config, resume=check.resume)
                cycles += 1
                line = {"cycle": cycles, "trigger": check.why, **dataclasses.asdict(report)}
                if config.retention.enabled:
                    kept = retention.apply(config)
                    line["retention"] = {"deleted": kept.deleted, "unused_folders": len(kept.unused_folders),
                                         "freed_bytes": kept.freed_bytes, "seconds": kept.seconds}
                emit(json.dumps(line, sort_keys=True))
                say(f"cycle {cycles}: spans {report.spans}{' (resumed)' if report.resumed else ''}, "
                    f"{report.start or 'no training'}, {report.reason or report.start_reason or 'nothing to train'}, "
                    f"pushed {report.pushed_version or 'nothing'} ({report.wall_seconds:.0f} s)")
            say(f"controller {os.getpid()}: stopping after {cycles} cycle(s)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return cycles
