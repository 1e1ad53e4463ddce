"""The YAML config file (issue #23): round trips, one message per bad value, and the CLI's --config / init.

Before, there was no config file: every command built `default_config(home)`, so `status` could not see
a pipeline with another name or serving folder. One TFX run in this file (a cheap ingest).
"""
import dataclasses
import json
import os
import re

import pytest
import yaml

from components.event_schema import EventSchema
from pipelines import cli
from pipelines.config import (
    BeamConfig, CloudConfig, ConfigError, ControllerConfig, DriftlineConfig, GateConfig, KafkaConfig, MetadataConfig,
    LatencyConfig, NumericTransform, PusherConfig, RetentionConfig, SourceConfig, TrainerConfig,
    TransformConfig, WindowConfig, default_config,
)
from pipelines.config import ServeConfig
from pipelines.config import OnlineEvalConfig
from pipelines.config_file import dump_config, init_text, load_config
from pipelines.music_simulator import music_schema
from pipelines.simulator import SimulatorConfig, simulate


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def every_section(home: str) -> DriftlineConfig:
    """A config in which every section and every top-level setting differs from the defaults."""
    return DriftlineConfig(
        pipeline_name="music-plays",
        home=home,
        source=SourceConfig(log_dir=os.path.join(home, "plays"), schema=music_schema(), chunk_bytes=1 << 16),
        window=WindowConfig(span_seconds=300, allowed_lateness_seconds=10, eval_fraction=0.25,
                            max_future_seconds=None, max_lateness_seconds=3600, dedup_horizon_runs=2),
        transform=TransformConfig(default_hash_buckets=64, numeric={
            "duration_s": NumericTransform(mode="bucketize", boundaries=(30.0, 120.0, 300.0))}),
        trainer=TrainerConfig(run_fn="pipelines.music_model.run_fn", cold_epochs=4, warm_epochs=1,
                              learning_rate_schedule="cosine", replay_spans=2, replay_fraction=0.5, seed=7,
                              model={"embedding_dim": 4, "hidden_units": 16}),
        gate=GateConfig(min_auc=0.62, max_log_loss=0.68, min_calibration=0.75, max_auc_drop=0.03,
                        slice_feature="genre", min_eval_examples=100, min_eval_positives=20),
        pusher=PusherConfig(serving_dir=os.path.join(home, "elsewhere"), keep_versions=2),
        latency=LatencyConfig(enabled=False, candidates_per_request=200, batch_sizes=(50, 200), slo_p99_ms=40.0),
        retention=RetentionConfig(keep_cycles=4, keep_all_pushed_models=True, dead_letter_keep_cycles=6),
        controller=ControllerConfig(retry_initial_seconds=1.5, retry_max_seconds=60.0, quarantine_after_failures=2),
        beam=BeamConfig(direct_num_workers=2, extra_args=("--direct_running_mode=multi_threading",)),
        cloud=CloudConfig(project="p", region="europe-west4", image="img:1", dataflow_packaging="setup_file",
                          beam_runner="DirectRunner", max_num_workers=3, subnetwork="sub"),
        metadata=MetadataConfig(kind="mysql", host="db.internal", port=3307, database="driftline", user="dl",
                                password_env="DL_DB_PASSWORD"),
        serve=ServeConfig(shadow=True, shadow_poll_seconds=2.5),
        online=OnlineEvalConfig(reward_field="converted", threshold=0.99, min_impressions=5000, prior_alpha=2.0,
                                prior_beta=18.0, max_latency_p99_ms=40.0, max_error_rate=0.01,
                                max_calibration_error=0.25),
    ).validate()


def kafka_config(home: str) -> DriftlineConfig:
    return default_config(home).replace(source=SourceConfig(kind="kafka", kafka=KafkaConfig(
        bootstrap_servers="b1:9092,b2:9092", topic="clicks", partitions=(0, 2), event_time="record_timestamp",
        client_config={"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"},
        secret_env={"sasl.password": "KAFKA_SASL_PASSWORD"}, secret_files={"ssl.key.pem": "/run/secrets/key"})))


def round_trip(config, tmp_path):
    return load_config(write(tmp_path / "c.yaml", dump_config(config)))


def test_default_config_round_trips(tmp_path):
    config = default_config(str(tmp_path / "home"))
    assert round_trip(config, tmp_path) == config


