"""Online evaluation end to end: a real `driftline serve` process routing by Thompson sampling, the simulated
population ranking through it, and the controller in join + online mode judging each arm on the clicks.

Two models are built on the same written history: a good one (the pipeline's first model, pushed: the
champion) and a deliberately bad one, trained by a second pipeline in the same ML Metadata on the same
impressions with their labels inverted (every clicked impression unclicked and the other way round), so it
ranks the ads the users click least first.

* Worse: the bad model is deployed by hand (`driftline challenge`) beside the good champion. The controller's
  cycles count each arm's joined clicks until it retires the challenger; it is never promoted, and the good
  champion (version 1) serves every request throughout.
* Better: the bad model is made the champion by hand (`challenge`, then `promote`: version 2), and the good
  model challenges it. The controller promotes it: version 3, pushed atomically, is the good model.
* Failing: a real SavedModel that loads and passes the warm-up but fails on every real request challenges the
  good champion, with `online.max_error_rate` set. The server answers every request drawn for it with the
  champion and logs it as a fallback; the controller reads the challenger's error rate from the joined
  impressions and retires it by the guardrail, never promoting it (with no clicks of its own its posterior
  stays the prior, which could otherwise look better than a champion with a low click rate).

The gate is set so that no candidate the cycles train is blessed: each comparison runs with the challenger
the test deployed, and the cycles only join spans, count and decide.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time

import pytest

from pipelines.population import read_events, write_inverted_history

SPAN_SECONDS = 20
HISTORY_MINUTES = 3
pytestmark = pytest.mark.e2e


def _failing_model(config, like_model_id: int, root: str) -> int:
    """A Model artifact in the pipeline's ML Metadata whose SavedModel fails on every real request."""
    from ml_metadata.proto import metadata_store_pb2
    from test_serve_routing import export_picky_challenger

    from components.mlmd_vocabulary import MODEL_TYPE
    from pipelines.metadata import open_store
    from pipelines.recovery import model_serving_dir

    store = open_store(config.metadata_connection)
    like = model_serving_dir(store.get_artifacts_by_id([like_model_id])[0].uri)
    uri = os.path.join(root, "failing_model")
    export_picky_challenger(like, os.path.join(uri, "Format-Serving"), max_price=0.0)  # every price is > 0
    [model_id] = store.put_artifacts([metadata_store_pb2.Artifact(
        type_id=store.get_artifact_type(MODEL_TYPE).id, uri=uri, state=metadata_store_pb2.Artifact.LIVE)])
    return model_id


