"""`driftline serve` and ML Metadata (#20): the served version's lineage in /metrics.

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

from serve_helpers import record_model, running_server

NAME = "driftline"
T0_MS = 1_790_000_000_000  # the newest event time of the first model's data


def scrape(base: str) -> dict:
    """{sample name: value} of the server's /metrics (label-less samples only)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels}


def until(predicate, timeout=60, what="the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def lineage_home(serve_models, tmp_path_factory):
    from components.blessing_pusher import serving
    from mlmd_history import History

    home = str(tmp_path_factory.mktemp("serve_lineage_home"))
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