def test_a_config_touching_every_section_round_trips(tmp_path):
    config = every_section(str(tmp_path / "home"))
    default = default_config(DriftlineConfig().home)
    # The test's own premise: every field of DriftlineConfig is set away from its default (but `join`, which
    # changes what `source` must be: test_a_join_config_round_trips_and_its_source_defaults_to_the_impressions).
    assert [f.name for f in dataclasses.fields(DriftlineConfig)
            if getattr(config, f.name) == getattr(default, f.name)] == ["join"]
    assert round_trip(config, tmp_path) == config
    kafka = kafka_config(str(tmp_path / "home"))
    assert round_trip(kafka, tmp_path) == kafka


def test_the_starter_file_is_commented_and_reads_back_as_the_defaults(tmp_path):
    home = str(tmp_path / "home")
    text = init_text(home)
    assert load_config(write(tmp_path / "c.yaml", text)) == default_config(home)
    for section in ("source", "window", "transform", "trainer", "gate", "pusher", "latency", "retention",
                    "controller", "beam", "cloud"):
        assert f"\n# {section}: " in text and f"\n{section}:\n" in text


def test_a_partial_file_keeps_the_defaults_and_reads_the_schema_by_file(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "plays.json").write_text(music_schema().to_json())
    path = write(tmp_path / "c.yaml", f"""
pipeline_name: plays
home: {tmp_path / 'home'}
source:
  schema_file: schemas/plays.json
gate:
  slice_feature: genre
  max_log_loss: 0.68
trainer:
  run_fn: pipelines.music_model.run_fn
transform:
  numeric: {{}}
""")
    config = load_config(path)
    assert config.source.schema == music_schema()
    # A file that leaves log_dir out reads <home>/events, as --home alone does.
    assert config.source.log_dir == str(tmp_path / "home" / "events")
    assert config.gate == GateConfig(slice_feature="genre", max_log_loss=0.68)
    assert config.window == WindowConfig() and config.beam == BeamConfig()


BASE = "home: /tmp/h\n"


@pytest.mark.parametrize("text, expected", [
    # unknown key, at the top and inside a section: named, with the keys that are there
    (BASE + "window:\n  span_secs: 60\n", ["window.span_secs: unknown setting 'span_secs'", "span_seconds"]),
    (BASE + "gates:\n  min_auc: 0.7\n", ["gates: unknown setting 'gates'", "gate"]),
    (BASE + "source:\n  kafka:\n    bootstrap_servers: b:9092\n    topics: t\n",
     ["source.kafka.topics: unknown setting"]),
    (BASE + "transform:\n  numeric:\n    price: {mode: standardize, scale: 2}\n",
     ["transform.numeric.price.scale: unknown setting"]),
    # wrong type
    (BASE + "window:\n  span_seconds: ten minutes\n", ["window.span_seconds: Input should be a valid integer"]),
    (BASE + "latency:\n  batch_sizes: [100, many]\n", ["latency.batch_sizes[1]: Input should be a valid integer"]),
    (BASE + "retention:\n  enabled: sometimes\n", ["retention.enabled: Input should be a valid boolean"]),
    (BASE + "source: events/\n", ["source: Input should be"]),
    # bad values: validate()'s own messages, which name the setting and the fix
    (BASE + "window:\n  span_seconds: 0\n", ["window.span_seconds must be >= 1, got 0"]),
    (BASE + "gate:\n  slice_feature: country\n", ["gate.slice_feature 'country' is not a field of event schema"]),
    (BASE + "trainer:\n  run_fn: run_fn\n", ["trainer.run_fn must be a dotted path"]),
    (BASE + "pipeline_name: my pipeline\n", ["pipeline_name 'my pipeline' may hold only letters"]),
    (BASE + "beam:\n  runner: FlinkRunner\n",
     ["beam.runner must be one of ('DirectRunner', 'PortableRunner', 'DataflowRunner'), got 'FlinkRunner'"]),
    (BASE + "beam:\n  direct_num_workers: 0\n", ["beam.direct_num_workers must be an integer >= 1, got 0"]),
    (BASE + "metadata:\n  kind: postgres\n", ["metadata.kind must be one of ('sqlite', 'mysql'), got 'postgres'"]),
    (BASE + "metadata:\n  kind: mysql\n  database: d\n", ["metadata.user is empty"]),
    (BASE + "metadata:\n  password: hunter2\n", ["metadata.password: unknown setting", "password_env"]),
    (BASE + "source:\n  kind: kafka\n  log_dir: ''\n  kafka:\n    bootstrap_servers: b:9092\n    topic: t\n"
            "    client_config: {sasl.password: hunter2}\n",
     ["source.kafka.client_config sets ['sasl.password'], which hold secrets", "secret_env"]),
    # the event schema: its own message, under the setting
    (BASE + "source:\n  schema_file: no/such/schema.json\n",
     ["source.schema_file: cannot read the event schema file", "no/such/schema.json", "relative to the config file"]),
    (BASE + "source:\n  schema: {name: s, id_field: id, event_time_field: t, fields: []}\n",
     ["source.schema: event schema is missing the key 'label_field'"]),
    (BASE + "source:\n  schema: {}\n  schema_file: s.json\n", ["source.schema and source.schema_file are both set"]),
    ("home: [\n", ["not valid YAML"]),
])
def test_each_bad_value_gets_its_message(tmp_path, text, expected):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: "), message
    for part in expected:
        assert part in message, message


