"""Racing controllers (issue #24): two controllers, one pipeline, one MariaDB, one event log, SIGKILLed at random.

Two real controllers (`run_continuous`: TFX LocalDagRunner, Beam, retention on), as two processes with
separate homes, run the same pipeline: the same ML Metadata database on MariaDB, the same event log (a
live `driftline simulate` appending to it, malformed and late lines among them) and one serving folder.
They start together; for DRIFTLINE_RACE_SECONDS (default 75; set it higher for a longer local run) each
is SIGKILLed at seeded random moments, mostly the one holding the lease (read from the lease row), and
restarted after a random pause, so the other one keeps waiting on standby and taking over. Then the
stream stops, a last controller runs until nothing is due, and one more finds nothing to do. The audit:

* every event the log holds before the committed position, valid and in a closed span, is in exactly one
  published span (read back from the TFRecords), every malformed line in one dead-letter file;
* no span published twice, none trained twice: every published span was trained as a new span by exactly
  one model the gate judged;
* no two pushes of the same model, no version pushed twice;
* the serving folder is what ML Metadata recorded: each version one recorded push, with its model's files;
  `driftline status` serves the newest;
* the lease went round: both controllers held it, its fencing token grew with each holding, and every
  paused holder found on waking that it had lost it.

What it does not cover: two machines (both processes share this host's clock and file system, and the
kernel closes their MySQL connections on SIGKILL), a pause that lands exactly between a fence and ML
Metadata's write (milliseconds: the one window a fence by check leaves), or MariaDB itself failing;
tests/test_lease.py checks the fence directly.

Skipped, saying how to run it, when no MariaDB is described (`eval "$(make -s mariadb)"`).
"""
from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

import ingest_helpers as H
import test_controller_crash as crash
from conftest import create_database, drop_databases, mysql_server_env

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
SEED = 20261205
LEASE_SECONDS = 4.0
RACE_SECONDS = float(os.environ.get("DRIFTLINE_RACE_SECONDS", "75"))


@pytest.fixture(autouse=True)
def _on_mysql(metadata_backend):
    """Only in the MariaDB run (`make test-mariadb`): `make test` in CI has a server too, and need not pay twice."""
    if metadata_backend != "mysql":
        pytest.skip("the racing controllers need ML Metadata on MySQL/MariaDB: `make test-mariadb`, or pytest --metadata mysql "
                    "after `eval \"$(make -s mariadb)\"` (exports DRIFTLINE_MYSQL_HOST, _PORT, _USER, _PASSWORD)")


def race_config(home: str, log_dir: str, database: str, serving_dir: str):
    from components.blessing_pusher.config import PusherConfig
    from components.metadata_config import MetadataConfig
    from pipelines.config import ControllerConfig

    server = mysql_server_env()
    return crash.controller_config(home, log_dir).replace(
        metadata=MetadataConfig(kind="mysql", database=database, **server),
        pusher=PusherConfig(serving_dir=serving_dir, keep_versions=1000),
        # Short, so a SIGKILLed holder's successor takes over within seconds; quick retries.
        controller=ControllerConfig(lease_seconds=LEASE_SECONDS, retry_initial_seconds=1.0,
                                    retry_max_seconds=5.0)).validate()


def server_main(home: str, log_dir: str, database: str, serving_dir: str) -> None:
    """test_controller_crash's fork server, for a controller on the shared database and serving folder."""
    crash.fork_server(lambda: race_config(home, log_dir, database, serving_dir))


class Server(crash.Server):
    def __init__(self, home: str, log_dir: str, database: str, serving_dir: str, stderr_path: str):
        code = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r); import test_racing_controllers as t; "
                "t.server_main(*sys.argv[1:])" % (REPO, TESTS))
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", code, home, log_dir, database, serving_dir], cwd=REPO,
                                     text=True, bufsize=1, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self.ready_line = self.proc.stdout.readline().strip()


CYCLE_START = re.compile(r" driftline\.controller: cycle \d+: (?!spans \[)")
CONTROLLER_LINE = re.compile(r" driftline\.controller: ")


def in_cycle(err_path: str) -> bool:
    """Whether the controller writing `err_path` is in a cycle: its last line is a cycle's start."""
    try:
        with open(err_path) as f:
            lines = [line for line in f if CONTROLLER_LINE.search(line)]
    except FileNotFoundError:
        return False
    return bool(lines) and bool(CYCLE_START.search(lines[-1]))


