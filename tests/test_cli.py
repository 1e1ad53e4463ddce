"""Misconfigurations stop with a message that names the fix, before any pipeline runs."""
import os

import pytest

from pipelines import cli


def test_run_without_an_event_log_names_the_fix(tmp_path, capsys):
    assert cli.main(["run", "--home", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "event log folder" in err and "does not exist" in err and "driftline simulate --log" in err
    assert not (tmp_path / "metadata.sqlite").exists()  # nothing was recorded


def test_rollback_with_nothing_pushed_changes_nothing(tmp_path, capsys):
    (tmp_path / "serving").mkdir()
    assert cli.main(["rollback", "--home", str(tmp_path), "--to", "3"]) == 1
    err = capsys.readouterr().err
    assert "no model versions" in err and "nothing to roll back" in err
    assert list((tmp_path / "serving").iterdir()) == []


def test_bad_window_setting_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["ingest", "--home", str(tmp_path), "--span-seconds", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_demo_refuses_to_delete_a_folder_it_did_not_create(tmp_path, capsys):
    precious = tmp_path / "my_work"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert cli.main(["demo", "--home", str(precious), "--cycles", "1"]) == 1
    err = capsys.readouterr().err
    assert "did not create" in err and "--force" in err
    assert (precious / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert cli.main(["demo", "--home", str(a_file), "--cycles", "1"]) == 1
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "keep me"
    assert cli.build_parser().parse_args(["demo", "--home", str(precious), "--force"]).force


def test_demo_replaces_its_own_home_and_force_replaces_any(tmp_path):
    from pipelines.demo import MARKER_FILE, is_demo_home, prepare_home

    home = tmp_path / "demo_home"
    prepare_home(str(home), progress=lambda m: None)  # a new home: created and marked
    assert is_demo_home(str(home)) and os.listdir(home) == [MARKER_FILE]
    (home / "metadata.sqlite").write_text("a previous demo's state")
    prepare_home(str(home), progress=lambda m: None)  # `make demo` again: its own home is replaced
    assert os.listdir(home) == [MARKER_FILE]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_home(str(empty), progress=lambda m: None)  # an empty folder loses nothing: used as it is
    assert is_demo_home(str(empty))
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    (other / MARKER_FILE).write_text("not the demo's marker")
    with pytest.raises(Exception, match="--force"):
        prepare_home(str(other), progress=lambda m: None)
    prepare_home(str(other), force=True, progress=lambda m: None)
    assert os.listdir(other) == [MARKER_FILE] and is_demo_home(str(other))
