"""ML Metadata on MySQL / MariaDB (`metadata.kind: mysql`): the errors a user meets, and the real thing.

The tests that need a server run against the MariaDB that scripts/mariadb.sh starts (`make mariadb`,
and .ci/run): they are skipped only when no server is described in the environment. Each one uses a
database of its own and drops it. The rest of the MLMD-heavy suite runs on MariaDB through
`--metadata mysql` (tests/conftest.py); these tests check what that switch cannot: a config file's own
`metadata` section, read by the CLI in a fresh process, and ML Metadata's MySQL schema itself.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from components.mlmd_store import MetadataUnavailable, open_store, store_exists
from conftest import REPO_ROOT, TEST_DATABASE_PREFIX, drop_databases, mysql_server_env
from mlmd_history import History
from pipelines.config import ConfigError, MetadataConfig

SERVER = mysql_server_env()
needs_server = pytest.mark.skipif(SERVER is None, reason="no MariaDB in the environment: "
                                                         "eval \"$(bash scripts/mariadb.sh)\" (make mariadb)")


@pytest.fixture
def database():
    """A fresh MySQL metadata target of its own; dropped afterwards."""
    name = TEST_DATABASE_PREFIX + "b" + uuid.uuid4().hex[:16]
    yield MetadataConfig(kind="mysql", database=name, **SERVER)
    drop_databases(SERVER, [name])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_mysql_target_without_its_password_names_the_variable(monkeypatch):
    monkeypatch.delenv("DL_TEST_DB_PASSWORD", raising=False)
    md = MetadataConfig(kind="mysql", database="d", user="u", password_env="DL_TEST_DB_PASSWORD")
    with pytest.raises(ConfigError, match=r"environment variable DL_TEST_DB_PASSWORD is not set: export it"):
        open_store(md)


def test_an_unreachable_server_is_a_clear_error_naming_it(monkeypatch):
    monkeypatch.setenv("DL_TEST_DB_PASSWORD", "pw")
    port = _closed_port()
    md = MetadataConfig(kind="mysql", port=port, database="d", user="u", password_env="DL_TEST_DB_PASSWORD")
    with pytest.raises(MetadataUnavailable, match=rf"cannot open ML Metadata on MySQL u@127.0.0.1:{port}/d: .*"
                                                  r"make mariadb"):
        open_store(md)


@needs_server
def test_epoch_millisecond_properties_survive_on_mysql(database):
    # ML Metadata's MySQL schema keeps int properties in 32-bit columns; driftline records epoch
    # milliseconds (pushed_at_ms, event times) and widens them. Nothing is created by asking first.
    assert store_exists(database) is False and store_exists(database) is False
    store = open_store(database)
    assert store_exists(database) is True
    type_id = store.put_artifact_type(pb.ArtifactType(name="PushedModel"))
    artifact = pb.Artifact(type_id=type_id, uri="/serving/1")
    artifact.custom_properties["pushed_at_ms"].int_value = 1_767_225_600_123
    artifact.custom_properties["offset"].int_value = -(1 << 62)
    [artifact_id] = store.put_artifacts([artifact])
    [back] = open_store(database).get_artifacts_by_id([artifact_id])  # a second connection reads it
    assert back.custom_properties["pushed_at_ms"].int_value == 1_767_225_600_123
    assert back.custom_properties["offset"].int_value == -(1 << 62)


@needs_server
def test_status_gc_and_rollback_read_a_mysql_pipeline_from_its_config_file(tmp_path, database):
    # Six cycles recorded in MariaDB, nothing in a SQLite file; the CLI, in a fresh process (no test
    # hook), finds them through the config file's metadata section alone.
    home = str(tmp_path / "home")
    h = History(home, keep_versions=3, metadata=database)
    for i in range(1, 7):
        h.cycle(blessed=(i != 3))
    config_path = tmp_path / "driftline.yaml"
    config_path.write_text(
        f"home: {home}\nretention:\n  keep_cycles: 2\nmetadata:\n  kind: mysql\n  host: {database.host}\n"
        f"  port: {database.port}\n  database: {database.database}\n  user: {database.user}\n"
        f"  password_env: {database.password_env}\n")

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args, "--config", str(config_path)],
                              cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    status = json.loads(cli("status", "--json"))
    assert status["metadata_exists"] is True
    assert (status["models_trained"], status["models_blessed"], status["pushes"]) == (6, 5, 5)
    assert not os.path.exists(os.path.join(home, "metadata.sqlite"))
    cli("rollback")
    status = json.loads(cli("status", "--json"))
    assert status["rollbacks"] == 1 and status["pushes"] == 5
    report = json.loads(cli("gc", "--json"))
    assert report["deleted"]["Model"] >= 1
    deleted = {a.id for a in open_store(database).get_artifacts() if a.state == pb.Artifact.DELETED}
    assert sorted(report["deleted_ids"]) == sorted(deleted)
    assert not os.path.exists(os.path.join(home, "metadata.sqlite"))