def lease_holder_pid(md, pipeline: str):
    from components import lease

    try:
        state = lease.read(md, pipeline)
    except Exception:  # noqa: BLE001: the table may not exist yet
        return None
    if state is None or state.seconds_left <= 0:
        return None
    return int(state.holder.split(":")[-2])  # host:pid:random


@pytest.fixture
def database():
    """The shared ML Metadata database of the two controllers, dropped afterwards."""
    server = mysql_server_env()
    name = create_database(server, "race")
    yield name
    drop_databases(server, [name])


@pytest.mark.e2e
def test_two_controllers_killed_at_random_share_one_pipeline_safely(tmp_path, database):
    from ml_metadata.proto import metadata_store_pb2 as pb

    rng = random.Random(SEED)
    log_dir, serving_dir, logs = str(tmp_path / "events"), str(tmp_path / "serving"), tmp_path / "logs"
    logs.mkdir()
    homes = {name: str(tmp_path / f"home-{name}") for name in ("a", "b")}
    configs = {name: race_config(home, log_dir, database, serving_dir) for name, home in homes.items()}
    config = configs["a"]
    md = config.metadata_connection
    t0 = time.monotonic()
    sim = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "simulate", "--log", log_dir, "--live",
                            "--events-per-minute", str(crash.EVENTS_PER_MINUTE), "--seed", "5",
                            "--bad-fraction", "0.003", "--no-hot-ad"], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=open(logs / "simulate.err", "wb"))
    servers, pids, outs, errs, history = {}, {}, [], {"a": [], "b": []}, []
    try:
        for name in ("a", "b"):  # both import TFX at once, on the same cores, as two machines would start
            servers[name] = Server(homes[name], log_dir, database, serving_dir, str(logs / f"server-{name}.err"))
        for name, server in servers.items():
            assert server.ready_line == "READY", H.tail(str(logs / f"server-{name}.err"))
        runs = collections.Counter()

        def start(name: str, until_idle: bool = False) -> None:
            runs[name] += 1
            out, err = str(logs / f"{name}{runs[name]}.out"), str(logs / f"{name}{runs[name]}.err")
            outs.append(out)
            errs[name].append(err)
            pids[name] = servers[name].start(out, err, until_idle)

        def kill(name: str, why: str) -> None:
            assert H.alive(pids[name]), f"controller {name} exited on its own:\n{H.tail(errs[name][-1])}"
            os.kill(pids[name], signal.SIGKILL)
            code = servers[name].wait(pids.pop(name))
            assert code == -signal.SIGKILL, f"{name} exited {code} before the kill:\n{H.tail(errs[name][-1])}"
            history.append((name, why, round(time.monotonic() - t0, 1)))

        start("a")
        start("b")
        race_start = time.monotonic()
        restart_at, paused, events, into_cycle = {}, {}, 0, None
        # The first cycle (cold, and the first in each process) takes longest: the first event lands in it.
        next_kill = race_start + rng.uniform(10, 25)
        while time.monotonic() - race_start < RACE_SECONDS:
            now = time.monotonic()
            for name, at in list(restart_at.items()):
                if now >= at:
                    start(name)
                    del restart_at[name]
            for name, until in list(paused.items()):
                if now >= until:  # it wakes up believing it holds the lease: its next renewal or fence says no
                    os.kill(pids[name], signal.SIGCONT)
                    del paused[name]
                    history.append((name, "resumed", round(now - t0, 1)))
            for name, pid in pids.items():
                assert H.alive(pid), f"controller {name} exited on its own:\n{H.tail(errs[name][-1])}"
            if now >= next_kill and pids and not paused:
                holder = lease_holder_pid(md, config.pipeline_name)
                holding = [n for n, p in pids.items() if p == holder]
                # Into a cycle of the holder's (a random moment of it), unless none starts within 40 s.
                cycling = bool(holding) and in_cycle(errs[holding[0]][-1])
                if holding and now < next_kill + 40 and not cycling:
                    into_cycle = None  # not yet in one, or the one it was in ended first: wait for the next
                    time.sleep(0.05)
                    continue
                if cycling and into_cycle is None:
                    # Well inside a warm cycle (5-15 s here): a later moment often finds it over.
                    into_cycle = now + rng.uniform(0.3, 3.0)
                if into_cycle is not None and now < into_cycle:
                    time.sleep(0.05)
                    continue
                into_cycle = None
                others = [n for n in pids if n not in holding]
                what = rng.random()
                time_left = RACE_SECONDS - (now - race_start)
                events += 1
                # The second event is a pause (then one in four), when there is a holder, someone to take
                # over, and time left for the paused one to wake and find out.
                pause_now = events == 2 or what < 0.25
                if holding and others and pause_now and time_left > 4 * LEASE_SECONDS + 5:
                    # A holder that stalls (SIGSTOP: a long pause, a frozen VM) past its lease while the other
                    # takes over, then goes on: what fencing is for.
                    name = holding[0]
                    os.kill(pids[name], signal.SIGSTOP)
                    pause = LEASE_SECONDS + rng.uniform(1.0, 3.0)
                    paused[name] = time.monotonic() + pause
                    history.append((name, f"paused {pause:.1f} s holding the lease", round(now - t0, 1)))
                    next_kill = paused[name] + 2 * LEASE_SECONDS + rng.uniform(5, 15)
                    continue
                # Mostly the holder (in a cycle or between two), sometimes the one on standby.
                victim = holding[0] if holding and what < 0.8 else rng.choice(sorted(pids))
                kill(victim, "holding the lease" if victim in holding else "on standby or starting")
                restart_at[victim] = time.monotonic() + rng.uniform(0.0, 3.0)
                # Often enough to land in cycles, seldom enough that the survivor completes one (its first cycle
                # in a fresh process takes 20-30 s here) between two kills.
                next_kill = time.monotonic() + rng.uniform(25, 45)
            time.sleep(0.05)
        for name in paused:
            os.kill(pids[name], signal.SIGCONT)
        for name in sorted(pids):
            kill(name, "end of the race")
        # The stream stops; a last controller finishes what is due, another then finds nothing to do.
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=60) == 0, H.tail(str(logs / "simulate.err"))
        for name in ("a", "b"):
            start(name, until_idle=True)
            code = servers[name].wait(pids.pop(name))
            assert code == 0, f"{name}:\n{H.tail(errs[name][-1])}"
            history.append((name, "ran until idle", round(time.monotonic() - t0, 1)))
        assert not crash.cycle_lines([outs[-1]]), "a controller right after the last one must find nothing to do"
    finally:
        for name, pid in list(pids.items()):
            os.kill(pid, signal.SIGKILL)
            servers[name].wait(pid)
        for server in servers.values():
            server.close()
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    audit(configs, outs, errs, history, log_dir, serving_dir, t0, pb)


