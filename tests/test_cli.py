"""Misconfigurations stop with a message that names the fix, before any pipeline runs."""
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
