"""The continuous controller: one long-lived process that runs a cycle whenever a span has closed.

* One controller per home: `single_instance` holds an exclusive `flock` on
  `<home>/controller.lock`, which the kernel releases when the process dies,
  however it dies; so a lock left by a killed controller is simply taken
  over, while a live one is refused with its pid.
* One controller per pipeline across machines, when ML Metadata is on
  MySQL: `pipeline_lock` also takes the pipeline's lease in the metadata
  database (components/lease.py: holder, expiry, fencing token), renewed
  every third of `controller.lease_seconds` and before each publish. A
  second controller waits on standby and takes over once the lease expires
  (a SIGKILLed holder's after at most lease_seconds); a controller that
  lost its lease publishes nothing more (the executors' fence refuses), goes
  back to standby, and runs recovery again when it holds the lease anew.
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
* A failed cycle (any exception: a broker timeout, a GCS or ML Metadata
  error, a component that raised) prints a JSON line with "outcome":
  "failed" and the error, is recorded in ML Metadata as a
  `driftline.CycleFailure` (`pipelines/failures.py`; `driftline status`
  shows it), and is retried after an exponential backoff with jitter
  (`ControllerConfig`, through tenacity). A span on which
  `quarantine_after_failures` cycles in a row failed is quarantined, so
  later spans get their cycles; `driftline replay --span S` trains it later.
  A failure before any span was published (the source cannot be read) is
  retried forever and quarantines nothing. Only a misconfiguration
  (`retryable`: ConfigError, SchemaError, ControllerRunning) ends the
  controller; so do SIGTERM and Ctrl-C, cleanly, also during a backoff.
  The event log or topic is checked once before the controller starts
  (`driftline run` calls `local_runner.preflight`): a wrong --log stops it
  there, and once it runs, an unreadable source is retried.
* Nothing to do is quiet: `due` is asked before TFX is launched (here, in
  `run_cycles` and by `driftline ingest`), so a poll or a `run --cycles`
  with no closed span logs one line and records nothing in ML Metadata.
* Human lines go to the "driftline.controller" logger (levels, timestamps:
  `driftline run --log-level`); the JSON lines stay on stdout. With
  `metrics_port`, Prometheus metrics are served (`pipelines/metrics.py`).
* Online evaluation (`online.enabled`, `pipelines/online.py`), after each
  cycle and on start: the new spans' per-arm counts update the open
  comparison (promote, retire or continue, recorded in ML Metadata with the
  spans it counted), and the newest blessed candidate is deployed as the
  challenger; idempotent from ML Metadata, so a crash in between is healed
  by the next call. A failure there is logged and retried after the next cycle.
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
import logging
import os
import signal
import threading
import time
from typing import Callable, Iterator, Optional

from pipelines.config import DriftlineConfig

# The controller's human lines; `driftline run` gives them a handler (pipelines/report.configure_logging).
log = logging.getLogger("driftline.controller")


def _teller(say: Optional[Callable[[str], None]]) -> Callable[..., None]:
    """tell(message, level=INFO): to the logger, or to `say` when a caller gave one (tests, benchmarks:
    then only lines at INFO and above, as the logger's default level shows them)."""
    def tell(message: str, level: int = logging.INFO) -> None:
        if say is not None:
            if level >= logging.INFO:
                say(message)
        else:
            log.log(level, message)

    return tell


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


def _take_lease(config: DriftlineConfig, stop: Optional[threading.Event], tell: Callable[..., None]):
    """The pipeline's lease (ML Metadata on MySQL), or None on SQLite. Without `stop`, one try: another
    holder raises ControllerRunning. With `stop`, waits on standby until it is free or expired (None if stopped).
    """
    from components import lease as lease_lib

    md = config.metadata_connection
    if md.kind != "mysql":
        return None
    seconds = config.controller.lease_seconds
    announced = None
    while True:
        try:
            return lease_lib.try_acquire(md, config.pipeline_name, seconds)
        except lease_lib.LeaseHeld as e:
            if stop is None:
                raise ControllerRunning(
                    f"a controller already holds pipeline {config.pipeline_name!r}: {e}. Stop it first, or wait "
                    f"until its lease expires (controller.lease_seconds, {seconds:g} s after its last renewal)") from None
            if announced != (e.holder, e.token):
                tell(f"standby: {e}; taking over when it expires")
                announced = (e.holder, e.token)
            wait = min(max(e.seconds_left, 0.1), seconds / 3)
        except lease_lib.MetadataConfigError:
            raise
        except Exception as e:  # noqa: BLE001: the database is down or unreachable; the lease waits for it
            if stop is None:
                raise
            tell(f"cannot take the lease on {md.describe()} ({type(e).__name__}: {e}); retrying", logging.WARNING)
            wait = seconds / 3
        if stop.wait(wait):
            return None


@contextlib.contextmanager
def pipeline_lock(config: DriftlineConfig, stop: Optional[threading.Event] = None,
                  say: Optional[Callable[..., None]] = None) -> Iterator[object]:
    """The pipeline's guards for the block: the home's `flock` (`single_instance`), and with ML Metadata on
    MySQL the pipeline's lease too, renewed in the background and made the one the executors fence their
    publishes with. Yields the lease (None on SQLite, or when `stop` was set while waiting on standby).
    Without `stop`, a lease held elsewhere raises ControllerRunning at once."""
    from components import lease as lease_lib

    tell = _teller(say)
    with single_instance(config.home):
        held = _take_lease(config, stop, tell)
        if held is None:
            yield None
            return
        tell(f"holding the {held.describe()}")
        held.start_heartbeat()
        try:
            with lease_lib.held(held):
                yield held
        finally:
            try:
                held.release()
            except Exception as e:  # noqa: BLE001: it expires by itself within lease_seconds
                tell(f"could not release the lease ({type(e).__name__}: {e}); it expires by itself", logging.WARNING)


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

    Spans that an interrupted or failed cycle published but no judged model
    trained on come first: then a resumed cycle is due. Every caller asks this
    before it launches TFX, so a cycle with nothing to do never runs (a TFX
    run without a span would record a run and log an InsufficientInputError
    per downstream component).
    """
    from pipelines.metadata import open_store
    from pipelines.recovery import spans_text, untrained_spans

    untrained = untrained_spans(open_store(config.metadata_connection), config.pipeline_name)
    if untrained:
        return Due(True, f"span{'s' if len(untrained) > 1 else ''} {spans_text(untrained)} published but never "
                         f"trained: resuming", resume=True)
    return closed_spans(config, min_new_events)


def closed_spans(config: DriftlineConfig, min_new_events: Optional[int] = None) -> Due:
    """Whether ingestion would emit a closed span now (`windowing.decide` on the events after the committed
    position), or at least `min_new_events` new events wait. Reads the source; writes nothing."""
    from components.event_schema import InvalidEvent
    from components.streaming_example_gen import ingest, sources, windowing
    from components.streaming_example_gen.committed_state import latest_committed_state
    from pipelines.metadata import STREAMING_EXAMPLE_GEN_ID, open_store

    if config.join is not None:
        if min_new_events is not None:
            from pipelines.config import ConfigError

            raise ConfigError("--min-new-events does not apply to a join: a joined span exists only once its "
                              "impressions' attribution windows have closed; drop --min-new-events")
        return joined_spans(config)
    store = open_store(config.metadata_connection)
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


def joined_spans(config: DriftlineConfig) -> Due:
    """Join mode: whether JoinExampleGen would emit a span now, by the join's own rules (`join_run.run_join`
    from the committed join state, writing nothing); else which stream's watermark holds the join back."""
    from components.streaming_example_gen import join, join_run
    from components.streaming_example_gen.committed_state import latest_committed_state_json
    from pipelines.metadata import STREAMING_EXAMPLE_GEN_ID, open_store

    text, _ = latest_committed_state_json(open_store(config.metadata_connection), config.pipeline_name,
                                          STREAMING_EXAMPLE_GEN_ID)
    state = join.JoinState.from_json(text)
    run = join_run.run_join(config.join, config.window.runtime(), state, output_root="",
                            chunk_bytes=config.source.chunk_bytes, write=False)
    result = run.result
    if result.emits:
        spans = sorted(result.emitted_spans)
        return Due(True, f"span{'s' if len(spans) > 1 else ''} {', '.join(map(str, spans))} joined "
                         f"(attribution windows closed under both watermarks)")
    held = result.held_back_by
    return Due(False, f"no span's attribution windows closed; {result.pending_impressions} impressions waiting"
                      + (f", held back by the {held} stream's watermark" if held else ""))


