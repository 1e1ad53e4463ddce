"""Online-evaluation decisions in a real SQLite ML Metadata store: recorded, rebuilt after a restart, shown
by `status` / `lineage`, and overridden by `driftline promote` / `retire`."""
import json
import os

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from components.mlmd_vocabulary import ONLINE_DECISION_TYPE
from components.online_evaluator import record
from components.online_evaluator.decision import Counts, DecisionRule
from pipelines import cli
from pipelines.config import default_config
from pipelines.metadata import open_store
from mlmd_history import History

RULE = DecisionRule(threshold=0.95, min_impressions=1000)


@pytest.fixture
def history(tmp_path):
    h = History(str(tmp_path / "home"))
    h.cycle()  # model 1 pushed: the champion (serving version 1)
    h.cycle(push=False)  # blessed, not pushed: a challenger
    h.cycle(push=False)  # a newer candidate
    return h


def _models(h):
    return [c["model"] for c in h.cycles]


def _reopen(h):
    return open_store(default_config(h.home).metadata_connection)


def test_decisions_accumulate_and_a_restart_rebuilds_the_comparison(history):
    champion, challenger, _ = _models(history)
    store = history.store
    started = record.start(store, "driftline", champion, challenger, RULE)
    assert (started.action, started.rule) == ("start", "new_comparison")
    d1 = record.update_and_decide(store, "driftline", Counts(40, 400), Counts(50, 400), RULE)
    assert (d1.action, d1.rule) == ("continue", "min_impressions")
    # A restart: a new connection, nothing in memory; the evidence is what ML Metadata holds.
    rebuilt = record.open_comparison(_reopen(history), "driftline")
    assert (rebuilt.champion, rebuilt.challenger) == (Counts(40, 400), Counts(50, 400))
    assert (rebuilt.champion_model_id, rebuilt.challenger_model_id) == (champion, challenger)
    d2 = record.update_and_decide(_reopen(history), "driftline", Counts(60, 600), Counts(110, 600), RULE)
    assert (d2.champion, d2.challenger) == (Counts(100, 1000), Counts(160, 1000))
    assert (d2.action, d2.rule) == ("promote", "p_better") and d2.p_better > 0.999

    executions = store.get_executions_by_type(ONLINE_DECISION_TYPE)
    assert [e.properties["action"].string_value for e in executions] == ["start", "continue", "promote"]
    last = executions[-1]
    assert last.properties["challenger_trials"].int_value == 1000
    assert json.loads(last.custom_properties["posteriors"].string_value) == {
        "champion": {"alpha": 101.0, "beta": 901.0}, "challenger": {"alpha": 161.0, "beta": 841.0}}
    events = store.get_events_by_execution_ids([last.id])
    assert {(e.path.steps[0].key, e.artifact_id) for e in events if e.type == pb.Event.INPUT} == {
        ("champion", champion), ("challenger", challenger)}
    assert [c.name for c in store.get_contexts_by_execution(last.id)] == ["driftline"]
    # Promoted: no comparison runs any more, and another cycle's counts have nowhere to go.
    assert record.open_comparison(store, "driftline") is None
    with pytest.raises(record.OnlineEvalError, match="no comparison is running"):
        record.update_and_decide(store, "driftline", Counts(1, 10), Counts(1, 10), RULE)


def test_a_worse_challenger_is_retired_and_the_champion_serving_is_untouched(history):
    champion, challenger, _ = _models(history)
    before = sorted(os.listdir(history.serving_dir))
    record.start(history.store, "driftline", champion, challenger, RULE)
    d = record.update_and_decide(history.store, "driftline", Counts(120, 1000), Counts(70, 1000), RULE,
                                 serving_dir=history.serving_dir)
    assert (d.action, d.rule, d.pushed_version) == ("retire", "p_worse", None)
    assert sorted(os.listdir(history.serving_dir)) == before


