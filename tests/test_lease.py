"""The pipeline's lease in the ML Metadata database (components/lease.py; issue #24), against a real MariaDB.

One holder at a time however many race for it; a holder that stops renewing (SIGKILL) loses it after
`lease_seconds`, and the next holder's fencing token is larger; the old holder's fence then refuses, so
a cycle started under a lost or expired lease publishes nothing, checked here through real TFX runs
(an ingest, a join, the LatencyValidator). Skipped, saying how to run them, when no MariaDB is described (`eval "$(make -s mariadb)"`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import create_database, drop_databases, mysql_server_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _on_mysql(metadata_backend):
    """Only in the MariaDB run (`make test-mariadb`): `make test` in CI has a server too, and need not pay twice."""
    if metadata_backend != "mysql":
        pytest.skip("the lease tests need ML Metadata on MySQL/MariaDB: `make test-mariadb`, or pytest --metadata mysql "
                    "after `eval \"$(make -s mariadb)\"` (exports DRIFTLINE_MYSQL_HOST, _PORT, _USER, _PASSWORD)")


@pytest.fixture
def md():
    """A MetadataConfig on a database of its own, dropped afterwards."""
    from components.metadata_config import MetadataConfig

    server = mysql_server_env()
    name = create_database(server, "lease")
    yield MetadataConfig(kind="mysql", database=name, **server)
    drop_databases(server, [name])


def test_one_holder_then_a_takeover_with_a_larger_token_fences_the_old_holder(md):
    from components import lease

    first = lease.try_acquire(md, "p", 1.5)
    with pytest.raises(lease.LeaseHeld) as held:
        lease.try_acquire(md, "p", 1.5)
    assert first.holder in str(held.value) and held.value.token == first.token
    # Another pipeline in the same database has its own lease.
    other = lease.try_acquire(md, "q", 1.5)
    first.fence("span 1")  # still the holder: allowed, and extended
    time.sleep(1.7)  # first stops renewing (a SIGKILLed or paused controller)
    second = lease.try_acquire(md, "p", 1.5)
    assert second.token > first.token
    with pytest.raises(lease.LeaseLost, match="span 2 not published.*now held by"):
        first.fence("span 2")
    assert not first.renew() and first.lost.is_set()
    second.fence("span 2")
    assert other.token == 1 and lease.read(md, "p").holder == second.holder


def test_a_cycle_started_under_a_lease_that_expired_does_not_publish(md):
    from components import lease

    mine = lease.try_acquire(md, "p", 0.5)
    time.sleep(0.7)  # expired, and nobody took it: still no publish
    with pytest.raises(lease.LeaseLost, match="expired"):
        mine.fence("span 7")
    # Released on a clean stop: the next controller takes over at once, with the next token.
    again = lease.try_acquire(md, "p", 30)
    again.release()
    t0 = time.monotonic()
    after = lease.try_acquire(md, "p", 30)
    assert time.monotonic() - t0 < 5 and after.token == again.token + 1


def test_the_first_lease_of_a_new_database_creates_it_as_ml_metadata_would(md):
    """A new pipeline's first controller takes the lease before anything opened ML Metadata, which creates
    its database on first open: the lease creates it too, instead of retrying "Unknown database" for ever."""
    import dataclasses

    from components import lease
    from components.mlmd_store import store_exists

    fresh = dataclasses.replace(md, database=md.database + "_new")
    try:
        assert store_exists(fresh) is False
        held = lease.try_acquire(fresh, "p", 30)
        assert held.token == 1 and lease.read(fresh, "p").holder == held.holder
        held.release()
    finally:
        drop_databases(mysql_server_env(), [fresh.database])


def test_many_racing_acquisitions_have_exactly_one_winner(md):
    from components import lease

    n = 8
    barrier = threading.Barrier(n)
    won, refused, errors = [], [], []

    def race():
        barrier.wait()
        try:
            won.append(lease.try_acquire(md, "p", 30))
        except lease.LeaseHeld:
            refused.append(1)
        except Exception as e:  # noqa: BLE001: reported by the assertion
            errors.append(e)

    threads = [threading.Thread(target=race) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(won) == 1 and len(refused) == n - 1, (won, refused, errors)
    assert lease.read(md, "p").token == won[0].token == 1


def test_misconfigurations_name_the_fix(md, tmp_path):
    from components import lease
    from components.metadata_config import MetadataConfig
    from pipelines.config import ConfigError, ControllerConfig

    with pytest.raises(ConfigError, match=r"metadata.kind: mysql.*home's lock file"):
        lease.try_acquire(MetadataConfig(kind="sqlite", path=str(tmp_path / "m.sqlite")), "p", 30)
    with pytest.raises(ConfigError, match="controller.lease_seconds must be > 0"):
        ControllerConfig(lease_seconds=0).validate()
    with pytest.raises(ConfigError, match="controller.lease_seconds must be > 0"):
        lease.try_acquire(md, "p", -1)


HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from pipelines.controller import pipeline_lock
from pipelines.config import DriftlineConfig, ControllerConfig
from components.metadata_config import MetadataConfig
md = MetadataConfig(kind="mysql", host={host!r}, port={port}, database={db!r}, user={user!r})
config = DriftlineConfig(pipeline_name="p", home=sys.argv[1], metadata=md,
                         controller=ControllerConfig(lease_seconds={seconds}))
with pipeline_lock(config) as held:
    print("TOKEN", held.token, flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_holder_is_replaced_after_its_lease_expires_and_a_live_one_is_waited_for(md, tmp_path):
    from components import lease
    from pipelines.config import ControllerConfig, DriftlineConfig
    from pipelines.controller import ControllerRunning, pipeline_lock

    seconds = 3.0
    code = HOLDER.format(repo=REPO, host=md.host, port=md.port, db=md.database, user=md.user, seconds=seconds)
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "home-a")], stdout=subprocess.PIPE,
                              text=True)
    try:
        line = holder.stdout.readline()
        assert line.startswith("TOKEN"), line
        token = int(line.split()[1])
        config = DriftlineConfig(pipeline_name="p", home=str(tmp_path / "home-b"), metadata=md,
                                 controller=ControllerConfig(lease_seconds=seconds))
        # A live holder renews in the background: a one-shot command is refused, naming it and the fix.
        time.sleep(seconds * 1.5)
        with pytest.raises(ControllerRunning, match="already holds pipeline 'p'.*Stop it first"):
            with pipeline_lock(config):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        killed_at = time.monotonic()
        stop = threading.Event()
        with pipeline_lock(config, stop=stop) as mine:  # standby, then takeover
            waited = time.monotonic() - killed_at
            assert mine is not None and mine.token == token + 1
            assert lease.current() is mine
            # Expiry at most `seconds` after the kill, standby polls every third of it; slack for a busy machine.
            assert waited <= seconds + 5, f"took over {waited:.1f} s after the kill"
            time.sleep(seconds * 1.5)  # longer than the lease: the heartbeat keeps it
            mine.fence("a span")
        assert lease.current() is None and lease.read(md, "p").seconds_left <= 0  # released on leaving
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@pytest.mark.e2e
def test_an_ingest_run_under_a_lost_lease_publishes_nothing(md, tmp_path):
    """The fence inside StreamingExampleGen's executor, through a real TFX run on MariaDB."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    import ingest_helpers as H
    from components import lease
    from pipelines.config import DriftlineConfig, SourceConfig, WindowConfig
    from pipelines.local_runner import run_ingest
    from pipelines.metadata import open_store

    config = DriftlineConfig(pipeline_name="fenced", home=str(tmp_path / "home"), metadata=md,
                             source=SourceConfig(log_dir=str(tmp_path / "events")),
                             window=WindowConfig(span_seconds=600, allowed_lateness_seconds=60))
    H.SyntheticLog(config.source.log_dir, seed=5).append(H.BASE_MS, minutes=25, per_minute=60)
    stale = lease.try_acquire(md, "fenced", 0.5)
    time.sleep(0.7)
    # Another controller took over meanwhile (long enough for a slow run: nothing renews it here).
    successor = lease.try_acquire(md, "fenced", 600)
    with lease.held(stale), pytest.raises(Exception) as refused:
        run_ingest(config)
    assert "not published" in str(refused.value) and f"token {successor.token}" in str(refused.value)
    store = open_store(config.metadata_connection)
    assert [a for a in store.get_artifacts_by_type("Examples") if a.state == pb.Artifact.LIVE] == []
    # The holder of the lease publishes.
    with lease.held(successor):
        run_ingest(config)
    assert len([a for a in store.get_artifacts_by_type("Examples") if a.state == pb.Artifact.LIVE]) == 2


