"""The controller in join + online mode, on real SQLite ML Metadata with real TFX runs (three cycles in all).

The simulator's stream is split into impressions and delayed clicks (pipelines/two_streams.py) and fed to the
pipeline's logs in three steps of event time. Cycle 1 trains the first model, which is pushed (nothing served).
Cycle 2's blessed model is not pushed: it becomes the challenger. The impressions fed after that are written
in the serving contract's format, as a routing server would log them (`arm`, `challenger_model_id` of that
challenger), every clicked one on the champion's arm; cycle 3 joins them. The controller is "killed" after
cycle 3's TFX run, and again after counting, and restarted: every expectation is counted from what the test
wrote, and no span is counted twice.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib

import pytest
from join_helpers import feed, run_two_cycles, staged_two_streams

from components import event_log
from components.event_schema import FieldSpec
from components.streaming_example_gen.join_config import JoinStreamConfig

pytestmark = pytest.mark.e2e
SPAN_MS = 600_000
WINDOW_S = 120
LATENESS_S = 30
MINUTE = 60_000


def _served(impressions: list, labels: dict, challenger_id: int) -> list:
    """The impressions as a routing server logs them while `challenger_id` is the open comparison's challenger:
    every clicked impression on the champion's arm, the others split between the arms by id."""
    out = []
    for e in impressions:
        iid = e["event_id"]
        arm = "champion" if labels[iid] or zlib.crc32(iid.encode()) % 2 else "challenger"
        out.append({**e, "arm": arm, "arm_propensity": 0.5, "challenger_model_id": challenger_id,
                    "model_id": challenger_id if arm == "challenger" else None})
    return out


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    from pipelines import two_streams
    from pipelines.config import (ControllerConfig, GateConfig, OnlineEvalConfig, TrainerConfig, WindowConfig,
                                  default_config)

    root = tmp_path_factory.mktemp("online_controller")
    sim, impressions, outcomes, truth = staged_two_streams(root, 62, 300, WINDOW_S)
    home = str(root / "home")
    imp_dir, out_dir = os.path.join(home, "impressions"), os.path.join(home, "outcomes")
    t0 = sim.start_ms
    assert t0 % SPAN_MS == 0  # the spans below are counted from t0
    # Step 1 to minute 32: spans 0 and 1 close. Step 2 to minute 40: span 2 (its windows end at 32 + lateness).
    # Step 3 to minute 62, served with the challenger: spans 3 and 4 close.
    cuts = [t0 + 32 * MINUTE, t0 + 40 * MINUTE, t0 + 62 * MINUTE]
    feed(impressions, imp_dir, 0, cuts[0])
    feed(outcomes, out_dir, 0, cuts[0])
    join = two_streams.join_config(imp_dir, out_dir, attribution_window_seconds=WINDOW_S)
    schema = join.impressions.schema
    served_fields = (FieldSpec("arm", "string", required=False), FieldSpec("arm_propensity", "float", required=False),
                     FieldSpec("challenger_model_id", "int", required=False),
                     FieldSpec("model_id", "int", required=False))
    join = dataclasses.replace(
        join, impressions=JoinStreamConfig(imp_dir, dataclasses.replace(schema, fields=schema.fields + served_fields)),
        drop_fields=tuple(f.name for f in served_fields))
    config = default_config(home).replace(
        window=WindowConfig(span_seconds=SPAN_MS // 1000, allowed_lateness_seconds=LATENESS_S),
        trainer=TrainerConfig(cold_epochs=2, warm_epochs=1),
        # The gate blesses any sane model: what is under test is what happens to a blessed one.
        gate=GateConfig(min_auc=0.5, min_calibration=0.1, max_calibration=10.0, max_log_loss=1.0,
                        max_auc_drop=0.5, min_slice_auc=0.0, min_eval_positives=10, max_auc_interval_width=1.0),
        # No decision but continue: the counts must accumulate, whatever they say.
        online=OnlineEvalConfig(enabled=True, min_impressions=10 ** 9),
        controller=ControllerConfig(retry_initial_seconds=1.0, retry_max_seconds=2.0)).with_join(join).validate()
    def step_2() -> None:
        feed(impressions, imp_dir, cuts[0], cuts[1])
        feed(outcomes, out_dir, cuts[0], cuts[1])

    lines, said = run_two_cycles(config, step_2)
    return {"config": config, "lines": lines, "said": said, "truth": truth, "impressions": impressions,
            "outcomes": outcomes, "t0": t0, "cuts": cuts, "imp_dir": imp_dir, "out_dir": out_dir}


def _store(config):
    from pipelines.metadata import open_store

    return open_store(config.metadata_connection)


def _serving_versions(config):
    from components.blessing_pusher import serving

    return serving.versions(config.serving_dir)


def test_the_first_model_is_pushed_and_the_next_blessed_one_is_deployed_as_challenger_not_pushed(online_run):
    from components.online_evaluator import record
    from pipelines.lineage_queries import models

    config, lines = online_run["config"], online_run["lines"]
    first, second = lines
    assert first["blessed"] and first["pushed_version"] == "1" and "online" in first
    assert first["online"]["deployed"] is None  # nothing served before: pushed, not compared
    assert second["blessed"] and second["pushed_version"] is None, second
    assert _serving_versions(config) == [1]
    deployed = second["online"]["deployed"]
    assert (deployed["action"], deployed["champion_model_id"], deployed["challenger_model_id"]) == (
        "start", first["model_id"], second["model_id"])
    # The pusher's record says why it did not push.
    [m] = [m for m in models(_store(config), config.pipeline_name) if m.model_id == second["model_id"]]
    assert "deployed as the challenger beside serving version 1" in m.push_reason
    running = record.open_comparison(_store(config), config.pipeline_name)
    assert (running.champion_model_id, running.challenger_model_id) == (first["model_id"], second["model_id"])


def test_served_counts_flow_into_decisions_once_across_restarts(online_run):
    from components.online_evaluator import record
    from components.online_evaluator.decision import Counts
    from pipelines import online
    from pipelines.controller import run_cycles, single_instance
    from pipelines.local_runner import run_cycle

    config, t0, cuts = online_run["config"], online_run["t0"], online_run["cuts"]
    champion_id, challenger_id = (line["model_id"] for line in online_run["lines"])
    labels = online_run["truth"].labels
    fresh = [e for e in online_run["impressions"] if cuts[1] <= e["event_time"] < cuts[2]]
    served = _served(fresh, labels, challenger_id)
    with event_log.EventLogWriter(online_run["imp_dir"]) as writer:
        writer.write_events(served)
    feed(online_run["outcomes"], online_run["out_dir"], cuts[1], cuts[2])
    store = _store(config)
    before = len(record.decisions(store, config.pipeline_name))

    # Cycle 3's TFX run, then the controller dies before its online step.
    with single_instance(config.home):
        cycle = run_cycle(config)
    first_span = t0 // SPAN_MS
    assert cycle.spans == [first_span + 3, first_span + 4] and cycle.blessed and cycle.pushed_version is None
    assert len(record.decisions(store, config.pipeline_name)) == before  # nothing counted, nothing deployed
    # The base model and the baseline are the serving champion, not the challenger (the latest blessed model).
    from pipelines.lineage_queries import models

    [m] = [m for m in models(store, config.pipeline_name) if m.model_id == cycle.model_id]
    assert (m.base_model_id, m.baseline_model_id) == (champion_id, champion_id)

    # Hand count: span 4 is all served impressions (the minutes 40-50); span 3's were logged before any routing.
    in_span4 = [e for e in served if e["event_time"] // SPAN_MS == first_span + 4]
    expected = {arm: Counts(sum(labels[e["event_id"]] for e in in_span4 if e["arm"] == arm),
                            sum(e["arm"] == arm for e in in_span4)) for arm in ("champion", "challenger")}
    assert expected["challenger"].successes == 0 < expected["challenger"].trials
    assert expected["champion"].successes > 0

    # A controller that is killed right after counting (before deploying the new candidate) ...
    step = online.count_new_spans(store, config)
    assert step.counted_spans == [first_span + 4] and step.decision.action == "continue"
    assert (step.decision.champion, step.decision.challenger) == (expected["champion"], expected["challenger"])
    assert step.decision.challenger_model_id == challenger_id
    # ... restarts: recovery and the online step, no cycle (nothing is due). It counts nothing again and
    # deploys cycle 3's model in place of the challenger.
    with single_instance(config.home):
        assert run_cycles(config, 1) == []
    rows = record.decisions(store, config.pipeline_name)
    assert [d.action for d in rows[before:]] == ["continue", "replace"]
    replace = rows[-1]
    assert (replace.champion_model_id, replace.challenger_model_id, replace.replaced_model_id) == (
        champion_id, cycle.model_id, challenger_id)
    assert replace.challenger == Counts() and replace.champion == Counts()
    # Once more: nothing new to count or deploy, so nothing is recorded.
    again = online.reconcile(config)
    assert not again.anything and len(record.decisions(store, config.pipeline_name)) == len(rows)
    # The decision names the spans it counted; the champion served throughout.
    counted = store.get_artifacts_by_id(sorted(record.counted_examples_ids(store, config.pipeline_name)))
    assert [a.properties["span"].int_value for a in counted] == [first_span + 4]
    assert _serving_versions(config) == [1]


def test_a_challenge_by_hand_is_recorded_and_shown_by_status(online_run, capsys):
    from components.online_evaluator import record
    from pipelines import cli, online

    config = online_run["config"]
    champion_id, challenger_id = (line["model_id"] for line in online_run["lines"])
    assert cli.main(["challenge", "--home", config.home, "--model-id", str(champion_id)]) != 0
    assert "is the serving champion" in capsys.readouterr().err
    assert cli.main(["challenge", "--home", config.home, "--model-id", str(challenger_id),
                     "--note", "a second look"]) == 0
    assert "by hand: a second look" in capsys.readouterr().out
    latest = record.latest_decision(_store(config), config.pipeline_name)
    assert latest.manual and latest.challenger_model_id == challenger_id and latest.champion_model_id == champion_id
    # The controller does not undo it: every newer blessed model was named by a decision already.
    assert online.reconcile(config).deployed is None
    assert cli.main(["status", "--home", config.home]) == 0
    assert f"online evaluation: replace (by hand" in capsys.readouterr().out
    assert cli.main(["lineage", "--home", config.home, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["online_decision"]["challenger_model_id"] == challenger_id
