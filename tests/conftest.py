"""Shared test setup: the repository root is importable even without an editable install.

ML Metadata's back end for the tests is picked by `--metadata sqlite|mysql` (default: the environment
variable DRIFTLINE_TEST_METADATA, else sqlite). With `mysql`, every pipeline config whose metadata is the
default SQLite file resolves instead (`DriftlineConfig.metadata_connection`, the one place every open
of the store goes through) to a MySQL database of its own, named after that file, on the server that
`eval "$(bash scripts/mariadb.sh)"` describes (DRIFTLINE_MYSQL_HOST, _PORT, _USER, _PASSWORD). Only
tests that read ML Metadata through the config run meaningfully that way: `make test-mariadb` picks them
(retention, recovery, lineage, status, rollback, the controller's crash and restart). A Python process a
test starts keeps SQLite unless it calls `use_test_metadata()` first (the session exports its choice as
DRIFTLINE_TEST_METADATA): then its configs resolve to the same databases as the test's own.
"""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

TEST_DATABASE_PREFIX = "driftline_t_"


def pytest_addoption(parser):
    parser.addoption("--metadata", choices=("sqlite", "mysql"),
                     default=os.environ.get("DRIFTLINE_TEST_METADATA", "sqlite"),
                     help="ML Metadata back end of the tests (default: $DRIFTLINE_TEST_METADATA, else sqlite)")


def mysql_server_env():
    """The MariaDB that scripts/mariadb.sh started, from its exports; None when none is described."""
    names = ("DRIFTLINE_MYSQL_HOST", "DRIFTLINE_MYSQL_PORT", "DRIFTLINE_MYSQL_USER", "DRIFTLINE_MYSQL_PASSWORD")
    if not all(n in os.environ for n in names):
        return None
    return {"host": os.environ["DRIFTLINE_MYSQL_HOST"], "port": int(os.environ["DRIFTLINE_MYSQL_PORT"]),
            "user": os.environ["DRIFTLINE_MYSQL_USER"], "password_env": "DRIFTLINE_MYSQL_PASSWORD"}


def create_database(server, prefix: str) -> str:
    """A new, empty database on the server, named TEST_DATABASE_PREFIX + prefix + a random part; its name.
    Drop it with drop_databases."""
    import uuid

    import pymysql

    name = f"{TEST_DATABASE_PREFIX}{prefix}_{uuid.uuid4().hex[:12]}"
    connection = pymysql.connect(host=server["host"], port=server["port"], user=server["user"],
                                 password=os.environ[server["password_env"]])
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
    finally:
        connection.close()
    return name


def drop_databases(server, names) -> None:
    client = shutil.which("mariadb") or shutil.which("mysql")
    if not client or not names:
        return
    sql = "".join(f"DROP DATABASE IF EXISTS `{n}`;" for n in sorted(names))
    subprocess.run([client, "--no-defaults", "-h", server["host"], "-P", str(server["port"]), "-u", server["user"],
                    "-e", sql], env=dict(os.environ, MYSQL_PWD=os.environ[server["password_env"]]),
                   check=False, capture_output=True, timeout=60)


def _on_mysql(server, created: set) -> property:
    """DriftlineConfig.metadata_connection, with the default SQLite file replaced by a MySQL database named
    after it (the same name in every process, so a test and the processes it starts share it)."""
    from pipelines.config import DriftlineConfig, MetadataConfig

    resolve = DriftlineConfig.metadata_connection.fget

    def on_mysql(self):
        md = resolve(self)
        if md.kind != "sqlite":
            return md
        name = TEST_DATABASE_PREFIX + hashlib.sha1(os.path.abspath(md.path).encode()).hexdigest()[:20]
        created.add(name)
        return MetadataConfig(kind="mysql", database=name, **server)

    return property(on_mysql)


def use_test_metadata() -> None:
    """For a Python process a test started: resolve ML Metadata as the test's session does (MySQL when its
    back end is mysql, as DRIFTLINE_TEST_METADATA says; nothing to do on SQLite). The test drops the
    databases: it resolves the same configs itself."""
    if os.environ.get("DRIFTLINE_TEST_METADATA", "sqlite") != "mysql":
        return
    server = mysql_server_env()
    if server is None:
        raise RuntimeError("DRIFTLINE_TEST_METADATA=mysql but no DRIFTLINE_MYSQL_HOST, _PORT, _USER, _PASSWORD")
    from pipelines.config import DriftlineConfig

    DriftlineConfig.metadata_connection = _on_mysql(server, set())