@pytest.mark.e2e
def test_a_join_run_under_a_lost_lease_publishes_nothing(md, tmp_path):
    """The fence inside JoinExampleGen's executor (join mode), through a real TFX run on MariaDB."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from components import lease
    from join_helpers import simulated_join_pipeline
    from pipelines.local_runner import run_ingest
    from pipelines.metadata import open_store

    config = simulated_join_pipeline(str(tmp_path), "fenced-join", metadata=md)
    stale = lease.try_acquire(md, "fenced-join", 0.5)
    time.sleep(0.7)
    successor = lease.try_acquire(md, "fenced-join", 600)
    with lease.held(stale), pytest.raises(Exception) as refused:
        run_ingest(config)
    assert "JoinExampleGen's spans" in str(refused.value) and "not published" in str(refused.value)
    store = open_store(config.metadata_connection)
    assert [a for a in store.get_artifacts_by_type("Examples") if a.state == pb.Artifact.LIVE] == []
    with lease.held(successor):
        run_ingest(config)
    assert [a for a in store.get_artifacts_by_type("Examples") if a.state == pb.Artifact.LIVE]


@pytest.mark.e2e
def test_a_latency_verdict_under_a_lost_lease_is_not_published(md, tmp_path):
    """The fence inside the LatencyValidator's executor, through a real TFX run on MariaDB: a holder that lost
    the lease records no InfraBlessing (and so its pusher never runs); the current holder's verdict is recorded."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    import test_latency_validator as latency
    from components import lease
    from components.mlmd_store import connection_config
    from pipelines.config import LatencyConfig
    from pipelines.metadata import open_store
    import latency_helpers

    root = tmp_path / "artifacts"
    examples = str(root / "examples" / "span-3")
    latency_helpers.write_eval_examples(examples, minutes=1)
    transform_graph = latency_helpers.write_transform_graph(str(root / "transform_graph"))
    artifacts = {"examples": examples, "transform_graph": transform_graph,
                 "model": latency_helpers.write_model(str(root / "model"), transform_graph)}
    config = LatencyConfig(slo_p99_ms=10_000.0, batch_sizes=(10,), candidates_per_request=10,
                           seconds_per_batch_size=0.2, distinct_requests=2, stage_repeats=1)
    store = open_store(md)  # creates the schema (and widens its int columns) as every driftline open does
    home = str(tmp_path / "home")

    def run() -> None:
        latency.run_pipeline(home, artifacts, "model", {"blessed": 1, "reason": "blessed"}, config,
                             connection=connection_config(md))

    stale = lease.try_acquire(md, latency.PIPELINE, 0.5)
    time.sleep(0.7)
    successor = lease.try_acquire(md, latency.PIPELINE, 600)
    with lease.held(stale), pytest.raises(Exception) as refused:
        run()
    assert "LatencyValidator's verdict" in str(refused.value) and "not published" in str(refused.value)
    assert f"token {successor.token}" in str(refused.value)
    assert [a for a in store.get_artifacts_by_type("InfraBlessing") if a.state == pb.Artifact.LIVE] == []
    assert not os.path.isdir(os.path.join(home, "serving")) or not os.listdir(os.path.join(home, "serving"))
    # The holder of the lease publishes its verdict, and the pusher acts on it.
    with lease.held(successor):
        run()
    blessings = [a for a in store.get_artifacts_by_type("InfraBlessing") if a.state == pb.Artifact.LIVE]
    assert [a.custom_properties["blessed"].int_value for a in blessings] == [1]


