"""The controller's online step (pipelines/online.py) on a real SQLite ML Metadata history, without TFX.

The history (tests/mlmd_history.py) records what the pipeline would: cycles, blessings, pushes, and spans whose
`Examples` carry the arm counts JoinExampleGen writes. Each reconcile is checked against what the test put there.
"""
from __future__ import annotations

import json
import os

from components.blessing_pusher import serving
from components.online_evaluator import arm_counts, record
from components.online_evaluator.decision import Counts
from mlmd_history import History
from pipelines import online
from pipelines.config import LatencyConfig, OnlineEvalConfig, default_config


def _config(h: History, **online_settings):
    return default_config(h.home).replace(online=OnlineEvalConfig(enabled=True, **online_settings),
                                          latency=LatencyConfig(enabled=False))


def _served_span(h: History, counts: dict) -> int:
    """One span JoinExampleGen published, with each arm's counts per challenger."""
    run = h.new_run()
    _, out = h.execute(run, "StreamingExampleGen", {}, {"examples": [("Examples", {
        "span": h.next_span, "version": 0, "committed_state": json.dumps({"last_span": h.next_span}),
        "event_count": 1, "arm_counts": arm_counts.to_json(counts)})]})
    h.next_span += 1
    return out["examples"][0]


def _candidate(h: History) -> int:
    """A blessed model BlessingPusher in challenger mode did not push, with its SavedModel."""
    model = h.cycle(push=False)["model"]
    h.put_model_files(os.path.join(h.artifact(model).uri, "Format-Serving"), content=f"model {model}".encode())
    return model


def test_counts_promote_with_the_push_and_the_next_candidate_challenges_the_new_champion(tmp_path):
    h = History(str(tmp_path / "home"))
    champion = h.cycle()["model"]  # pushed: version 1
    older, newest = _candidate(h), _candidate(h)
    config = _config(h, min_impressions=100)
    # Nothing counted yet; the newest blessed candidate is deployed (the older one is never compared).
    step = online.reconcile(config, h.store)
    assert step.decision is None
    assert (step.deployed.action, step.deployed.champion_model_id, step.deployed.challenger_model_id) == (
        "start", champion, newest)
    assert not online.reconcile(config, h.store).anything  # idempotent

    s1 = _served_span(h, {newest: {"champion": Counts(5, 100), "challenger": Counts(30, 100)}})
    # A span served under another comparison only: no evidence about this one.
    stale = _served_span(h, {older: {"champion": Counts(1, 10), "challenger": Counts(9, 10)}})
    s3 = _served_span(h, {newest: {"champion": Counts(6, 100), "challenger": Counts(29, 100)},
                          older: {"champion": Counts(0, 5), "challenger": Counts(5, 5)}})
    step = online.reconcile(config, h.store)
    d = step.decision
    assert step.counted_spans == sorted(h.artifact(a).properties["span"].int_value for a in (s1, s3))
    assert step.ignored_spans == [h.artifact(stale).properties["span"].int_value]
    assert (d.champion, d.challenger) == (Counts(11, 200), Counts(59, 200))
    assert (d.action, d.rule) == ("promote", "p_better") and d.pushed_version == 2
    # The promotion was the atomic push: version 2 is the challenger's SavedModel, and serves as its model.
    assert serving.versions(h.serving_dir) == [1, 2]
    assert online.champion_model_id(h.store, config) == newest
    assert record.counted_examples_ids(h.store, h.pipeline) == {s1, s3}
    assert step.deployed is None  # no candidate newer than the new champion
    assert not online.reconcile(config, h.store).anything

    # A newer candidate challenges the new champion; the spans counted before are not counted again.
    newer = _candidate(h)
    step = online.reconcile(config, h.store)
    assert step.decision is None
    assert (step.deployed.action, step.deployed.champion_model_id, step.deployed.challenger_model_id) == (
        "start", newest, newer)


def test_a_span_is_judged_against_its_challenger_before_a_newer_candidate_replaces_it(tmp_path):
    h = History(str(tmp_path / "home"))
    champion = h.cycle()["model"]
    challenger = _candidate(h)
    config = _config(h)  # min_impressions 1000: every decision here continues
    online.reconcile(config, h.store)
    span = _served_span(h, {challenger: {"champion": Counts(3, 50), "challenger": Counts(4, 50)}})
    newer = _candidate(h)  # the same cycle brought a span and a newer blessed candidate
    step = online.reconcile(config, h.store)
    assert (step.decision.action, step.decision.challenger_model_id) == ("continue", challenger)
    assert (step.decision.champion, step.decision.challenger) == (Counts(3, 50), Counts(4, 50))
    assert (step.deployed.action, step.deployed.replaced_model_id, step.deployed.challenger_model_id) == (
        "replace", challenger, newer)
    assert record.counted_examples_ids(h.store, h.pipeline) == {span}
    # The decision lists the span it counted, and has its Examples as an input.
    [execution] = h.store.get_executions_by_id([step.decision.execution_id])
    assert json.loads(execution.custom_properties["counted_spans"].string_value) == [
        h.artifact(span).properties["span"].int_value]
    assert serving.versions(h.serving_dir) == [1]  # the champion served throughout
    assert online.champion_model_id(h.store, config) == champion


def test_a_retired_challenger_is_not_deployed_again(tmp_path):
    h = History(str(tmp_path / "home"))
    h.cycle()
    challenger = _candidate(h)
    config = _config(h, min_impressions=100)
    online.reconcile(config, h.store)
    _served_span(h, {challenger: {"champion": Counts(30, 100), "challenger": Counts(2, 100)}})
    step = online.reconcile(config, h.store)
    assert (step.decision.action, step.decision.rule) == ("retire", "p_worse")
    assert step.deployed is None and record.open_comparison(h.store, h.pipeline) is None
    assert not online.reconcile(config, h.store).anything
    assert serving.versions(h.serving_dir) == [1]
