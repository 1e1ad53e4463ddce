"""A changed config is recorded in ML Metadata with the cycle that first used it (issue 23).

Real SQLite ML Metadata and real config files; the pipeline runs are `pipeline_run` contexts made the way
TFX's LocalDagRunner makes them (one per run, named by the run id), so no TFX run is needed here:
tests/test_music_e2e.py records configs through real cycles.
"""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

GATE_LINE = "  max_log_loss: 0.6\n"


def _store(path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(config)


def _new_run(store, run_id):
    """What LocalDagRunner does first for a run: a `pipeline_run` context named by the run id."""
    from ml_metadata import errors
    from ml_metadata.proto import metadata_store_pb2

    try:
        type_id = store.get_context_type("pipeline_run").id
    except errors.NotFoundError:
        type_id = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
    [cid] = store.put_contexts([metadata_store_pb2.Context(type_id=type_id, name=run_id)])
    return store.get_contexts_by_id([cid])[0]


def _write_config(path, home, max_log_loss):
    with open(path, "w") as f:
        f.write(f"pipeline_name: music\nhome: {home}\ngate:\n  max_log_loss: {max_log_loss}\n  min_auc: 0.6\n")


@pytest.fixture
def home(tmp_path):
    return str(tmp_path / "home")


def test_same_config_twice_is_one_record_and_a_changed_gate_a_second_attributed_to_its_first_run(tmp_path, home,
                                                                                                  monkeypatch):
    from pipelines.config_file import load_config
    from pipelines.config_history import record_run_config, versions

    path = str(tmp_path / "music.yaml")
    _write_config(path, home, 0.6)
    config = load_config(path)
    store = _store(config.metadata_path)

    first = record_run_config(store, "music", config, _new_run(store, "run-1"), [10, 11, 12])
    # The same file read again, and the home spelled relatively: the same config, no new record.
    monkeypatch.chdir(tmp_path)
    _write_config(path, "home", 0.6)
    again = record_run_config(store, "music", load_config(path), _new_run(store, "run-2"), [13])
    assert first is not None and first.number == 1 and first.first_run == "run-1"
    assert first.first_spans == [10, 11, 12]
    assert again is None
    assert [v.hash for v in versions(store, "music")] == [first.hash]

    _write_config(path, home, 0.68)
    changed = record_run_config(store, "music", load_config(path), _new_run(store, "run-3"), [14])
    vs = versions(store, "music")
    assert [v.number for v in vs] == [1, 2] and changed == vs[1]
    assert changed.first_run == "run-3" and changed.first_spans == [14] and changed.hash != first.hash
    assert "max_log_loss: 0.68" in changed.text and "max_log_loss: 0.6\n" in first.text

    # Every run's context carries the hash of the config it ran with.
    runs = {c.name: c.custom_properties["config_hash"].string_value for c in store.get_contexts_by_type("pipeline_run")}
    assert runs == {"run-1": first.hash, "run-2": first.hash, "run-3": changed.hash}
    # The records are artifacts of the pipeline's context, the first-using run's context too.
    pipeline = store.get_context_by_type_and_name("pipeline", "music")
    assert sorted(a.id for a in store.get_artifacts_by_context(pipeline.id)) == [first.artifact_id, changed.artifact_id]
    run3 = store.get_context_by_type_and_name("pipeline_run", "run-3")
    assert [a.id for a in store.get_artifacts_by_context(run3.id)] == [changed.artifact_id]


def test_a_run_that_fails_is_still_recorded_after_it_ended_and_the_error_is_kept(home):
    from pipelines.config import default_config
    from pipelines.config_history import recorded, versions

    config = default_config(home)
    store = _store(config.metadata_path)
    _new_run(store, "an-older-run")  # not this run's: recorded() names the run made inside it
    with pytest.raises(RuntimeError, match="trainer failed"):
        with recorded(config):
            _new_run(store, "the-failing-run")
            assert versions(store, config.pipeline_name) == []  # nothing is claimed before the run ends
            raise RuntimeError("trainer failed")
    [v] = versions(store, config.pipeline_name)
    assert v.first_run == "the-failing-run" and v.first_spans == []


def test_a_run_that_never_started_records_nothing(home):
    from pipelines.config import default_config
    from pipelines.config_history import recorded, versions

    config = default_config(home)
    with pytest.raises(ValueError):
        with recorded(config):
            raise ValueError("the source could not be read")
    assert versions(_store(config.metadata_path), config.pipeline_name) == []


def test_config_history_status_and_lineage_show_which_run_first_used_each_version(tmp_path, home, capsys):
    from pipelines.cli import main
    from pipelines.config_file import load_config
    from pipelines.config_history import record_run_config

    path = str(tmp_path / "music.yaml")
    _write_config(path, home, 0.6)
    store = _store(load_config(path).metadata_path)
    record_run_config(store, "music", load_config(path), _new_run(store, "run-1"), [10, 11, 12])
    _write_config(path, home, 0.68)
    record_run_config(store, "music", load_config(path), _new_run(store, "run-2"), [13])
    del store

    assert main(["config-history", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "pipeline music: 2 config versions" in out
    assert "version 1 (sha256 " in out and "by run run-1 (spans 10..12)" in out
    assert "by run run-2 (spans 13)" in out
    assert "  gate.max_log_loss: 0.6 -> 0.68" in out
    # The unified diff names the key, both values.
    assert "-  max_log_loss: 0.6\n" in out and "+  max_log_loss: 0.68\n" in out
    assert out.count("\n-  ") == 1 and out.count("\n+  ") == 1  # nothing else changed

    assert main(["config-history", "--config", path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["first_run"] for v in data["versions"]] == ["run-1", "run-2"]
    assert data["versions"][1]["changed"] == ["gate.max_log_loss: 0.6 -> 0.68"]
    assert data["current_hash"] == data["versions"][1]["config_hash"]

    assert main(["status", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "config: 2 versions recorded" in out
    assert "by run run-2 (spans 13)  <- current" in out

    assert main(["lineage", "--config", path]) == 0
    assert "by run run-1 (spans 10..12)" in capsys.readouterr().out


def test_where_ml_metadata_lives_is_not_part_of_the_config_identity(tmp_path):
    # The record lives in that ML Metadata: moving it (SQLite to MySQL, another file) is the same pipeline.
    from pipelines.config import MetadataConfig, default_config
    from pipelines.config_history import canonical_text

    config = default_config(str(tmp_path / "h"))
    moved = config.replace(metadata=MetadataConfig(kind="mysql", host="db", database="d", user="u"))
    assert canonical_text(moved) == canonical_text(config) and "\nmetadata:" not in canonical_text(config)
    assert canonical_text(config.replace(gate=dataclasses.replace(config.gate, min_auc=0.7))) != canonical_text(config)


def test_how_the_server_runs_is_not_part_of_the_config_identity(tmp_path):
    # `serve` is read by `driftline serve`, never by a pipeline run: shadow scoring on is the same pipeline,
    # and homes recorded before the section existed keep their hash.
    from pipelines.config import default_config
    from pipelines.config_history import canonical_text
    from pipelines.serve.config import ServeConfig

    config = default_config(str(tmp_path / "h"))
    shadowed = config.replace(serve=ServeConfig(shadow=True, shadow_poll_seconds=3.0))
    assert canonical_text(shadowed) == canonical_text(config) and "\nserve:" not in canonical_text(config)
