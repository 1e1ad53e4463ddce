"""The continuous controller survives SIGKILL at any moment and hostile producers (issue #5: resume after
a crash; issue #19: hostile producers).

What is run: two `driftline simulate --live` processes append real-time ad-click streams into one log
(short 30 s spans, late and malformed lines), beside a hostile producer (tests/hostile_producer.py) that
adds garbage, 5,000-level nesting, events a year in the future and two hours too late, retries of recent
lines (duplicate ids), and half-written lines after which it dies mid-write and is restarted. The real
controller (`pipelines.controller.run_continuous`: TFX LocalDagRunner, Beam DirectRunner, ML Metadata on
SQLite, or on MariaDB with the pipeline's lease under `make test-mariadb`, retention on) runs cycles on it,
and is SIGKILLed four times, then restarted:

1. as soon as ML Metadata shows a newly published span (the cycle dies in
   Transform or training: its spans are committed but untrained);
2. as soon as a new version appears in the serving folder (the pusher dies
   between its atomic rename and ML Metadata's record of the push);
3. and 4. after a seeded random delay within a cycle's length.

After each kill, serving is checked: every version folder is complete and the
serving one loads as a SavedModel. Then the stream stops, and a last
controller runs until nothing is due; one more finds nothing to do. The
whole run is then checked against the log, ML Metadata and the folders:

* every line written before the committed position is in exactly one place:
  a valid, unique, in-bounds event whose span has closed in exactly one
  published span (read back from the TFRecords), every later one in none;
  every malformed line, event from the future and event too late in exactly
  one dead-letter file, with its reason; every repeat of an event id in
  exactly one span's duplicates list, and counted once;
* every published span was trained as a new span by exactly one model the
  gate judged (no span lost to a crash, none trained twice);
* every version in the serving folder is a push ML Metadata recorded, and its
  files are the model's; the serving model's lineage chain is unbroken back
  to a cold start;
* `lineage.status` (what `driftline status` prints) agrees with all of that;
  no execution is left RUNNING and no folder of a killed run is left.

Each controller is a fork of a server that imported TFX once (as in
test_exactly_once.py), so a restart does not pay 20-40 s of imports.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time

import pytest

import ingest_helpers as H
from hostile_producer import TORN_EXIT

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
SEED = 20260405
SPAN_S = 30
LATENESS_S = 3
EVENTS_PER_MINUTE = 6000
LEASE_SECONDS = 6.0


def controller_config(home: str, log_dir: str):
    from pipelines.config import (ControllerConfig, GateConfig, LatencyConfig, RetentionConfig, TrainerConfig,
                                  WindowConfig, default_config)

    return default_config(home, log_dir).replace(
        # Ten minutes: far beyond the simulators' lateness (at most 3 min), far short of the hostile 2 hours.
        window=WindowConfig(span_seconds=SPAN_S, allowed_lateness_seconds=LATENESS_S, max_lateness_seconds=600),
        trainer=TrainerConfig(cold_epochs=3, warm_epochs=2, replay_spans=2),
        # Mechanics, not model quality, are under test: a short span clears these, so most cycles push.
        gate=GateConfig(min_auc=0.5, min_calibration=0.3, max_calibration=3.0, max_log_loss=1.0, max_auc_drop=0.2,
                        max_label_shift=5.0, min_slice_auc=0.3, max_auc_interval_width=0.3, min_eval_positives=8),
        # The load test runs, briefly, and a busy test machine must not make it refuse every push.
        latency=LatencyConfig(slo_p99_ms=10_000.0, seconds_per_batch_size=0.2, stage_repeats=2),
        # Retention runs after every cycle (and sweeps what kills leave) but keeps every payload, so
        # the end can read every span back; test_retention.py and the soak cover deletion.
        retention=RetentionConfig(keep_cycles=1000),
        # On MariaDB the controller holds the pipeline's lease: a killed one's successor waits for it to
        # expire, so keep that short (SQLite ignores it).
        controller=ControllerConfig(lease_seconds=LEASE_SECONDS)).validate()


def server_main(home: str, log_dir: str) -> None:
    from conftest import use_test_metadata

    use_test_metadata()  # the test's back end: SQLite, or its MariaDB database under `make test-mariadb`
    fork_server(lambda: controller_config(home, log_dir))


def fork_server(make_config) -> None:
    """Imports TFX and the components once, then forks one controller per `RUN out err idle` line."""
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    import tfx.v1  # noqa: F401
    import tensorflow_model_analysis  # noqa: F401
    import tensorflow_transform  # noqa: F401
    from pipelines import local_runner, pipeline  # noqa: F401
    from pipelines.controller import run_continuous
    from pipelines.report import configure_logging

    config = make_config()
    print("READY", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "RUN":
            out, err, idle = args
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
                    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                    sys.stdout = os.fdopen(1, "w", buffering=1)
                    sys.stderr = os.fdopen(2, "w", buffering=1)
                    configure_logging("info")  # the controller's lines, as `driftline run` logs them
                    run_continuous(config, poll_seconds=0.5, until_idle=idle == "1")
                    code = 0
                except BaseException:  # noqa: BLE001: the exit code and the log tell the test
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            print(f"PID {pid}", flush=True)
        elif cmd == "WAIT":
            _, status = os.waitpid(int(args[0]), 0)
            print(f"EXIT {-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}", flush=True)
        elif cmd == "QUIT":
            return


class Server:
    def __init__(self, home: str, log_dir: str, stderr_path: str):
        code = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r); import test_controller_crash as t; "
                "t.server_main(sys.argv[1], sys.argv[2])" % (REPO, TESTS))
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", code, home, log_dir], cwd=REPO, text=True, bufsize=1,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        assert self.proc.stdout.readline().strip() == "READY", H.tail(stderr_path)

    def start(self, out: str, err: str, until_idle: bool = False) -> int:
        self.proc.stdin.write(f"RUN {out} {err} {int(until_idle)}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline().split()[1])

    def wait(self, pid: int) -> int:
        self.proc.stdin.write(f"WAIT {pid}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline().split()[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("QUIT\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        self.stderr.close()


_connections = {}  # MySQL: one connection per database, reused by every poll
LIVE_EXAMPLES = ("SELECT COUNT(*) FROM Artifact a JOIN Type t ON a.type_id = t.id "
                 "WHERE t.name = 'Examples' AND a.state = 2")


def live_spans(md) -> int:
    """Published Examples, read with plain SQL, fast enough to poll every few milliseconds: on SQLite the
    controller may be writing (retry when locked); on MySQL each query sees the latest commit (autocommit)."""
    if md.kind == "mysql":
        import pymysql

        key = (md.host, md.port, md.database)
        try:
            if key not in _connections:
                _connections[key] = pymysql.connect(host=md.host, port=md.port, user=md.user,
                                                    password=md.password(), database=md.database, autocommit=True)
            with _connections[key].cursor() as cursor:
                cursor.execute(LIVE_EXAMPLES)
                return cursor.fetchone()[0]
        except pymysql.err.OperationalError:  # no database yet: the controller's first open creates it
            _connections.pop(key, None)
            return 0
        except pymysql.err.ProgrammingError:  # no tables yet
            return 0
    if not os.path.exists(md.path):
        return 0
    for _ in range(50):
        try:
            with sqlite3.connect(f"file:{md.path}?mode=ro", uri=True, timeout=0.2) as db:
                return db.execute(LIVE_EXAMPLES).fetchone()[0]
        except sqlite3.OperationalError:
            time.sleep(0.01)
    return 0


def versions(serving_dir: str):
    try:
        return sorted(int(v) for v in os.listdir(serving_dir) if v.isdigit())
    except FileNotFoundError:
        return []


def cycle_lines(out_paths, outcome: str = "ok"):
    rows = []
    for path in out_paths:
        if os.path.exists(path):
            with open(path) as f:
                rows += [json.loads(line) for line in f if line.startswith("{")]
    return [r for r in rows if r.get("outcome") == outcome]


class HostileProducer:
    """Runs tests/hostile_producer.py, and restarts it each time it dies mid-write, until stopped."""

    def __init__(self, log_dir: str, err_path: str, seed: int):
        import threading

        self.torn_exits, self.exits = 0, []
        self.first_torn_at = None  # time.monotonic() of the first torn write
        self._stop = threading.Event()
        self._proc = None

        def supervise():
            n = 0
            while not self._stop.is_set():
                n += 1
                self._proc = subprocess.Popen([sys.executable, os.path.join(TESTS, "hostile_producer.py"), log_dir,
                                               str(seed + n)], cwd=REPO, stdout=subprocess.DEVNULL,
                                              stderr=open(err_path, "ab"))
                code = self._proc.wait()
                self.exits.append(code)
                if code == TORN_EXIT:
                    if self.first_torn_at is None:  # set before the count the test waits on
                        self.first_torn_at = time.monotonic()
                    self.torn_exits += 1
                elif not self._stop.is_set():
                    return  # died of something else: the test fails on `exits`

        self._thread = threading.Thread(target=supervise, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 30
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
            self._thread.join(0.2)


class Serving:
    """Checks serving after every kill: complete versions only, and the serving one loads."""

    def __init__(self, serving_dir: str):
        self.serving_dir = serving_dir
        self.loaded = set()

    def check(self, when: str) -> None:
        import tensorflow as tf

        found = versions(self.serving_dir)
        for v in found:
            d = os.path.join(self.serving_dir, str(v))
            assert os.path.isfile(os.path.join(d, "saved_model.pb")), f"{when}: version {v} has no saved_model.pb"
            assert glob.glob(os.path.join(d, "variables", "variables.index")), f"{when}: version {v} has no variables"
        if found and found[-1] not in self.loaded:
            model = tf.saved_model.load(os.path.join(self.serving_dir, str(found[-1])))
            assert "serving_default" in model.signatures, f"{when}: version {found[-1]} has no serving_default"
            self.loaded.add(found[-1])


@pytest.mark.e2e
def test_controller_killed_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    from ml_metadata.proto import metadata_store_pb2 as pb

    rng = random.Random(SEED)
    home, log_dir, logs = str(tmp_path / "home"), str(tmp_path / "events"), tmp_path / "logs"
    logs.mkdir()
    config = controller_config(home, log_dir)
    t0 = time.monotonic()
    # Two well-behaved writers (distinct seeds: distinct event ids) share the log through its lock.
    sims = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "simulate", "--log", log_dir, "--live",
                              "--events-per-minute", str(EVENTS_PER_MINUTE // 2), "--seed", str(seed),
                              "--bad-fraction", "0.003", "--no-hot-ad"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=open(logs / f"simulate-{seed}.err", "wb")) for seed in (3, 4)]
    hostile = HostileProducer(log_dir, str(logs / "hostile.err"), seed=SEED)
    server = Server(home, log_dir, str(logs / "server.err"))
    serving = Serving(config.serving_dir)
    outs, history, pid = [], [], None
    try:
        def start(name: str, until_idle: bool = False) -> int:
            nonlocal pid
            out, err = str(logs / f"{name}.out"), str(logs / f"{name}.err")
            outs.append(out)
            pid = server.start(out, err, until_idle)
            return pid

        def kill(name: str, how: str, until) -> None:
            nonlocal pid
            start(name)
            err = str(logs / f"{name}.err")
            deadline = time.monotonic() + 420
            while not until():
                assert H.alive(pid), f"controller {name} exited before its kill:\n{H.tail(err)}"
                assert time.monotonic() < deadline, f"{name}: waited too long to kill ({how})\n{H.tail(err)}"
                time.sleep(0.002)
            os.kill(pid, signal.SIGKILL)
            code = server.wait(pid)
            pid = None
            assert code == -signal.SIGKILL, f"{name} exited {code} before the kill:\n{H.tail(err)}"
            history.append((name, how, round(time.monotonic() - t0, 1)))
            serving.check(f"after kill {name} ({how})")

        # 1. In the middle of a cycle, right after its spans were published.
        md = config.metadata_connection
        n = live_spans(md)
        kill("k1", "right after a span was published", lambda: live_spans(md) > n)
        # 2. In the pusher, between its rename into serving and ML Metadata's record of it.
        v = versions(config.serving_dir)
        kill("k2", "as soon as a new serving version appeared", lambda: versions(config.serving_dir) != v)
        # The hostile producer tears a line only after 20 s of life, at random: with quick cycles the kills can
        # all land before it has, and the audit below would have no torn line to find. Let it get there before
        # the last two kills, not after them: a line torn just before the streams stop stays in the span they
        # leave open, past what the audit covers (a run of the suite on ac39aa5 saw that).
        deadline = time.monotonic() + 240
        while hostile.torn_exits < 1:
            assert time.monotonic() < deadline, f"the hostile producer never tore a line: exits {hostile.exits}"
            time.sleep(0.5)
        # 3, 4. At a seeded random moment within a cycle.
        for name in ("k3", "k4"):
            walls = [r["wall_seconds"] for r in cycle_lines(outs)] or [30.0]
            delay = rng.uniform(0.0, 1.1 * statistics.median(walls))
            err = str(logs / f"{name}.err")
            state = {"started": None}

            def due_now(err=err, state=state, delay=delay) -> bool:
                if state["started"] is None:
                    text = open(err).read() if os.path.exists(err) else ""
                    if re.search(r" driftline\.controller: cycle \d+: (?!spans \[)", text):
                        state["started"] = time.monotonic()
                    return False
                return time.monotonic() - state["started"] >= delay

            kill(name, f"{delay:.1f} s into a cycle", due_now)

        # The torn line's span must close before the streams stop (live streams: event time is wall time).
        while time.monotonic() < hostile.first_torn_at + SPAN_S + LATENESS_S + 5:
            time.sleep(0.5)
        # The streams stop (flushing late events they held back); the last controller finishes what is due.
        hostile.stop()
        for sim in sims:
            sim.send_signal(signal.SIGTERM)
        for sim, seed in zip(sims, (3, 4)):
            assert sim.wait(timeout=60) == 0, H.tail(str(logs / f"simulate-{seed}.err"))
        for name in ("final", "again"):
            start(name, until_idle=True)
            code = server.wait(pid)
            pid = None
            assert code == 0, f"{name}:\n{H.tail(str(logs / (name + '.err')))}"
            history.append((name, "ran until idle", round(time.monotonic() - t0, 1)))
        assert not cycle_lines([outs[-1]]), "a second controller right after the last one must find nothing to do"
        serving.check("at the end")
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            server.wait(pid)
        server.close()
        hostile.stop()
        for sim in sims:
            if sim.poll() is None:
                sim.kill()
                sim.wait()
    cycles = cycle_lines(outs)
    print(f"\n{len(cycles)} cycles in {time.monotonic() - t0:.0f} s; kills: {history}")
    for r in cycles:
        print(f"  spans {r['spans']} {'(resumed) ' if r['resumed'] else ''}{r['start']} blessed {r['blessed']} "
              f"pushed {r['pushed_version']} {r['wall_seconds']} s")
    recoveries = [line for p in glob.glob(str(logs / "*.err")) for line in open(p)
                  if " driftline.controller: recovery:" in line]
    print("\n".join(recoveries))

    # ---- ML Metadata after the run ----------------------------------------------------------------------------
    from components.blessing_pusher import serving as serving_lib
    from components.streaming_example_gen import windowing
    from components.streaming_example_gen.committed_state import latest_committed_state
    from components.warm_start_trainer.quarantine import has_key
    from pipelines import lineage, retention
    from pipelines.metadata import open_store
    from pipelines.recovery import model_serving_dir, same_tree, untrained_spans

    store = open_store(config.metadata_connection)
    executions = store.get_executions()
    states = collections.Counter(pb.Execution.State.Name(e.last_known_state) for e in executions)
    assert not states["RUNNING"] and not states["NEW"], states
    assert states["CANCELED"] >= 1, f"no kill interrupted an execution: the proof is vacuous ({states})"
    assert any(r["resumed"] for r in cycles), "the kill after a published span must lead to a resumed cycle"
    # Whether kill 2 hit the few milliseconds between the rename and the record is timing; say which it was.
    print("kill 2 " + ("cut a push short" if any("push of model" in line for line in recoveries)
                       else "came after the push was recorded"))

    # ---- every line in exactly one place: one span, one dead-letter file or one duplicates list ------------
    published = H.published_spans(config.metadata_connection, config.pipeline_name)
    assert published and untrained_spans(store, config.pipeline_name) == []
    state, _ = latest_committed_state(store, config.pipeline_name, "StreamingExampleGen")
    window = windowing.Window(config.window.span_ms, config.window.allowed_lateness_ms, config.window.eval_fraction)
    lines, _ = H.scan_log(log_dir)
    schema = config.source.schema
    seen = collections.Counter(e for p in published for e in p.all_ids)
    from components.event_log import Position
    from components.event_schema import InvalidEvent

    # What the writers wrote, classified from the log alone (the hostile producer's ids say what it meant).
    audit_ms = time.time_ns() // 1_000_000
    expected, bad, future, too_late, repeats, first_at = set(), {}, {}, {}, {}, {}
    for ln in lines:
        where = (ln.segment, ln.offset)
        if not Position(ln.segment, ln.offset) < state.end:
            continue
        try:
            event = schema.parse(ln.line)
        except InvalidEvent:
            bad[where] = ln.line
            continue
        event_id, t = event["event_id"], event["event_time"]
        if t > audit_ms + 24 * 3_600_000:
            future[where] = ln.line
        elif event_id.startswith("too_late-"):
            too_late[where] = ln.line
        elif window.span_of(t) <= state.last_span:
            if event_id in first_at:
                repeats[where] = event_id
            else:
                first_at[event_id] = where
                expected.add(event_id)
    assert not [e for e, k in seen.items() if k > 1], "an event is in two spans"
    assert set(seen) == expected, (f"{len(expected - set(seen))} events missing, e.g. {sorted(expected - set(seen))[:3]}; "
                                   f"{len(set(seen) - expected)} unexpected, e.g. {sorted(set(seen) - expected)[:3]}")
    rows = [r for p in published for r in p.dead_letters]
    dead = {(r["segment"], r["offset"]): r for r in rows}
    assert len(dead) == len(rows), "a line is in two dead-letter files"
    assert {w: H.dead_letter_bytes(r) for w, r in dead.items()} == {**bad, **future, **too_late}
    assert all(not dead[w]["reason"].startswith((windowing.FROM_THE_FUTURE, windowing.TOO_LATE)) for w in bad)
    assert all(dead[w]["reason"].startswith(windowing.FROM_THE_FUTURE) for w in future)
    assert all(dead[w]["reason"].startswith(windowing.TOO_LATE) for w in too_late)
    # Every repeat of an id (the hostile producer's retries) is listed once, by where it was, and counted once.
    listed = [(d["segment"], d["offset"]) for p in published
              for path in glob.glob(os.path.join(p.uri, "duplicates", "*.jsonl")) for d in map(json.loads, open(path))]
    assert len(listed) == len(set(listed)) and set(listed) == set(repeats), (len(listed), len(repeats))
    assert sum(H.int_prop(p.artifact, "duplicate_count") for p in published) == len(repeats)
    # The producers were as hostile as meant: each kind made it into the audited part of the log.
    kinds = {"garbage or torn": bad, "future": future, "too late": too_late, "duplicates": repeats}
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    assert any(line.startswith(b"[" * 100) or line.startswith(b'{"a":' * 20) for line in bad.values())
    assert any(line.startswith(b'{"event_id":"torn-') for line in bad.values()), "no torn line was audited"
    # Every run of the producer but the last died mid-write; the last was stopped, or died mid-write too
    # (SIGTERM may land before its handler is installed, as the process starts).
    assert hostile.torn_exits >= 1 and set(hostile.exits[:-1]) <= {TORN_EXIT}, hostile.exits
    assert hostile.exits[-1] in (0, -signal.SIGTERM, TORN_EXIT), hostile.exits
    print(f"audited {len(lines)} lines: {len(expected)} events, {len(bad)} malformed or torn, {len(future)} from "
          f"the future, {len(too_late)} too late, {len(repeats)} duplicates; hostile producer died mid-write "
          f"{hostile.torn_exits} times")
    spans = [p.span for p in published]
    assert len(spans) == len(set(spans)) and sorted(spans) == list(range(min(spans), max(spans) + 1))

    # ---- every span trained exactly once as a new span, by a judged model -------------------------------------
    models = {m.model_id: m for m in lineage.models(store, config.pipeline_name)}
    trained = collections.Counter()
    for execution in executions:
        events = store.get_events_by_execution_ids([execution.id])
        out = [e.artifact_id for e in events if e.type == pb.Event.OUTPUT and has_key(e, "model")]
        if execution.last_known_state == pb.Execution.COMPLETE and out and models.get(out[0]) is not None \
                and models[out[0]].blessed is not None:
            trained.update(e.artifact_id for e in events if e.type == pb.Event.INPUT and has_key(e, "examples"))
    assert {p.artifact.id: trained[p.artifact.id] for p in published} == {p.artifact.id: 1 for p in published}

    # ---- serving: only recorded pushes, with the model's own files; the chain is unbroken ------------------
    st = lineage.status(config)
    found = versions(config.serving_dir)
    for v in found:
        pushed = [a for a in store.get_artifacts_by_type("PushedModel")
                  if a.custom_properties["pushed"].int_value == 1
                  and a.custom_properties["pushed_version"].string_value == str(v)]
        assert len(pushed) == 1, f"serving version {v} is not one recorded push: {pushed}"
        model = models[pushed[0].custom_properties["model_id"].int_value]
        assert same_tree(model_serving_dir(model.uri), serving_lib.version_dir(config.serving_dir, v))
    assert st.serving.version == found[-1] and st.serving.model_id is not None
    chain = lineage.chain(store, config.pipeline_name, serving_dir=config.serving_dir)
    assert chain[0].model_id == st.serving.model_id and chain[-1].start == "cold"
    for newer, older in zip(chain, chain[1:]):
        assert newer.base_model_id == older.model_id and older.blessed
    assert all(m.warm for m in chain[:-1])

    # ---- status tells the truth --------------------------------------------------------------------------------
    assert (st.spans_ingested, st.events_ingested, st.dead_lettered_events) == (len(published), sum(seen.values()),
                                                                                 len(rows))
    assert (st.future_events, st.too_late_events, st.duplicate_events) == (len(future), len(too_late), len(repeats))
    assert st.models_trained == len(models) and st.pushes == sum(1 for m in models.values() if m.pushed_version)
    assert st.controller.state == "not running"
    # Hostile input never failed a cycle; the controller went on cycling after the kills, and what serves is fresh.
    assert not cycle_lines(outs, "failed"), cycle_lines(outs, "failed")
    assert cycle_lines([outs[-2]]), "the controller started after the last kill ran no cycle"
    assert models[st.serving.model_id].newest_span >= state.last_span - 3, (
        f"serving model {st.serving.model_id} learned up to span {models[st.serving.model_id].newest_span}, "
        f"the stream up to {state.last_span}")
    last = cycles[-1]
    assert (st.last_cycle.spans, st.last_cycle.pushed_version, st.last_cycle.resumed) == (
        last["spans"], last["pushed_version"], last["resumed"])
    assert st.last_cycle.outcome in ("pushed", "rejected", "not pushed")
    # Nothing a killed run left is still on disk.
    assert retention.remove_unused_folders(config, store, dry_run=True) == ([], 0)