def test_a_newer_candidate_replaces_the_challenger_and_the_restart_is_recorded(history):
    champion, challenger, newer = _models(history)
    record.start(history.store, "driftline", champion, challenger, RULE)
    record.update_and_decide(history.store, "driftline", Counts(30, 300), Counts(33, 300), RULE)
    with pytest.raises(record.OnlineEvalError, match="already the challenger"):
        record.start(history.store, "driftline", champion, challenger, RULE)
    d = record.start(history.store, "driftline", champion, newer, RULE)
    assert (d.action, d.rule, d.replaced_model_id) == ("replace", "newer_candidate", challenger)
    assert "30/300" in d.reason and "33/300" in d.reason
    rebuilt = record.open_comparison(_reopen(history), "driftline")
    assert (rebuilt.challenger_model_id, rebuilt.champion, rebuilt.challenger) == (newer, Counts(), Counts())
    assert [x.action for x in record.decisions(history.store, "driftline")] == ["start", "continue", "replace"]


def test_an_automatic_promotion_pushes_the_challenger(history):
    champion, challenger, _ = _models(history)
    uri = history.artifact(challenger).uri
    history.put_model_files(os.path.join(uri, "Format-Serving"), b"the challenger")
    record.start(history.store, "driftline", champion, challenger, RULE)
    d = record.update_and_decide(history.store, "driftline", Counts(100, 1000), Counts(160, 1000), RULE,
                                 serving_dir=history.serving_dir)
    assert (d.action, d.pushed_version) == ("promote", 2)
    with open(os.path.join(history.serving_dir, "2", "saved_model.pb"), "rb") as f:
        assert f.read() == b"the challenger"
    [pushed] = [e for e in history.store.get_events_by_execution_ids([d.execution_id]) if e.type == pb.Event.OUTPUT]
    artifact = history.artifact(pushed.artifact_id)
    assert artifact.custom_properties["model_id"].int_value == challenger
    assert artifact.custom_properties["pushed_version"].string_value == "2"


def test_promotion_without_a_saved_model_records_nothing(history):
    champion, challenger, _ = _models(history)
    record.start(history.store, "driftline", champion, challenger, RULE)
    with pytest.raises(record.OnlineEvalError, match="no SavedModel"):
        record.update_and_decide(history.store, "driftline", Counts(100, 1000), Counts(160, 1000), RULE,
                                 serving_dir=history.serving_dir)
    assert [x.action for x in record.decisions(history.store, "driftline")] == ["start"]


def test_cli_promote_and_retire_by_hand_are_recorded_and_shown(history, capsys):
    champion, challenger, newer = _models(history)
    home = history.home
    assert cli.main(["retire", "--home", home]) == 1
    assert "no comparison is running" in capsys.readouterr().err
    record.start(history.store, "driftline", champion, challenger, RULE)
    record.update_and_decide(history.store, "driftline", Counts(10, 100), Counts(12, 100), RULE)
    before = sorted(os.listdir(history.serving_dir))
    assert cli.main(["retire", "--home", home, "--note", "looks off"]) == 0
    assert "retire (by hand" in capsys.readouterr().out
    assert sorted(os.listdir(history.serving_dir)) == before
    latest = record.latest_decision(_reopen(history), "driftline")
    assert (latest.action, latest.rule, latest.manual) == ("retire", "manual", True)
    assert (latest.champion, latest.challenger) == (Counts(10, 100), Counts(12, 100))
    assert "looks off" in latest.reason

    history.put_model_files(os.path.join(history.artifact(newer).uri, "Format-Serving"), b"newer")
    record.start(history.store, "driftline", champion, newer, RULE)
    assert cli.main(["promote", "--home", home]) == 0
    assert "pushed as version 2" in capsys.readouterr().out
    assert sorted(os.listdir(history.serving_dir)) == ["1", "2"]

    assert cli.main(["lineage", "--home", home]) == 0
    assert f"online evaluation: promote (by hand" in capsys.readouterr().out
    assert cli.main(["status", "--home", home, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["online_decision"]
    assert (shown["action"], shown["challenger_model_id"], shown["pushed_version"]) == ("promote", newer, 2)