@pytest.fixture(scope="session", autouse=True)
def metadata_backend(request):
    """'sqlite' or 'mysql': the back end every config's ML Metadata resolves to in this session."""
    kind = request.config.getoption("--metadata")
    if kind == "sqlite":
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DRIFTLINE_TEST_METADATA", kind)  # `--metadata sqlite` wins over the variable, in children too
            yield kind
        return
    server = mysql_server_env()
    if server is None:
        pytest.exit("--metadata mysql needs a server: run `eval \"$(bash scripts/mariadb.sh)\"` (or `make mariadb`) "
                    "first, which exports DRIFTLINE_MYSQL_HOST, _PORT, _USER and _PASSWORD", returncode=4)
    from pipelines.config import DriftlineConfig

    created = set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DriftlineConfig, "metadata_connection", _on_mysql(server, created))
        # `--metadata mysql` reaches the processes a test starts (use_test_metadata) as the variable would.
        mp.setenv("DRIFTLINE_TEST_METADATA", kind)
        yield kind
    drop_databases(server, created)


@pytest.fixture(scope="session")
def continuous_run(tmp_path_factory):
    """Five continuous-training cycles through TFX LocalDagRunner, shared by the e2e tests.

    The built-in drifting stream grows one span per cycle, with a poisoned
    span (labels flipped) in the middle and a change of feature set at the end:

    1. three spans, no base model: cold, blessed on absolute bounds, pushed as version 1;
    2. one span: warm from model 1, blessed against it, version 2;
    3. poisoned span: warm candidate refused by the gate, not pushed, serving stays on 2;
    4. one span: warm from model 2 (the latest *blessed*, not the rejected one), version 3;
       then `rollback` back to version 2's model, atomically and recorded in MLMD;
    5. the `device` field stops being a feature: cold start, with the reason recorded.

    Returns {"config", "reports" (CycleReport per cycle), "rolled", "before_rollback"}.
    """
    import dataclasses

    from components.event_schema import FieldSpec
    from pipelines.config import GateConfig, TrainerConfig, default_config
    from pipelines.local_runner import run_cycle
    from pipelines.simulator import SimulatorConfig, simulate

    home = str(tmp_path_factory.mktemp("home"))
    config = default_config(home).replace(
        # One warm pass at 0.003: the poisoned candidate then stays below the AUC bound (at the default
        # 0.005 it learns the flipped labels well enough that log loss and the label shift catch it).
        trainer=TrainerConfig(cold_epochs=2, warm_epochs=1, warm_learning_rate=0.003),
        # Mechanics, not model quality, are under test: bounds a sound model on
        # 1000 eval examples clears every time, and a flipped-label one never does.
        gate=GateConfig(min_auc=0.55, min_calibration=0.5, max_calibration=1.6, max_log_loss=0.6,
                        max_auc_drop=0.03, min_slice_auc=0.5, min_eval_examples=400, min_eval_positives=30))
    # Cycle 1 emits spans 0-2, each later cycle the next one: cycle 3 gets span 4, minutes 40-50.
    sim = SimulatorConfig(minutes=32, events_per_minute=500, seed=11, hot_ad_minute=45,
                          flip_labels_minutes=(40.0, 50.0))
    log = config.source.log_dir
    simulate(log, sim)
    reports = [run_cycle(config)]
    for _ in range(3):
        simulate(log, dataclasses.replace(sim, minutes=10), append=True)
        reports.append(run_cycle(config))

    from components.blessing_pusher import rollback, serving
    before_rollback = serving.versions(config.serving_dir)
    rolled = rollback.rollback_and_record(config.metadata_connection, config.pipeline_name, config.serving_dir)

    # Cycle 5: a new schema where `device` is carried but no longer a feature.
    fields = tuple(FieldSpec(f.name, f.type) if f.name == "device" else f for f in config.source.schema.fields)
    schema = dataclasses.replace(config.source.schema, fields=fields)
    changed = config.replace(source=dataclasses.replace(config.source, schema=schema))
    simulate(log, dataclasses.replace(sim, minutes=10), append=True)
    reports.append(run_cycle(changed))
    return {"config": config, "reports": reports, "rolled": rolled, "before_rollback": before_rollback}


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory):
    """The default model, untrained, exported with seeds 1, 2 and 3 over one real transform graph
    (tests/serve_helpers.py): shared by the `driftline serve` tests. {seed: SavedModel folder}."""
    from serve_helpers import export_models

    return export_models(str(tmp_path_factory.mktemp("serve_models")))