# Errors that no retry can fix: a configuration that is wrong stays wrong. Everything else (a broker
# timeout, a GCS or ML Metadata error, a component that raised) is retried, and recorded each time.
NON_RETRYABLE = ("ConfigError", "SchemaError", "ControllerRunning")


def retryable(error: BaseException) -> bool:
    """Whether the controller retries after `error`: any Exception but a misconfiguration (NON_RETRYABLE).

    KeyboardInterrupt and SystemExit are not Exceptions: they stop the controller.
    """
    from components.event_schema import SchemaError
    from pipelines.config import ConfigError

    from components.lease import LeaseLost

    # LeaseLost is no misconfiguration, but retrying cannot fix it either: the controller goes back to standby.
    return isinstance(error, Exception) and not isinstance(error, (ConfigError, SchemaError, ControllerRunning,
                                                                    LeaseLost))


def online_step(config: DriftlineConfig, tell: Callable[..., None]) -> Optional[dict]:
    """Online mode's reconcile (pipelines/online.py) after a cycle or on start: its JSON fields, None when off.

    Never raises but for a lost lease: the cycle it follows succeeded, and the next call redoes whatever this
    one did not record (every step is idempotent from ML Metadata)."""
    if not config.online.enabled:
        return None
    from components import lease as lease_lib
    from pipelines import online

    try:
        step = online.reconcile(config)
    except lease_lib.LeaseLost:
        raise
    except Exception as e:  # noqa: BLE001: see above; said, and retried after the next cycle
        tell(f"online evaluation not brought up to date (retried after the next cycle): {type(e).__name__}: {e}",
             logging.WARNING)
        return {"error": f"{type(e).__name__}: {e}"}
    if step.anything:
        tell(step.describe())
    return step.to_dict()