def _judge(config, challenger_id: int, lines: list, said: list, max_cycles: int = 8) -> None:
    """Controller cycles until a decision ends the comparison of `challenger_id` (or max_cycles)."""
    from components.online_evaluator import record
    from pipelines.controller import run_continuous
    from pipelines.metadata import open_store

    stop = threading.Event()

    def emit(line: str) -> None:
        lines.append(json.loads(line))
        if lines[-1].get("outcome") != "ok":
            stop.set()
        d = record.latest_decision(open_store(config.metadata_connection), config.pipeline_name)
        if d is not None and d.challenger_model_id == challenger_id and d.action in record.TERMINAL_ACTIONS:
            stop.set()

    run_continuous(config, poll_seconds=0.5, max_cycles=max_cycles, stop=stop, emit=emit, say=said.append)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    from components.blessing_pusher import serving
    from components.online_evaluator import record
    from pipelines import cli
    from pipelines.closed_loop import _wait_healthy, closed_loop_config, start_server, stop_server
    from pipelines.config import LatencyConfig, MetadataConfig, OnlineEvalConfig
    from pipelines.config_file import persist_config
    from pipelines.controller import run_cycles, single_instance
    from pipelines.metadata import open_store
    from pipelines.population import Population, PopulationConfig, write_history
    from pipelines.serve.config import ServeConfig
    from pipelines.simulator import SimulatorConfig

    root = tmp_path_factory.mktemp("online_e2e")
    home, home_bad = str(root / "home"), str(root / "bad")
    origin_ms = (int(time.time() * 1000) // 60_000 - HISTORY_MINUTES) * 60_000
    population = PopulationConfig(world=SimulatorConfig(seed=0, events_per_minute=3000, hot_ad_minute=None),
                                  origin_ms=origin_ms, requests_per_second=15, seed=0)
    config = closed_loop_config(home, population, SPAN_SECONDS).replace(
        latency=LatencyConfig(enabled=False), serve=ServeConfig(comparison_poll_seconds=1.0),
        online=OnlineEvalConfig(enabled=True, min_impressions=200)).validate()
    write_history(config.join.impressions.log_dir, config.join.outcomes.log_dir, population, HISTORY_MINUTES)
    persist_config(config)
    with single_instance(home):
        [good] = run_cycles(config, 1)
    assert good.pushed_version == "1", good
    # The bad model: a second pipeline in the same ML Metadata, on the inverted history.
    bad_config = closed_loop_config(home_bad, population, SPAN_SECONDS).replace(
        pipeline_name="inverted", latency=LatencyConfig(enabled=False),
        metadata=MetadataConfig(path=config.metadata_path)).validate()
    write_inverted_history(bad_config.join.impressions.log_dir, bad_config.join.outcomes.log_dir, population,
                           HISTORY_MINUTES)
    with single_instance(home_bad):
        [bad] = run_cycles(bad_config, 1)
    assert bad.model_id is not None and bad.model_id != good.model_id
    # From here on no candidate is blessed: the comparisons are the ones this test deploys.
    judging = config.replace(gate=dataclasses.replace(config.gate, min_auc=0.999))

    assert cli.main(["challenge", "--home", home, "--model-id", str(bad.model_id), "--note", "built worse"]) == 0
    server, url, log_path = start_server(home)
    result = {"config": config, "good": good.model_id, "bad": bad.model_id, "worse_lines": [], "better_lines": [],
              "said": [], "log": log_path}
    users = None
    try:
        _wait_healthy(url, server, log_path, timeout_s=180)
        users = Population(url, config.pipeline_name, config.join.outcomes.log_dir, population,
                           SPAN_SECONDS * 1000).start()
        # Worse: the bad challenger beside the good champion.
        _judge(judging, bad.model_id, result["worse_lines"], result["said"])
        result["worse"] = record.latest_decision(open_store(config.metadata_connection), config.pipeline_name)
        result["versions_after_worse"] = serving.versions(config.serving_dir)
        result["impressions_after_worse"] = len(read_events(config.join.impressions.log_dir))
        # Better: the bad model made champion by hand, the good one challenges it.
        assert cli.main(["challenge", "--home", home, "--model-id", str(bad.model_id)]) == 0
        assert cli.main(["promote", "--home", home, "--note", "the bad model as champion"]) == 0
        assert cli.main(["challenge", "--home", home, "--model-id", str(good.model_id), "--note", "built better"]) == 0
        _judge(judging, good.model_id, result["better_lines"], result["said"])
        result["better"] = record.latest_decision(open_store(config.metadata_connection), config.pipeline_name)
        # Failing: a challenger whose every call fails, beside the good champion (version 3).
        result["failing_id"] = failing = _failing_model(config, good.model_id, str(root))
        assert cli.main(["challenge", "--home", home, "--model-id", str(failing), "--note", "built to fail"]) == 0
        guarded = judging.replace(online=dataclasses.replace(judging.online, max_error_rate=0.05))
        result["failing_lines"] = []
        _judge(guarded, failing, result["failing_lines"], result["said"])
        result["failing"] = record.latest_decision(open_store(config.metadata_connection), config.pipeline_name)
        result["versions_after_failing"] = serving.versions(config.serving_dir)
    finally:
        result["tally"] = users.stop() if users is not None else None
        stop_server(server)
    result["decisions"] = record.decisions(open_store(config.metadata_connection), config.pipeline_name)
    for d in result["decisions"]:  # shown with -s: the evidence each decision had
        print(d.describe())
    return result


def test_a_worse_challenger_is_retired_never_promoted_and_the_champion_serves_throughout(e2e):
    from components.online_evaluator import record

    worse = e2e["worse"]
    assert worse is not None and (worse.action, worse.rule, worse.challenger_model_id) == (
        "retire", "p_worse", e2e["bad"]), (e2e["worse_lines"], e2e["said"][-10:])
    assert worse.champion_model_id == e2e["good"] and worse.pushed_version is None
    assert worse.champion.trials + worse.challenger.trials >= 200
    assert worse.challenger.rate < worse.champion.rate
    bad_decisions = [d for d in e2e["decisions"] if d.challenger_model_id == e2e["bad"]]
    first_phase = bad_decisions[:bad_decisions.index(worse) + 1]
    assert first_phase[0].action == "start" and first_phase[0].manual
    assert record.PROMOTE not in {d.action for d in first_phase}
    # The champion never stopped: version 1 alone in the folder, and every request of the phase served by it.
    assert e2e["versions_after_worse"] == [1]
    served = read_events(e2e["config"].join.impressions.log_dir)[:e2e["impressions_after_worse"]]
    live = [e for e in served if e["request_id"] != "history"]
    assert live and {e["model_version"] for e in live} == {1}
    assert {e["model_id"] for e in live if e.get("arm") == "challenger"} == {e2e["bad"]}
    assert e2e["tally"].failed == 0, e2e["tally"].errors
    # The guardrails' measures came from the real server's lines: every request timed, none a fallback.
    stats = worse.stats["challenger"]
    assert stats.requests > 0 and stats.timed == stats.requests and stats.fallbacks == 0
    assert worse.stats["champion"].timed == worse.stats["champion"].requests > 0


def test_a_better_challenger_is_promoted_by_the_atomic_push(e2e):
    from components.blessing_pusher import serving
    from pipelines.lineage_queries import serving as serving_info

    better = e2e["better"]
    assert better is not None and (better.action, better.rule, better.challenger_model_id) == (
        "promote", "p_better", e2e["good"]), (e2e["better_lines"], e2e["said"][-10:])
    assert better.champion_model_id == e2e["bad"] and better.pushed_version == 3
    assert better.challenger.rate > better.champion.rate
    config = e2e["config"]
    assert serving.serving_version(config.serving_dir) == 3
    assert serving_info(config.metadata_path, config.serving_dir, config.pipeline_name).model_id == e2e["good"]


def test_a_challenger_whose_calls_fail_is_retired_by_the_error_rate_guardrail(e2e):
    from components.online_evaluator import record

    failing = e2e["failing"]
    assert failing is not None and (failing.action, failing.rule, failing.challenger_model_id) == (
        "retire", "guardrail_error_rate", e2e["failing_id"]), (e2e["failing_lines"], e2e["said"][-10:])
    assert failing.champion_model_id == e2e["good"] and failing.pushed_version is None
    # Every request drawn for it was answered by the champion: no challenger impression, error rate 1.
    assert failing.challenger.trials == 0 and failing.readings["challenger"].error_rate == 1.0
    assert failing.stats["challenger"].requests == 0 and failing.stats["challenger"].fallbacks >= 100
    phase = [d for d in e2e["decisions"] if d.challenger_model_id == e2e["failing_id"]]
    assert phase[0].action == "start" and record.PROMOTE not in {d.action for d in phase}
    assert e2e["versions_after_failing"][-1] == 3  # the good champion (version 3) served throughout
    assert e2e["tally"].failed == 0, e2e["tally"].errors