def test_a_command_on_another_machines_pipeline_is_refused_naming_the_holder(md, tmp_path):
    """`driftline gc` in a fresh process, on its own home, while a controller elsewhere holds the pipeline."""
    import json

    from components import lease

    config_path = tmp_path / "driftline.yaml"
    config_path.write_text(
        f"pipeline_name: shared\nhome: {tmp_path / 'home'}\nmetadata:\n  kind: mysql\n  host: {md.host}\n"
        f"  port: {md.port}\n  database: {md.database}\n  user: {md.user}\n  password_env: {md.password_env}\n")
    elsewhere = lease.try_acquire(md, "shared", 60, holder="other-machine:4242:abcd1234")

    def gc():
        return subprocess.run([sys.executable, "-m", "pipelines.cli", "gc", "--json", "--config", str(config_path)],
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                              timeout=300)

    refused = gc()
    assert refused.returncode != 0
    assert "already holds pipeline 'shared'" in refused.stderr and "other-machine:4242" in refused.stderr, \
        refused.stderr[-2000:]
    elsewhere.release()
    done = gc()
    assert done.returncode == 0, done.stderr[-2000:]
    json.loads(done.stdout)
    # The command held the lease while it ran (the next token), and released it on exit.
    state = lease.read(md, "shared")
    assert state.token == elsewhere.token + 1 and state.seconds_left <= 0