def record_failed_cycle(config: DriftlineConfig, error: BaseException, *, resumed: bool, trigger: str,
                        say: Optional[Callable[..., None]] = None) -> dict:
    """Records a failed cycle in ML Metadata (pipelines/failures.py); returns its JSON line's fields.

    Never raises: when ML Metadata cannot take the record either, the line says so.
    `say(message, level)` gets the human lines (default: the controller's logger).
    """
    from pipelines import failures

    say = say or _teller(None)
    line = {"outcome": "failed", "error": {"type": type(error).__name__, "message": failures.error_text(error)},
            "retryable": retryable(error), "resumed": resumed, "trigger": trigger}
    try:
        recorded = failures.record_failure(config, error, resumed=resumed, trigger=trigger)
    except Exception as e:  # noqa: BLE001: the cycle's own error is what matters; say why it is not recorded
        line["record_error"] = f"{type(e).__name__}: {e}"
        say(f"could not record the failure in ML Metadata: {type(e).__name__}: {e}", logging.ERROR)
        return line
    r = recorded.record
    line.update(consecutive_failures=r.consecutive, spans=r.spans, failure_execution_id=r.execution_id,
                quarantined=[q.span for q in recorded.quarantined])
    for q in recorded.quarantined:
        say(f"span {q.span} quarantined: {q.reason}; `driftline replay --home {config.home} --span {q.span}` "
            "trains it later", logging.WARNING)
    return line