def audit(configs, outs, errs, history, log_dir, serving_dir, t0, pb) -> None:
    from components import lease
    from components.blessing_pusher import serving as serving_lib
    from components.event_log import Position
    from components.event_schema import InvalidEvent
    from components.streaming_example_gen import windowing
    from components.streaming_example_gen.committed_state import latest_committed_state
    from components.warm_start_trainer.quarantine import has_key
    from pipelines import lineage
    from pipelines.metadata import open_store
    from pipelines.recovery import model_serving_dir, same_tree, untrained_spans

    config = configs["a"]
    md = config.metadata_connection
    cycles = crash.cycle_lines(outs)
    print(f"\n{len(cycles)} cycles in {time.monotonic() - t0:.0f} s; kills and runs: {history}")
    text = {name: "".join(open(p).read() for p in paths if os.path.exists(p)) for name, paths in errs.items()}
    held = {name: t.count("driftline.controller: holding the lease") for name, t in text.items()}
    standby = {name: t.count("driftline.controller: standby:") for name, t in text.items()}
    lost = {name: t.count("lease lost") for name, t in text.items()}
    state = lease.read(md, config.pipeline_name)
    print(f"lease holdings {held}, standby waits {standby}, leases lost {lost}; "
          f"last token {state.token if state else None}")
    assert cycles, "no cycle ran"

    store = open_store(md)
    executions = store.get_executions()
    states = collections.Counter(pb.Execution.State.Name(e.last_known_state) for e in executions)
    assert not states["RUNNING"] and not states["NEW"], states
    # Recovery marks what a kill or a pause interrupted CANCELED; an unfenced component (Transform) of a paused
    # holder may still finish afterwards and overwrite that state, so the controllers' lines are the record.
    interrupted = sum(t.count("recovery: marked interrupted executions CANCELED") for t in text.values())
    assert interrupted >= 1 or states["CANCELED"] >= 1, \
        f"no kill or pause interrupted an execution: the proof is vacuous ({states})"
    print(f"executions: {dict(states)}")

    # ---- every event in exactly one span ---------------------------------------------------------------------
    published = H.published_spans(md, config.pipeline_name)
    spans = [p.span for p in published]
    assert published and len(spans) == len(set(spans)), f"a span was published twice: {sorted(spans)}"
    assert sorted(spans) == list(range(min(spans), max(spans) + 1))
    assert untrained_spans(store, config.pipeline_name) == []
    committed, _ = latest_committed_state(store, config.pipeline_name, "StreamingExampleGen")
    window = windowing.Window(config.window.span_ms, config.window.allowed_lateness_ms, config.window.eval_fraction)
    lines, _ = H.scan_log(log_dir)
    schema = config.source.schema
    seen = collections.Counter(e for p in published for e in p.all_ids)
    expected, bad, first_at, repeats = set(), {}, {}, {}
    for ln in lines:
        where = (ln.segment, ln.offset)
        if not Position(ln.segment, ln.offset) < committed.end:
            continue
        try:
            event = schema.parse(ln.line)
        except InvalidEvent:
            bad[where] = ln.line
            continue
        if window.span_of(event["event_time"]) <= committed.last_span:
            if event["event_id"] in first_at:
                repeats[where] = event["event_id"]
            else:
                first_at[event["event_id"]] = where
                expected.add(event["event_id"])
    assert not [e for e, k in seen.items() if k > 1], "an event is in two spans"
    assert set(seen) == expected, (f"{len(expected - set(seen))} events missing, "
                                   f"{len(set(seen) - expected)} unexpected")
    rows = [r for p in published for r in p.dead_letters]
    assert sorted((r["segment"], r["offset"]) for r in rows) == sorted(bad), "malformed lines not each in one file"
    print(f"audited {len(lines)} lines: {len(expected)} events in {len(published)} spans, {len(bad)} malformed")

    # ---- no span trained twice -----------------------------------------------------------------------------
    models = {m.model_id: m for m in lineage.models(store, config.pipeline_name)}
    trained = collections.Counter()
    for execution in executions:
        events = store.get_events_by_execution_ids([execution.id])
        out = [e.artifact_id for e in events if e.type == pb.Event.OUTPUT and has_key(e, "model")]
        if execution.last_known_state == pb.Execution.COMPLETE and out and models.get(out[0]) is not None \
                and models[out[0]].blessed is not None:
            trained.update(e.artifact_id for e in events if e.type == pb.Event.INPUT and has_key(e, "examples"))
    assert {p.artifact.id: trained[p.artifact.id] for p in published} == {p.artifact.id: 1 for p in published}

    # ---- no two pushes of the same model; serving is what ML Metadata recorded ----------------------------
    pushes = [a for a in store.get_artifacts_by_type("PushedModel") if a.custom_properties["pushed"].int_value == 1]
    by_model = collections.Counter(a.custom_properties["model_id"].int_value for a in pushes)
    by_version = collections.Counter(a.custom_properties["pushed_version"].string_value for a in pushes)
    assert not [m for m, k in by_model.items() if k > 1], f"a model was pushed twice: {by_model}"
    assert not [v for v, k in by_version.items() if k > 1], f"a version was pushed twice: {by_version}"
    found = crash.versions(serving_dir)
    assert found and sorted(by_version) == sorted(map(str, found)), (sorted(by_version), found)
    for v in found:
        [push] = [a for a in pushes if a.custom_properties["pushed_version"].string_value == str(v)]
        model = models[push.custom_properties["model_id"].int_value]
        assert same_tree(model_serving_dir(model.uri), serving_lib.version_dir(serving_dir, v))
    for name, cfg in configs.items():
        st = lineage.status(cfg)
        assert st.serving.version == found[-1] and st.spans_ingested == len(published), name
        assert st.controller.state == "not running"
    crash.Serving(serving_dir).check("at the end")

    # ---- the race was a race ------------------------------------------------------------------------------
    # Both held the pipeline, each waited for the other, the token counted every holding (each logs once,
    # unless killed between taking the lease and the line).
    assert state is not None and all(held.values()) and all(standby.values()), (held, standby)
    assert state.token >= sum(held.values()) >= 3, (state.token, held)
    # A holder paused past its lease learned on waking that it had lost it (and published nothing more: above).
    pauses = [h for h in history if h[1] == "resumed"]
    assert sum(lost.values()) >= len(pauses), (lost, pauses)
    assert not crash.cycle_lines(outs, "failed"), crash.cycle_lines(outs, "failed")
