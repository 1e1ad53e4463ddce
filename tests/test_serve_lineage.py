"""`driftline serve` and ML Metadata (#20): the served version's lineage in /metrics, and shadow scoring.

The real server process on a home whose ML Metadata is a real SQLite store
holding the records TFX writes for a cycle (tests/mlmd_history.py), whose
serving folder holds real SavedModels published by the pusher's
`serving.push`. Every expectation is a number this test wrote into ML
Metadata itself.
"""
import os
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_helpers import read_impressions, record_model, running_server, until

NAME = "driftline"
T0_MS = 1_790_000_000_000  # the newest event time of the first model's data


def scrape(base: str) -> dict:
    """{sample name: value} of the server's /metrics (label-less samples only)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels}


@pytest.fixture(scope="module")
def lineage_home(serve_models, tmp_path_factory):
    from components.blessing_pusher import serving
    from mlmd_history import History

    from pipelines.config import ServeConfig, default_config
    from pipelines.config_file import dump_config, home_config_path

    home = str(tmp_path_factory.mktemp("serve_lineage_home"))
    # Shadow scoring on through the home's config file, as a user turns it on.
    with open(home_config_path(home), "w") as f:
        f.write(dump_config(default_config(home).replace(serve=ServeConfig(shadow=True, shadow_poll_seconds=0.3))))
    history = History(home)
    assert serving.push(serve_models[1], history.serving_dir).version == 1
    first = record_model(history, newest_event_ms=T0_MS, push_version=1, pushed_at_ms=T0_MS + 60_000)
    return {"home": home, "history": history, "first": first}


@pytest.fixture(scope="module")
def server(lineage_home):
    with running_server(lineage_home["home"], "--poll-seconds", "0.2") as s:
        yield s


def test_metrics_carry_the_served_versions_push_time_and_freshness_from_ml_metadata(server, lineage_home,
                                                                                     serve_models):
    """Version 1's model id, push time and data freshness, as ML Metadata recorded them; then a push whose
    record comes after its folder (as TFX publishes after the pusher's copy): until it is recorded, no gauge
    of version 1 stands for version 2; once it is, the server has read it without a request asking."""
    from components.blessing_pusher import serving

    base = server["base"]
    m = until(lambda: (lambda s: s if "driftline_serve_model_id" in s else None)(scrape(base)),
              what="version 1's lineage in /metrics")
    assert m["driftline_serve_model_version"] == 1
    assert m["driftline_serve_model_id"] == lineage_home["first"]
    assert m["driftline_serve_model_pushed_timestamp_seconds"] == (T0_MS + 60_000) / 1000
    assert m["driftline_serve_model_newest_event_timestamp_seconds"] == T0_MS / 1000
    now = time.time()
    assert now - T0_MS / 1000 - 5 <= m["driftline_serve_model_freshness_seconds"] <= now - T0_MS / 1000

    history = lineage_home["history"]
    assert serving.push(serve_models[2], history.serving_dir).version == 2
    m = until(lambda: (lambda s: s if s["driftline_serve_model_version"] == 2 else None)(scrape(base)),
              what="the swap to version 2")
    # Not recorded yet: version 1's facts are not shown as version 2's.
    for name in ("driftline_serve_model_id", "driftline_serve_model_pushed_timestamp_seconds",
                 "driftline_serve_model_newest_event_timestamp_seconds", "driftline_serve_model_freshness_seconds"):
        assert name not in m
    t1 = T0_MS + 3_600_000
    second = record_model(history, newest_event_ms=t1, push_version=2, pushed_at_ms=t1 + 30_000)
    m = until(lambda: (lambda s: s if s.get("driftline_serve_model_id") == second else None)(scrape(base)),
              what="version 2's lineage in /metrics")
    assert m["driftline_serve_model_pushed_timestamp_seconds"] == (t1 + 30_000) / 1000
    assert m["driftline_serve_model_newest_event_timestamp_seconds"] == t1 / 1000
    assert m["driftline_serve_lineage_errors_total"] >= 0


def test_shadow_scoring_logs_the_newest_blessed_candidates_score_beside_the_served_one(server, lineage_home,
                                                                                      serve_models):
    """Shadow scoring on through the home's config (serve.shadow): with no blessed model newer than the served
    one nothing shadows; a blessed, unpushed model then scores every request too, and each impression logs its
    id and score, equal to that model's own score (serving_default on tf.Examples, no server code) of the
    features the served model scored. A newer but refused model is no candidate."""
    from pipelines.serve.impressions import impressions_schema
    from serve_helpers import SCHEMA, events
    from test_serve_e2e import CONTEXT, FEATURES, _expected

    base, home, history = server["base"], server["home"], lineage_home["history"]
    until(lambda: scrape(base).get("driftline_serve_model_id") is not None, what="the served version's lineage")
    assert scrape(base)["driftline_serve_shadow_model_id"] == 0  # the newest blessed model is the served one

    sample = [{k: e[k] for k in FEATURES} for e in events(12, seed=21)]
    context = {k: sample[0][k] for k in CONTEXT}
    candidates = [{k: e[k] for k in FEATURES if k not in CONTEXT} for e in sample]
    merged = [{**context, **c} for c in candidates]

    def rank(request_id):
        r = httpx.post(f"{base}/v1/models/{NAME}:rank", json={"context": context, "candidates": candidates},
                       headers={"X-Request-Id": request_id}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def logged(request_id):
        return until(lambda: [e for e in read_impressions(home) if e["request_id"] == request_id] or None,
                     what=f"the impressions of {request_id}")

    rank("before-shadow")
    assert all("shadow_score" not in e and "shadow_model_id" not in e for e in logged("before-shadow"))

    candidate = record_model(history, newest_event_ms=T0_MS + 7_200_000, saved_model=serve_models[3])
    until(lambda: scrape(base)["driftline_serve_shadow_model_id"] == candidate, what="the shadow candidate")
    refused = record_model(history, newest_event_ms=T0_MS + 9_000_000, blessed=False, saved_model=serve_models[1])
    assert refused > candidate

    served_expected = _expected(serve_models[2], merged)
    shadow_expected = _expected(serve_models[3], merged)
    assert abs(served_expected - shadow_expected).max() > 1e-3  # two different models
    responses = {f"shadow-{i}": rank(f"shadow-{i}") for i in range(3)}
    schema = impressions_schema(SCHEMA)
    import json

    import numpy as np

    for request_id, response in responses.items():
        entries = logged(request_id)
        assert len(entries) == len(candidates)
        for entry in entries:
            index = response["impression_ids"].index(entry[SCHEMA.id_field])
            assert entry["model_version"] == response["model_version"] == 2
            assert entry["score"] == response["scores"][index]
            assert entry["shadow_model_id"] == candidate
            np.testing.assert_allclose(entry["shadow_score"], shadow_expected[index], rtol=1e-6)
            np.testing.assert_allclose(entry["score"], served_expected[index], rtol=1e-6)
            parsed = schema.parse(json.dumps(entry).encode())  # the log stays an ingestible stream
            assert parsed["shadow_score"] == entry["shadow_score"]
    m = scrape(base)
    assert m["driftline_serve_shadow_model_id"] == candidate  # the refused newer model did not replace it
    assert m["driftline_serve_shadow_scored_total"] >= 3 * len(candidates)
    assert m["driftline_serve_shadow_errors_total"] == 0


def test_shadow_scoring_without_the_impressions_log_is_refused_naming_the_fix(tmp_path, capsys):
    from pipelines import cli

    assert cli.main(["serve", "--home", str(tmp_path), "--shadow", "--no-impressions"]) == 2
    err = capsys.readouterr().err
    assert "shadow scoring logs the candidate's scores in the impressions log" in err and "--no-shadow" in err