def run_continuous(config: DriftlineConfig, *, poll_seconds: float = 5.0, min_new_events: Optional[int] = None,
                   max_cycles: Optional[int] = None, until_idle: bool = False,
                   stop: Optional[threading.Event] = None, emit: Optional[Callable[[str], None]] = None,
                   say: Optional[Callable[[str], None]] = None, metrics_port: int = 0,
                   metrics_host: str = "127.0.0.1") -> int:
    """Runs cycles as spans close until stopped (SIGTERM, Ctrl-C, `stop`) or `max_cycles`; returns cycles run.

    With `until_idle` it also returns as soon as no cycle is due. Prints one
    JSON line per cycle through `emit` ("outcome": "ok" or "failed"); the
    human lines go to the "driftline.controller" logger (to `say` when given).
    A poll with nothing due launches no TFX run and records nothing. A failed
    cycle is recorded in ML Metadata and retried after an exponential backoff
    with jitter (`config.controller`); only a misconfiguration (`retryable`)
    ends the controller, by raising. `max_cycles` counts cycles that succeeded.
    `metrics_port` > 0 serves Prometheus metrics on metrics_host:metrics_port
    (pipelines/metrics.py) while the controller runs; a port that cannot be
    bound raises MetricsError before the first cycle.
    """
    import tenacity

    from components import lease as lease_lib
    from pipelines import recovery, retention
    from pipelines.local_runner import run_cycle

    tell = _teller(say)
    emit = emit or (lambda line: print(line, flush=True))
    stop = stop or threading.Event()
    settings = config.controller
    metrics = None
    if metrics_port:
        from pipelines.metrics import ControllerMetrics

        metrics = ControllerMetrics(config)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    cycles = 0
    attempt = 0  # failed attempts at the current cycle, in this process
    stopped = "stopped"  # what a step returns once the controller is asked to stop

    def refresh_metrics() -> None:
        if metrics is not None:
            problem = metrics.refresh()
            if problem:
                tell(f"metrics not refreshed from ML Metadata: {problem}", logging.WARNING)

    def start():
        # Retried like a cycle when ML Metadata or the folders fail: recovery is idempotent.
        try:
            # Recovery cancels the executions of a dead holder: only under a lease just confirmed.
            lease_lib.fence("start-up recovery")
            report = recovery.recover_interrupted(config)
            if report.anything:
                tell(f"recovery: {report.describe()}", logging.WARNING)
            # What a controller killed after its last cycle did not record (counts, a challenger) is recorded now.
            online_step(config, tell)
            if config.retention.enabled:
                tell(retention.apply(config).describe())
        except Exception as e:
            lost = lease_lost(e)
            if lost is not None:
                raise lost from e
            emit(json.dumps({"cycle": 0, **record_failed_cycle(config, e, resumed=False, trigger="start-up recovery",
                                                               say=tell)}, sort_keys=True))
            tell(f"start-up recovery failed: {type(e).__name__}: {e}", logging.ERROR)
            raise
        finally:
            refresh_metrics()

    def step():
        nonlocal cycles, attempt
        if stop.is_set():
            return stopped
        check = Due(False, "checking whether a cycle is due")
        started = None
        try:
            check = due(config, min_new_events)
            if not check.run:
                if metrics is not None:
                    metrics.nothing_to_do()
                tell(f"nothing to do: {check.why}", logging.DEBUG)
                return check
            tell(f"cycle {cycles + 1}: {check.why}" + (f" (attempt {attempt + 1})" if attempt else ""))
            started = time.monotonic()
            cycle = run_cycle(config, resume=check.resume)
        except Exception as e:
            lost = lease_lost(e)
            if lost is not None:
                # Not this cycle's failure to record: another controller holds the pipeline now.
                if metrics is not None:
                    metrics.cycle_failed(None if started is None else time.monotonic() - started)
                raise lost from e
            attempt += 1
            line = {"cycle": cycles + 1, "attempt": attempt,
                    **record_failed_cycle(config, e, resumed=check.resume, trigger=check.why, say=tell)}
            emit(json.dumps(line, sort_keys=True))
            tell(f"cycle {cycles + 1} failed (attempt {attempt}): {type(e).__name__}: "
                 f"{line['error']['message'].splitlines()[0] if line['error']['message'] else ''}", logging.ERROR)
            if metrics is not None:
                metrics.cycle_failed(None if started is None else time.monotonic() - started)
            refresh_metrics()
            raise
        cycles += 1
        attempt = 0
        line = {"cycle": cycles, "outcome": "ok", "trigger": check.why, **dataclasses.asdict(cycle)}
        online = online_step(config, tell)
        if online is not None:
            line["online"] = online
        if config.retention.enabled:
            try:
                kept = retention.apply(config)
                line["retention"] = {"deleted": kept.deleted, "unused_folders": len(kept.unused_folders),
                                     "freed_bytes": kept.freed_bytes, "seconds": kept.seconds}
            except Exception as e:  # noqa: BLE001: the cycle succeeded; the next one retries retention
                line["retention"] = {"error": f"{type(e).__name__}: {e}"}
                tell(f"retention failed (the next cycle retries it): {type(e).__name__}: {e}", logging.WARNING)
        emit(json.dumps(line, sort_keys=True))
        tell(f"cycle {cycles}: spans {cycle.spans}{' (resumed)' if cycle.resumed else ''}, "
             f"{cycle.start or 'no training'}, {cycle.reason or cycle.start_reason or 'nothing to train'}, "
             f"pushed {cycle.pushed_version or 'nothing'} ({cycle.wall_seconds:.0f} s)")
        if metrics is not None:
            metrics.cycle_ok(cycle.wall_seconds)
        refresh_metrics()
        return None

    def before_sleep(state: tenacity.RetryCallState) -> None:
        tell(f"retrying in {state.next_action.sleep:.3g} s", logging.WARNING)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retryable),
        # initial * 2^(n-1) plus up to `initial` of jitter, capped: controllers that failed together
        # (a shared broker went down) do not all come back at the same moment.
        wait=tenacity.wait_exponential_jitter(initial=settings.retry_initial_seconds,
                                              max=settings.retry_max_seconds,
                                              jitter=settings.retry_initial_seconds),
        stop=tenacity.stop_when_event_set(stop),
        sleep=stop.wait,  # SIGTERM ends the wait at once
        before_sleep=before_sleep,
        retry_error_callback=lambda state: stopped)  # stopped while failing: exit cleanly
    def cycles_under_lease() -> bool:
        """Recovery, then cycles, while this process holds the pipeline; True when the lease was lost."""
        try:
            if retrying(start) == stopped:
                stop.set()
            while not stop.is_set() and (max_cycles is None or cycles < max_cycles):
                held = lease_lib.current()
                if held is not None and held.lost.is_set():
                    raise lease_lib.LeaseLost(f"the {held.describe()} was lost ({held.lost_reason})")
                result = retrying(step)
                if result == stopped:
                    break
                if isinstance(result, Due):
                    if until_idle:
                        tell(f"idle: {result.why}")
                        break
                    stop.wait(poll_seconds)
        except lease_lib.LeaseLost as e:
            tell(f"lease lost, nothing more is published: {e}; back to standby", logging.WARNING)
            return True
        return False

    try:
        with contextlib.ExitStack() as serving_metrics:
            if metrics is not None:
                refresh_metrics()  # the first scrape already reports what ML Metadata says
                address = serving_metrics.enter_context(metrics.serve(metrics_host, metrics_port))
                tell(f"metrics on http://{address}/metrics")
            tell(f"controller {os.getpid()} on {config.home}: watching {config.source.describe()}")
            lost = True
            while lost and not stop.is_set():
                # On SQLite the home's flock alone; on MySQL also the pipeline's lease, waited for on standby.
                with pipeline_lock(config, stop=stop, say=say):
                    if stop.is_set():  # stopped on standby: nothing was held, nothing runs
                        break
                    lost = cycles_under_lease()
            tell(f"controller {os.getpid()}: stopping after {cycles} cycle(s)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return cycles


def lease_lost(error: BaseException):
    """The LeaseLost behind a failed step, or None: raised by a fence (anywhere in the cause chain), or the lease
    this process works under can no longer be confirmed (then nothing about the failure may be recorded)."""
    from components import lease as lease_lib

    seen, e = set(), error
    while e is not None and id(e) not in seen:
        if isinstance(e, lease_lib.LeaseLost):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    held = lease_lib.current()
    if held is None:
        return None
    try:
        if held.renew():
            return None
        why = held.lost_reason
    except Exception as problem:  # noqa: BLE001: a lease that cannot be confirmed is not held
        why = f"it could not be confirmed: {type(problem).__name__}: {problem}"
    return lease_lib.LeaseLost(f"the {held.describe()} was lost ({why}) while {type(error).__name__}: {error}")


def run_cycles(config: DriftlineConfig, cycles: int, say: Optional[Callable[[str], None]] = None,
               check_source: bool = True) -> list:
    """`driftline run --cycles N`: up to N cycles with the controller's crash recovery, without retries.

    Call it while holding the home's lock. Recovery first (an interrupted
    push finished, dead executions CANCELED; in online mode the online step,
    also after each cycle: `online_step`), then before each cycle the
    controller's question (`due`): a resumed cycle while spans are published
    but untrained, a cycle when a span has closed, and otherwise one line
    ("nothing to do: ...") and no more cycles: no TFX run, nothing recorded.
    A failed cycle is recorded in ML Metadata like the controller's and
    raises `CycleFailed`; returns the CycleReports of the cycles that ran
    (none when nothing was due). A source that cannot be read before the
    first cycle raises its EventLogError unrecorded (`check_source=False`:
    not checked, for `replay`, whose resumed cycle reads no source).
    """
    from pipelines import recovery
    from pipelines.local_runner import preflight, run_cycle

    tell = _teller(say)
    # A source that cannot be read at all is a misconfiguration: it stops here, before anything is recorded.
    if check_source:
        preflight(config)
    report = recovery.recover_interrupted(config)
    if report.anything:
        tell(f"recovery: {report.describe()}", logging.WARNING)
    online_step(config, tell)
    reports = []
    for n in range(1, cycles + 1):
        check = due(config)
        if not check.run:
            tell(f"nothing to do: {check.why}" + (f" (after {n - 1} of {cycles} cycles)" if n > 1 else ""))
            break
        tell(f"cycle {n}/{cycles}: {check.why} ...")
        try:
            reports.append(run_cycle(config, resume=check.resume))
        except Exception as e:
            line = record_failed_cycle(config, e, resumed=check.resume, trigger=check.why, say=tell)
            raise CycleFailed(n, line) from e
        online_step(config, tell)
    return reports


class CycleFailed(RuntimeError):
    """A cycle of `run_cycles` failed; `line` is what the controller would print for it, recorded in ML Metadata."""

    def __init__(self, cycle: int, line: dict):
        error = line["error"]
        recorded = ("recorded in ML Metadata (driftline status)" if "record_error" not in line
                    else f"not recorded: {line['record_error']}")
        quarantined = (f"; span{'s' if len(line['quarantined']) > 1 else ''} "
                       f"{', '.join(map(str, line['quarantined']))} quarantined (driftline replay --span S)"
                       if line.get("quarantined") else "")
        super().__init__(f"cycle {cycle} failed: {error['type']}: {error['message']}; {recorded}{quarantined}")
        self.cycle = cycle
        self.line = line
