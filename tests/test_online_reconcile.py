"""The controller's online step (pipelines/online.py) on a real SQLite ML Metadata history, without TFX.

The history (tests/mlmd_history.py) records what the pipeline would: cycles, blessings, pushes, and spans whose
`Examples` carry the arm counts JoinExampleGen writes. Each reconcile is checked against what the test put there.
"""
from __future__ import annotations

import json
import math
import os

from components.blessing_pusher import serving
from components.online_evaluator import arm_counts, record
from components.online_evaluator.decision import Counts
from mlmd_history import History
from pipelines import online
from pipelines.config import LatencyConfig, OnlineEvalConfig, default_config
from pipelines.metadata import open_store


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


def _served_lines(challenger: int, requests: int, start: int = 0, failing: bool = False, slow_ms: float = 0.0,
                  score: float = 0.05) -> list:
    """Shown impressions (2 a request) as a routing server logs them: every other request drawn for the
    challenger; `failing`: the challenger never answers (the champion does: `challenger_fallback` 1); `slow_ms`:
    its calls take that long; one impression in 20 clicked on each arm; each scored `score`."""
    lines = []
    for r in range(start, start + requests):
        drawn = r % 2 == 1
        arm = "champion" if (not drawn or failing) else "challenger"
        latency = slow_ms if arm == "challenger" and slow_ms else 4.0
        for position in (0, 1):
            lines.append({"request_id": f"q{r}", "arm": arm, "challenger_model_id": challenger,
                          "arm_propensity": 1.0 if failing else 0.5, "challenger_fallback": int(drawn and failing),
                          "arm_latency_ms": latency, "score": score,
                          "clicked": int(position == 0 and (r // 2) % 10 == 0),
                          "position": position})
    return lines


def _span_of_lines(h: History, lines: list) -> int:
    """A span whose arm counts JoinExampleGen computed from these joined lines (arm_counts.span_json)."""
    run = h.new_run()
    _, out = h.execute(run, "StreamingExampleGen", {}, {"examples": [("Examples", {
        "span": h.next_span, "version": 0, "committed_state": json.dumps({"last_span": h.next_span}),
        "event_count": len(lines), "arm_counts": arm_counts.span_json(lines, "clicked")})]})
    h.next_span += 1
    return out["examples"][0]


def test_a_challenger_whose_calls_fail_is_retired_by_the_error_rate_guardrail_counted_once(tmp_path, capsys):
    """The challenger never answers; the champion answers every request drawn for it. Its error rate, read from
    the spans' lines, is judged once it has 100 requests drawn (two spans) and retires it whatever the
    posteriors say; each decision records the cumulative measures and readings; a restart counts nothing twice."""
    from components.online_evaluator.guardrails import ArmStats
    from pipelines import cli

    h = History(str(tmp_path / "home"))
    h.cycle()
    challenger = _candidate(h)
    config = _config(h, min_impressions=10 ** 6, max_error_rate=0.05, max_latency_p99_ms=1000.0)
    online.reconcile(config, h.store)
    _span_of_lines(h, _served_lines(challenger, 120, failing=True))  # 60 drawn for the challenger: < 100
    first = online.reconcile(config, h.store).decision
    assert (first.action, first.rule) == ("continue", "min_impressions")
    assert first.stats["challenger"] == ArmStats(requests=0, fallbacks=60)
    assert first.stats["champion"].requests == 120 and first.readings["challenger"].error_rate is None
    # A restarted controller (a fresh store handle) finds nothing new: the span is not measured again.
    assert not online.reconcile(config, open_store(config.metadata_connection)).anything
    _span_of_lines(h, _served_lines(challenger, 120, start=120, failing=True))
    step = online.reconcile(config, h.store)
    d = step.decision
    assert (d.action, d.rule) == ("retire", "guardrail_error_rate"), d.reason
    assert d.stats["challenger"] == ArmStats(requests=0, fallbacks=120)  # 60 + 60, each span once
    assert d.readings["challenger"].error_rate == 1.0 and d.readings["champion"].error_rate == 0.0
    assert math.isclose(d.readings["champion"].latency_p99_ms, 4.0, rel_tol=0.05)
    # In ML Metadata: the rule, the readings, the measures.
    [execution] = h.store.get_executions_by_id([d.execution_id])
    assert execution.properties["rule"].string_value == "guardrail_error_rate"
    assert execution.custom_properties["challenger_error_rate"].double_value == 1.0
    assert json.loads(execution.custom_properties["guardrail_stats"].string_value)["challenger"]["fallbacks"] == 120
    assert record.latest_decision(open_store(config.metadata_connection), h.pipeline).readings == d.readings
    assert serving.versions(h.serving_dir) == [1]  # the champion served throughout
    assert cli.main(["status", "--home", h.home]) == 0
    assert "error rate 1, calibration error" in capsys.readouterr().out
    assert cli.main(["lineage", "--home", h.home, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["online_decision"]
    assert shown["readings"]["challenger"]["error_rate"] == 1.0 and shown["rule"] == "guardrail_error_rate"


def test_a_slow_or_miscalibrated_challenger_is_retired_by_its_guardrail(tmp_path):
    h = History(str(tmp_path / "home"))
    h.cycle()
    slow = _candidate(h)
    config = _config(h, min_impressions=10 ** 6, max_latency_p99_ms=50.0, max_calibration_error=0.5)
    online.reconcile(config, h.store)
    # Calibrated (mean score 0.05 = the 1-in-20 click rate), but its calls take 80 ms.
    _span_of_lines(h, _served_lines(slow, 400, slow_ms=80.0))
    d = online.reconcile(config, h.store).decision
    assert (d.action, d.rule) == ("retire", "guardrail_latency_p99"), d.reason
    assert d.readings["challenger"].latency_p99_ms >= 80.0 and d.readings["champion"].latency_p99_ms < 5.0
    assert d.readings["challenger"].calibration_error is None  # 20 successes < 50: not judged yet
    # The next candidate is fast but predicts 0.2 for a 0.05 click rate: calibration error 3.
    off = _candidate(h)
    assert online.reconcile(config, h.store).deployed.challenger_model_id == off
    _span_of_lines(h, _served_lines(off, 2400, score=0.2))
    d = online.reconcile(config, h.store).decision
    assert (d.action, d.rule) == ("retire", "guardrail_calibration"), d.reason
    assert math.isclose(d.readings["challenger"].calibration_error, 3.0)
