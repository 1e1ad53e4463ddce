"""The impressions log as a Kafka topic (#20): written through components/kafka_log.py's sink, read back by
StreamingExampleGen's own KafkaSource, against the real Kafka-protocol broker the Kafka tests use (Tansu,
tests/kafka_broker.py) and the real librdkafka client; a broker that is not there is counted, never fatal."""
import itertools
import random
import threading
import time

import httpx
from kafka_broker import tansu  # noqa: F401  (the session fixture)

from components.event_schema import ad_click_schema
from components.streaming_example_gen import windowing
from components.streaming_example_gen.sources import KafkaSource
from pipelines.config import KafkaConfig
from pipelines.serve.impressions import ImpressionLog, KafkaImpressions, impressions_schema

SCHEMA = ad_click_schema()
_topics = itertools.count()


def _topic(broker) -> str:
    name = f"impressions{next(_topics)}-{random.randrange(1 << 30)}"
    broker.create_topic(name, 1)
    return name


def _read_topic(broker, topic):
    """Every record of the topic, through KafkaSource's plan and read (what StreamingExampleGen runs)."""
    source = KafkaSource(KafkaConfig(bootstrap_servers=broker.bootstrap, topic=topic, poll_timeout_s=1.0))
    plan = source.plan(windowing.CommittedState())
    return [value for rng in plan.units for _, value, _ in source.read(rng)]


def _entry(i):
    return {"event_id": f"r-{i}", "event_time": 1_790_000_000_000 + i, "user_id": "u", "ad_id": f"a{i}",
            "ad_category": "c", "device": "d", "hour_of_day": 3, "price": 1.5, "request_id": f"q{i // 10}",
            "model_version": 1, "score": 0.25, "position": i % 10}


class Counts:
    def __init__(self):
        self.logged, self.dropped, self.lock = 0, {}, threading.Lock()

    def on_logged(self, n):
        with self.lock:
            self.logged += n

    def on_dropped(self, n, reason):
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n


def test_impressions_land_in_the_topic_and_the_kafka_source_reads_them_as_a_stream(tansu):
    topic = _topic(tansu)
    counts = Counts()
    log = ImpressionLog(KafkaImpressions(tansu.bootstrap, topic), on_logged=counts.on_logged,
                        on_dropped=counts.on_dropped)
    entries = [_entry(i) for i in range(30)]
    for r in range(3):
        batch = entries[r * 10:(r + 1) * 10]
        log.submit({k: [e[k] for e in batch] for k in batch[0]}, len(batch))
    log.close()
    assert counts.logged == 30 and counts.dropped == {}
    schema = impressions_schema(SCHEMA)
    parsed = [schema.parse(value) for value in _read_topic(tansu, topic)]
    optional = ("shadow_model_id", "shadow_score", "arm", "arm_propensity", "challenger_model_id", "model_id",
                "greedy_position", "explored", "propensity", "arm_latency_ms",
                "challenger_fallback")  # what these lines do not carry parses as None
    assert parsed == [{**e, "clicked": None, **{k: None for k in optional}} for e in entries]


def test_an_unreachable_broker_is_counted_and_the_writer_goes_on(tmp_path):
    from serve_helpers import free_port

    counts = Counts()
    log = ImpressionLog(KafkaImpressions(f"127.0.0.1:{free_port()}", "nowhere", message_timeout_ms=1000),
                        on_logged=counts.on_logged, on_dropped=counts.on_dropped)
    started = time.monotonic()
    log.submit({"event_id": ["a", "b", "c"], "score": [0.1, 0.2, 0.3]}, 3)
    assert time.monotonic() - started < 0.5  # submit never waits for the broker
    log.close()
    assert counts.logged == 0 and counts.dropped == {"write_error": 3}
    assert "3 of 3 lines were not delivered to Kafka topic 'nowhere'" in log.last_error


def test_the_server_logs_its_impressions_to_a_topic(tansu, serve_models, tmp_path):
    """The real server with --impressions-kafka-bootstrap/--impressions-kafka-topic: each scored candidate of a
    rank request is one record of the topic, with the score and version of the response."""
    import os

    from components.blessing_pusher import serving
    from serve_helpers import events, running_server

    topic = _topic(tansu)
    home = str(tmp_path / "home")
    serving.push(serve_models[1], os.path.join(home, "serving"))
    features = ("user_id", "ad_id", "ad_category", "device", "hour_of_day", "price")
    candidates = [{k: e[k] for k in features} for e in events(8, seed=4)]
    with running_server(home, "--impressions-kafka-bootstrap", tansu.bootstrap, "--impressions-kafka-topic",
                        topic) as server:
        r = httpx.post(f"{server['base']}/v1/models/driftline:rank", json={"context": {}, "candidates": candidates},
                       headers={"X-Request-Id": "kafka-1"}, timeout=30)
        assert r.status_code == 200, r.text
        response = r.json()
        deadline = time.monotonic() + 60
        while True:
            values = _read_topic(tansu, topic)
            if len(values) >= len(candidates) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # The writer process answers (and the counter moves) just after the records are delivered.
        want = f"driftline_serve_impressions_logged_total {float(len(candidates))}"
        while want not in (metrics := httpx.get(f"{server['base']}/metrics", timeout=10).text) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
    assert not os.path.exists(os.path.join(home, "impressions"))  # the topic instead of the folder
    schema = impressions_schema(SCHEMA)
    parsed = [schema.parse(v) for v in values]
    assert len(parsed) == len(candidates)
    for p in parsed:
        index = response["impression_ids"].index(p[SCHEMA.id_field])
        assert p["request_id"] == "kafka-1" and p["model_version"] == response["model_version"] == 1
        assert p["score"] == response["scores"][index] and p["position"] == response["order"].index(index)
        assert {k: p[k] for k in features} == candidates[index]
    assert want in metrics