def test_a_missing_config_file_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read the config file .*driftline init --home DIR"):
        load_config(str(tmp_path / "nope.yaml"))


# -- the CLI ------------------------------------------------------------------------------------

def status_json(capsys, *args):
    capsys.readouterr()
    assert cli.main(["status", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_init_then_status_finds_the_pipeline_by_the_home_config(tmp_path, capsys):
    home = tmp_path / "home"
    assert cli.main(["init", "--home", str(home), "--log", str(tmp_path / "events")]) == 0
    path = home / "driftline.yaml"
    assert load_config(str(path)) == default_config(str(home), str(tmp_path / "events"))
    # Refuses to overwrite without --force.
    assert cli.main(["init", "--home", str(home)]) == 1
    assert "already exists" in capsys.readouterr().err
    text = path.read_text()
    edited = text.replace("pipeline_name: driftline", "pipeline_name: clicks").replace(
        "serving_dir: ''", f"serving_dir: {tmp_path / 'srv'}")
    assert edited.count("pipeline_name: clicks") == 1 and str(tmp_path / "srv") in edited
    path.write_text(edited)
    st = status_json(capsys, "--home", str(home))
    assert st["pipeline_name"] == "clicks"
    assert st["serving"]["serving_dir"] == str(tmp_path / "srv")
    assert st["metadata_exists"] is False
    # --config FILE names it from anywhere; --home given too overrides the file's home.
    assert status_json(capsys, "--config", str(path))["pipeline_name"] == "clicks"
    other = status_json(capsys, "--config", str(path), "--home", str(tmp_path / "other"))
    assert other["home"] == str(tmp_path / "other") and other["pipeline_name"] == "clicks"
    # --force writes the defaults again.
    assert cli.main(["init", "--home", str(home), "--force"]) == 0
    assert status_json(capsys, "--home", str(home))["pipeline_name"] == "driftline"


def test_a_bad_config_file_is_a_usage_error_naming_file_and_setting(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", "home: h\nwindow:\n  span_seconds: -5\n")
    for argv in (["ingest", "--config", path], ["status", "--config", path], ["gc", "--config", path],
                 ["lineage", "--config", path], ["rollback", "--config", path, "--to", "1"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{path}: window.span_seconds must be >= 1, got -5" in err, (argv, err)
    # A command needs a home from somewhere.
    assert cli.main(["status"]) == 2
    assert "--home DIR (or --config FILE" in capsys.readouterr().err


@pytest.mark.e2e
def test_ingest_with_a_config_file_persists_it_and_status_finds_the_pipeline(tmp_path, capsys):
    """The one TFX run here: `ingest --config FILE` (a flag overriding it), then `status --home` alone."""
    home = str(tmp_path / "home")
    config = default_config(home, str(tmp_path / "events")).replace(
        pipeline_name="clicks", pusher=PusherConfig(serving_dir=str(tmp_path / "srv")))
    simulate(config.source.log_dir, SimulatorConfig(minutes=3, events_per_minute=50, seed=5))
    path = write(tmp_path / "clicks.yaml", dump_config(config))
    assert not os.path.exists(os.path.join(home, "driftline.yaml"))
    assert cli.main(["ingest", "--config", path, "--span-seconds", "60"]) == 0
    # Persisted at the first run, with the flag given explicitly.
    persisted = load_config(os.path.join(home, "driftline.yaml"))
    assert persisted == config.replace(window=WindowConfig(span_seconds=60))
    st = status_json(capsys, "--home", home)
    assert st["pipeline_name"] == "clicks" and st["serving"]["serving_dir"] == str(tmp_path / "srv")
    # Three minutes of 60 s spans with 30 s of lateness: two have closed, recorded under "clicks".
    assert st["spans_ingested"] == 2 and st["events_ingested"] > 0
    # The home's file is written once: a later run with other flags does not rewrite it.
    before = open(os.path.join(home, "driftline.yaml")).read()
    assert cli.main(["ingest", "--home", home, "--span-seconds", "60", "--allowed-lateness-seconds", "40"]) == 0
    assert open(os.path.join(home, "driftline.yaml")).read() == before


def test_the_starter_file_is_valid_yaml_with_the_documented_sections(tmp_path):
    data = yaml.safe_load(init_text(str(tmp_path)))
    assert list(data) == ["pipeline_name", "home", "source", "window", "transform", "trainer", "gate", "pusher",
                          "latency", "retention", "controller", "beam", "cloud", "metadata", "serve", "online",
                          "join"]
    assert data["join"] is None  # the single-stream pipeline; the section documents the join
    assert EventSchema.from_dict(data["source"]["schema"]).name == "ad_clicks"


def test_an_old_gate_section_still_loads_and_the_deprecated_count_warns_naming_its_replacement():
    # min_eval_examples (#25): evidence is now the AUC interval's width; the key still reads, and warns.
    from pipelines.config_file import loads_config

    text = BASE + "gate:\n  min_eval_examples: 400\n  max_log_loss: null\n  max_auc_drop: 0.01\n"
    with pytest.warns(DeprecationWarning, match="max_auc_interval_width"):
        config = loads_config(text)
    assert config.gate.min_eval_examples == 400 and config.gate.max_log_loss is None
    assert config.gate.max_auc_drop == 0.01


def _join_file(tmp_path, extra: str = "", join_extra: str = "") -> str:
    from pipelines import two_streams

    (tmp_path / "outcomes.json").write_text(two_streams.outcomes_schema().to_json())
    return write(tmp_path / "join.yaml", f"""
home: {tmp_path / 'home'}
join:
  impressions:
    log_dir: {tmp_path / 'imp'}
    schema: {json.dumps(two_streams.impressions_schema().to_dict())}
  outcomes:
    log_dir: {tmp_path / 'out'}
    schema_file: outcomes.json
  attribution_window_seconds: 120
{join_extra}{extra}""")


def test_a_join_config_round_trips_and_its_source_defaults_to_the_impressions(tmp_path):
    from pipelines import two_streams

    config = load_config(_join_file(tmp_path))
    expected = two_streams.join_config(str(tmp_path / "imp"), str(tmp_path / "out"), attribution_window_seconds=120)
    assert config.join == expected
    # `source` left out: the impressions log, with the joined examples' schema (the label required).
    assert config.source.log_dir == str(tmp_path / "imp")
    label = config.source.schema.field_map[config.source.schema.label_field]
    assert label.required and config.source.schema.name == "ad_impressions"
    assert config == default_config(str(tmp_path / "home")).with_join(expected)
    assert round_trip(config, tmp_path) == config


@pytest.mark.parametrize("extra, join_extra, fix", [
    ("source:\n  log_dir: /elsewhere\n", "", "leave source.log_dir (and --log) out"),
    ("source:\n  log_dir: ''\n  kind: kafka\n  kafka: {bootstrap_servers: 'b:9092', topic: t}\n", "",
     "drop source.kafka and the --kafka-* flags"),
    ("", "  key: user_id\n", "set it to the outcome field holding the impression id"),
])
def test_a_join_config_that_conflicts_stops_naming_the_fix(tmp_path, extra, join_extra, fix):
    with pytest.raises(ConfigError, match=re.escape(fix)):
        load_config(_join_file(tmp_path, extra, join_extra))


def test_a_join_section_without_its_streams_names_them(tmp_path):
    path = write(tmp_path / "c.yaml", f"home: {tmp_path}\njoin:\n  attribution_window_seconds: 60\n")
    with pytest.raises(ConfigError, match="join.impressions is missing"):
        load_config(path)


def test_log_flag_conflicting_with_the_join_stops_the_cli(tmp_path, capsys):
    (tmp_path / "imp").mkdir()
    (tmp_path / "out").mkdir()
    assert cli.main(["run", "--config", _join_file(tmp_path), "--log", str(tmp_path / "other"), "--cycles", "1"]) == 2
    assert "is not the impressions log" in capsys.readouterr().err


def test_a_join_pipeline_does_not_compile_for_vertex(tmp_path):
    from pipelines.pipeline import VERTEX, create_pipeline

    config = load_config(_join_file(tmp_path))
    with pytest.raises(ConfigError, match="drop the join section to compile for Vertex"):
        create_pipeline(config, target=VERTEX)


def test_min_new_events_with_a_join_stops_the_cli_naming_the_fix(tmp_path, capsys):
    (tmp_path / "imp").mkdir()
    (tmp_path / "out").mkdir()
    assert cli.main(["run", "--config", _join_file(tmp_path), "--continuous", "--min-new-events", "10"]) == 2
    assert "drop --min-new-events" in capsys.readouterr().err
