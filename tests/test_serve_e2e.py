"""`driftline serve` end to end, over real sockets (#20).

The real server process (`python -m pipelines.cli serve`) on a free loopback
port, on a home whose serving folder holds real SavedModels exported by
`pipelines.ads_model.export_serving_model` and published by the pusher's own
`serving.push`. Requests are real HTTP (httpx, raw sockets for what httpx
will not send). Expectations come from the exported models themselves,
called in this process through `serving_default` on tf.Examples: the path
TF Serving and the evaluator use, not the server's.
"""
import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from serve_helpers import SCHEMA, events, running_server

NAME = "driftline"  # the default config's pipeline name: the model name
FEATURES = ("user_id", "ad_id", "ad_category", "device", "hour_of_day", "price")
CONTEXT = ("user_id", "device", "hour_of_day")


@pytest.fixture(scope="module")
def models(serve_models):
    return serve_models


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    from components.blessing_pusher import serving

    home = str(tmp_path_factory.mktemp("serve_home"))
    serving.push(models[1], os.path.join(home, "serving"))
    # Exploring off: these tests check the score order (tests/test_serve_routing.py checks exploring).
    with running_server(home, "--poll-seconds", "0.2", "--max-body-bytes", str(1 << 20),
                        "--body-timeout-seconds", "2", "--exploration-rate", "0") as s:
        yield s


def _client(server):
    return httpx.Client(base_url=server["base"], timeout=30)


def _expected(model_dir, items):
    """Scores of `items` by the exported model's serving_default on tf.Examples (no server code involved)."""
    import tensorflow as tf

    from components.streaming_example_gen.example_codec import ExampleEncoder

    encoder = ExampleEncoder(SCHEMA)
    filler = {SCHEMA.id_field: "x", SCHEMA.event_time_field: 0}
    serialized = [encoder.encode({**filler, **item}) for item in items]
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    return fn(examples=tf.constant(serialized))["probability"].numpy().reshape(-1)


@pytest.fixture(scope="module")
def sample():
    return [{k: e[k] for k in FEATURES} for e in events(64, seed=9)]


def test_predict_rank_status_and_metrics(server, models, sample):
    with _client(server) as client:
        status = client.get(f"/v1/models/{NAME}")
        assert status.status_code == 200
        assert status.json() == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
        expected = _expected(models[1], sample)
        assert np.ptp(expected) > 0

        rows = client.post(f"/v1/models/{NAME}:predict", json={"instances": sample})
        assert rows.status_code == 200, rows.text
        body = rows.json()
        assert body["model_version"] == 1 and len(body["impression_ids"]) == len(sample)
        np.testing.assert_allclose(body["predictions"], expected, rtol=1e-6)

        columns = client.post(f"/v1/models/{NAME}:predict",
                              json={"inputs": {k: [e[k] for e in sample] for k in FEATURES}})
        assert columns.status_code == 200, columns.text
        assert columns.json()["predictions"] == body["predictions"]

        # One user, many ads: the context is merged into every candidate.
        context = {k: sample[0][k] for k in CONTEXT}
        candidates = [{k: e[k] for k in FEATURES if k not in CONTEXT} for e in sample]
        ranked = client.post(f"/v1/models/{NAME}:rank", json={"context": context, "candidates": candidates},
                             headers={"X-Request-Id": "rank-1"})
        assert ranked.status_code == 200, ranked.text
        r = ranked.json()
        want = _expected(models[1], [{**context, **c} for c in candidates])
        np.testing.assert_allclose(r["scores"], want, rtol=1e-6)
        assert r["request_id"] == "rank-1" and r["model_version"] == 1
        assert sorted(r["order"]) == list(range(len(candidates)))
        assert [r["scores"][i] for i in r["order"]] == sorted(r["scores"], reverse=True)

        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        text = metrics.text
        assert 'driftline_serve_requests_total{code="200",endpoint="rank"}' in text
        assert "driftline_serve_model_version 1.0" in text
        assert "driftline_serve_request_latency_seconds_bucket" in text
        assert "driftline_serve_model_age_seconds" in text
        assert client.get("/healthz").json() == {"status": "ok", "model_version": 1}


def _raw_http(port: int, head: bytes, body: bytes = b"", wait: float = 10.0) -> bytes:
    """Sends `head` and `body` as they are, returns what the server answers before closing or `wait`."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        chunks = []
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except socket.timeout:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("body, status, words", [
    ({"instances": [{"user_id": "u", "ad_id": "a", "ad_category": "c", "device": "d", "hour_of_day": "nine",
                     "price": 1.0}]}, 400, ["instances[0]", "'hour_of_day'", "expected int"]),
    ({"instances": [{"user_id": "u", "ad_id": "a", "ad_category": "c", "device": "d", "hour_of_day": 9}]},
     400, ["instances[0]", "missing required field 'price'"]),
    ({"instances": [{"user_id": "u", "ad_id": "a", "ad_category": "c", "device": "d", "hour_of_day": 9,
                     "price": 1e300}]}, 400, ["'price'", "float32"]),
    ({"inputs": {"user_id": ["u", "v"], "price": [1.0]}}, 400, ["columns differ in length"]),
    ({"instances": []}, 400, ["instances", "empty list"]),
    ({"rows": []}, 400, ["'instances'", "'inputs'"]),
    ([1, 2], 400, ["expected a JSON object"]),
])
def test_bad_predict_requests_get_a_400_naming_the_field(server, body, status, words):
    with _client(server) as client:
        response = client.post(f"/v1/models/{NAME}:predict", json=body)
        assert response.status_code == status, response.text
        for word in words:
            assert word in response.json()["error"]


def test_bad_rank_requests_and_hostile_bodies_leave_the_server_up(server, sample):
    port = server["port"]
    with _client(server) as client:
        empty = client.post(f"/v1/models/{NAME}:rank", json={"context": {"user_id": "u"}, "candidates": []})
        assert empty.status_code == 400 and "candidates: empty list" in empty.json()["error"]
        missing = client.post(f"/v1/models/{NAME}:rank", json={"context": {"user_id": "u"}})
        assert missing.status_code == 400 and "candidates" in missing.json()["error"]
        wrong = client.post(f"/v1/models/{NAME}:rank", json={"context": {}, "candidates": [{**sample[0], "price": "x"}]})
        assert wrong.status_code == 400 and "candidates[0]: field 'price'" in wrong.json()["error"]
        assert client.post(f"/v1/models/{NAME}:rank", content=b"{not json").status_code == 400
        assert client.post(f"/v1/models/nope:rank", json={}).status_code == 404
        assert client.post(f"/v1/models/{NAME}:explain", json={}).status_code == 404

        # A declared 100 MB body: refused from its Content-Length, before a byte of it is sent.
        answer = _raw_http(port, (f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\n"
                                  f"Content-Type: application/json\r\nContent-Length: {100 << 20}\r\n\r\n").encode())
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        # A chunked body with no length: refused once it passes the limit (1 MiB here), not read to its end.
        def chunks():
            for _ in range(100):
                yield b" " * (256 << 10)
        big = client.post(f"/v1/models/{NAME}:predict", content=chunks())
        assert big.status_code == 413, big.text
        # A slow client: a body that never comes gets a 408 after --body-timeout-seconds (2 s here).
        started = time.monotonic()
        answer = _raw_http(port, (f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Length: 100\r\n\r\n").encode(), b'{"inst', wait=20)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 15

        assert server["proc"].poll() is None
        assert client.get("/healthz").status_code == 200
        ok = client.post(f"/v1/models/{NAME}:predict", json={"instances": sample[:2]})
        assert ok.status_code == 200
        text = client.get("/metrics").text
        assert 'driftline_serve_requests_total{code="413",endpoint="predict"}' in text


def _read_impressions(home):
    import json

    folder = os.path.join(home, "impressions")
    lines = []
    # The writer process creates the folder with its first batch, a moment after the first request.
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.endswith(".jsonl"):
            with open(os.path.join(folder, name), "rb") as f:
                lines += [json.loads(line) for line in f if line.strip()]
    return lines


def test_hot_swap_under_load_then_the_impressions_log(server, models, sample):
    """Two pushes while a client ranks without pause: no request fails, every response names its version,
    the version changes 1 -> 2 -> 3, and the impressions log holds each scored candidate with its scorer."""
    from components.blessing_pusher import serving

    context = {k: sample[0][k] for k in CONTEXT}
    candidates = [{k: e[k] for k in FEATURES if k not in CONTEXT} for e in sample[:20]]
    merged = [{**context, **c} for c in candidates]
    expected = {v: _expected(models[v], merged) for v in (1, 2, 3)}
    responses, failures = [], []
    stop = threading.Event()

    def client_loop():
        with _client(server) as client:
            i = 0
            while not stop.is_set():
                try:
                    r = client.post(f"/v1/models/{NAME}:rank", json={"context": context, "candidates": candidates},
                                    headers={"X-Request-Id": f"swap-{i}"})
                    if r.status_code != 200:
                        failures.append((r.status_code, r.text))
                    else:
                        responses.append(r.json())
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                i += 1

    def wait_for(version):
        deadline = time.monotonic() + 120
        while not responses or responses[-1]["model_version"] != version:
            assert not failures, failures[:3]
            assert time.monotonic() < deadline, f"the server did not swap to version {version}"
            time.sleep(0.05)
        seen = len(responses)
        while len(responses) < seen + 5:  # a few requests on it
            time.sleep(0.05)

    thread = threading.Thread(target=client_loop)
    thread.start()
    try:
        wait_for(1)
        assert serving.push(models[2], server["serving_dir"]).version == 2
        wait_for(2)
        assert serving.push(models[3], server["serving_dir"]).version == 3
        wait_for(3)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    versions = [r["model_version"] for r in responses]
    assert versions == sorted(versions) and set(versions) == {1, 2, 3}
    for r in responses:  # each response was scored whole by the version it names
        np.testing.assert_allclose(r["scores"], expected[r["model_version"]], rtol=1e-6)

    # The impressions log: one line per scored candidate, with the version that scored it.
    by_id = {r["request_id"]: r for r in responses}
    deadline = time.monotonic() + 30
    while True:
        logged = [e for e in _read_impressions(server["home"]) if e["request_id"] in by_id]
        if len(logged) >= len(by_id) * len(candidates) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(logged) == len(by_id) * len(candidates)
    assert len({e[SCHEMA.id_field] for e in logged}) == len(logged)  # unique impression ids
    for entry in logged:
        response = by_id[entry["request_id"]]
        index = response["impression_ids"].index(entry[SCHEMA.id_field])
        assert entry["model_version"] == response["model_version"]
        assert entry["score"] == response["scores"][index]
        assert entry["position"] == response["order"].index(index)
        # The features, read back, are what was sent.
        assert {k: entry[k] for k in FEATURES} == merged[index]


def test_logged_impressions_are_a_stream_and_give_back_the_served_score(server, models):
    """The impressions log parses with `impressions_schema` (as StreamingExampleGen parses a stream), and its
    events, encoded as ingestion encodes them and run through the model's serving_default (the transform
    graph on tf.Examples), give exactly the score the server logged: the model saw what the log holds."""
    import tensorflow as tf

    from components.streaming_example_gen.example_codec import ExampleEncoder
    from pipelines.serve.impressions import impressions_schema

    schema = impressions_schema(SCHEMA)
    logged = _read_impressions(server["home"])
    assert logged
    folder = os.path.join(server["home"], "impressions")
    lines = [line for name in sorted(os.listdir(folder)) if name.endswith(".jsonl")
             for line in open(os.path.join(folder, name), "rb") if line.strip()]
    parsed = [schema.parse(line) for line in lines]
    assert all(p[SCHEMA.label_field] is None for p in parsed)  # no outcome yet
    encoder = ExampleEncoder(schema)
    for version in sorted({p["model_version"] for p in parsed}):
        mine = [p for p in parsed if p["model_version"] == version]
        fn = tf.saved_model.load(models[version]).signatures["serving_default"]
        scores = fn(examples=tf.constant([encoder.encode(p) for p in mine]))["probability"].numpy().reshape(-1)
        # Equal to float32 rounding, not bit for bit: the server scored each request's candidates as one
        # batch, this call all of a version's impressions as another, and a batch of another size sums the
        # wide part's weights and the MLP's products in another order (1-2 ulp, as below).
        np.testing.assert_allclose(scores, np.array([p["score"] for p in mine], dtype=np.float32),
                                   rtol=1e-6, atol=0)


def test_streaming_example_gen_ingests_the_impressions_log(server, models, sample, tmp_path):
    """StreamingExampleGen's own ingest path (`ingest.run_ingest` over an `EventLogSource`, the Beam graph
    the component's executor runs) reads the server's impressions log with `impressions_schema`: every
    logged impression in a closed span comes out as one tf.Example, and those examples, through the serving
    version's `serving_default` (the transform graph on tf.Examples), give back exactly the logged score."""
    import glob
    import json

    import apache_beam as beam
    import tensorflow as tf

    from components.streaming_example_gen import ingest, windowing
    from components.streaming_example_gen.sources import EventLogSource
    from pipelines.serve.impressions import impressions_schema

    span_ms = 2000
    context = {k: sample[0][k] for k in CONTEXT}
    candidates = [{k: e[k] for k in FEATURES if k not in CONTEXT} for e in sample[:10]]
    with _client(server) as client:
        first = client.post(f"/v1/models/{NAME}:rank", json={"context": context, "candidates": candidates},
                            headers={"X-Request-Id": "ingest-1"})
        assert first.status_code == 200, first.text
        # A request in a later span closes every span before it (no allowed lateness); its own stays open.
        time.sleep(2 * span_ms / 1000 + 0.1)
        closer = client.post(f"/v1/models/{NAME}:rank", json={"context": context, "candidates": candidates[:1]},
                             headers={"X-Request-Id": "ingest-closer"})
        assert closer.status_code == 200, closer.text
    deadline = time.monotonic() + 30
    while not any(e["request_id"] == "ingest-closer" for e in _read_impressions(server["home"])):
        assert time.monotonic() < deadline, "the closer's impression was never logged"
        time.sleep(0.1)
    logged = {e[SCHEMA.id_field]: e for e in _read_impressions(server["home"]) if e["request_id"] != "ingest-closer"}
    assert {i for i in first.json()["impression_ids"]} <= set(logged)

    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    run = ingest.run_ingest(beam.Pipeline, source=EventLogSource(os.path.join(server["home"], "impressions"),
                                                                 chunk_bytes=1 << 16),
                            schema=impressions_schema(SCHEMA), window=windowing.Window(span_ms, 0, 0.2),
                            state=windowing.CommittedState(), output_root=str(out), work_dir=str(work))
    assert run.result is not None and run.result.decision.emitted_spans
    examples, dead = [], []
    for span in run.result.decision.emitted_spans:
        uri = ingest.span_dir(str(out), span)
        for path in glob.glob(os.path.join(uri, "Split-*", "*.tfrecord.gz")):
            examples += [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
        for path in glob.glob(os.path.join(uri, ingest.DEAD_LETTER_DIR, "*.jsonl")):
            dead += [json.loads(line) for line in open(path)]
    assert dead == []

    def feature(example, name):
        f = example.features.feature[name]
        return (list(f.bytes_list.value) or list(f.int64_list.value) or list(f.float_list.value))[0]

    parsed = [tf.train.Example.FromString(e) for e in examples]
    ids = [feature(p, SCHEMA.id_field).decode() for p in parsed]
    assert sorted(ids) == sorted(logged)  # one example per logged impression, the closer's still pending
    by_version = {}
    for raw, p, impression_id in zip(examples, parsed, ids):
        assert feature(p, "model_version") == logged[impression_id]["model_version"]
        by_version.setdefault(logged[impression_id]["model_version"], []).append((raw, impression_id))
    for version, rows in by_version.items():
        fn = tf.saved_model.load(models[version]).signatures["serving_default"]
        scores = fn(examples=tf.constant([raw for raw, _ in rows]))["probability"].numpy().reshape(-1)
        # The features are equal byte for byte (the examples' own); the scores to float32 rounding, since a
        # batch of another size and order sums the same products in another order (1 ulp, seen 1 in 630).
        np.testing.assert_allclose(scores, np.array([logged[i]["score"] for _, i in rows], dtype=np.float32),
                                   rtol=1e-6, atol=0)
