"""The join over Kafka topics: either stream may be a topic, with the event-log join's guarantees.

Against a real Kafka-protocol broker (Tansu, started on localhost for the session: tests/kafka_broker.py) and
the real client (confluent-kafka), through the join's own run (`join_run.run_join`, what JoinExampleGen's
executor calls) with the committed state passed between runs as the JSON that ML Metadata holds. A generator
writes impressions and outcomes whose fate it knows (clicks in the window, at its very end, duplicated,
outside it, before their impression, views, orphans); the same events go to event logs and to topics
(records keyed by impression id, as a producer partitions them), and the joins must agree with each other
and with the generator. The TFX runs with SIGKILLs over topics are in test_join_exactly_once.py.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import random
import zlib

import pytest

from join_helpers import impression_schema, join_config, outcome_schema
from kafka_broker import tansu  # noqa: F401  (the session fixture)

from components.event_log import EventLogWriter, Position
from components.kafka_log import KafkaOffsets, PartitionOffset
from components.streaming_example_gen import ingest, join, join_run, windowing
from components.streaming_example_gen.config import KafkaConfig
from components.streaming_example_gen.join_config import JoinStreamConfig
from pipelines.config import ConfigError

SPAN_MS, LATENESS_MS, W_MS, ORPHAN_S = 60_000, 5_000, 10_000, 30
BASE_MS = 1_767_225_600_000  # 2026-01-01, a whole number of spans
WINDOW = windowing.Window(SPAN_MS, LATENESS_MS, 0.2)
IMP_PARTITIONS, OUT_PARTITIONS = 3, 2
ATTRIBUTED, LATE, ORPHAN, OUTSIDE, DUPLICATE, NOT_COUNTED, BEFORE = (
    None, "late outcome", "orphan outcome", "outcome outside the attribution window", "duplicate outcome",
    "outcome type not counted", "outcome before its impression")
_topics = itertools.count()


# -- the generator: what was written is the truth ---------------------------------------------------------------

@dataclasses.dataclass
class Truth:
    impressions: list
    outcomes: list
    label: dict  # impression id -> 0/1
    fate: collections.Counter  # (outcome id, expected dead-letter kind or None: attributed) -> count


def generate(n: int, seed: int = 7) -> Truth:
    """`n` impressions a second apart from BASE_MS and their outcomes, then a flush far ahead (impressions and
    views 3 spans on) that closes every window before it. Outcomes are in event-time order."""
    rng = random.Random(seed)
    imps, outs, label, fate = [], [], {}, collections.Counter()
    for k in range(n):
        iid, t = f"i{k}", BASE_MS + k * 1000 + rng.randint(0, 999)
        imps.append({"impression_id": iid, "ts": t, "ad_id": f"ad{rng.randint(0, 5)}"})
        label[iid] = 0
        r, oid = rng.random(), f"o{k}"
        if r < 0.3:
            delay = rng.choice([W_MS, 0, rng.randint(1, W_MS - 1)])  # both edges of the window count
            outs.append((oid, iid, t + delay, "click", ATTRIBUTED))
            label[iid] = 1
            if rng.random() < 0.2:
                outs.append((oid, iid, t + delay, "click", DUPLICATE))  # a retry: the same outcome id again
        elif r < 0.4:
            outs.append((oid, iid, t + rng.choice([W_MS + 1, rng.randint(W_MS + 2, 2 * W_MS)]), "click", OUTSIDE))
        elif r < 0.6:
            outs.append((oid, iid, t + rng.randint(0, W_MS), "view", NOT_COUNTED))
        elif r < 0.65:
            outs.append((oid, iid, t - rng.randint(1, 2000), "click", BEFORE))
    for g in range(4):  # outcomes of impressions that never appear
        outs.append((f"ghost{g}", f"ghost-imp{g}", BASE_MS + rng.randint(0, n * 1000), "click", ORPHAN))
    flush = BASE_MS + n * 1000 + 3 * SPAN_MS
    for k in range(2):
        imps.append({"impression_id": f"flush{k}", "ts": flush + k, "ad_id": "f"})
        outs.append((f"flush-view{k}", f"flush{k}", flush + k, "view", NOT_COUNTED))
    outs.sort(key=lambda o: o[2])  # stable: a duplicate stays after its original
    outcomes = [{"outcome_id": oid, "impression_id": iid, "ts": t, "outcome_type": kind} for oid, iid, t, kind, _ in outs]
    return Truth(imps, outcomes, label, collections.Counter((o[0], o[4]) for o in outs))


# -- the two kinds of stream ------------------------------------------------------------------------------------------

class LogStream:
    def __init__(self, root, name):
        self.log_dir = str(root / name)
        os.makedirs(self.log_dir, exist_ok=True)

    def config(self, schema):
        return JoinStreamConfig(self.log_dir, schema)

    def write(self, events):
        with EventLogWriter(self.log_dir, max_segment_bytes=4096) as w:  # several segments
            w.write_events(events)


class TopicStream:
    """A topic whose records are keyed by impression id: all of one impression's outcomes in one partition."""

    def __init__(self, broker, name, partitions):
        self.broker, self.partitions = broker, partitions
        self.topic = f"{name}-{next(_topics)}-{random.randrange(1 << 30)}"
        broker.create_topic(self.topic, partitions)

    def kafka(self, **kw):
        return KafkaConfig(bootstrap_servers=self.broker.bootstrap, topic=self.topic, poll_timeout_s=1.0,
                           read_timeout_s=10.0, **kw)

    def config(self, schema, **kw):
        return JoinStreamConfig(schema=schema, kind="kafka", kafka=self.kafka(**kw))

    def write(self, events, time_in_record: bool = False):
        """`time_in_record`: the event time goes in the record's timestamp, the payload's `ts` is a wrong 1."""
        self.broker.produce(self.topic, [(zlib.crc32(e["impression_id"].encode()) % self.partitions,
                                          json.dumps(dict(e, ts=1) if time_in_record else e).encode(),
                                          e["ts"] if time_in_record else None) for e in events])


def _streams(kind, root, broker, name, partitions):
    return LogStream(root, name) if kind == "log" else TopicStream(broker, name, partitions)


# -- running the join as JoinExampleGen does, the state through its JSON (what ML Metadata holds) ----------------------

@dataclasses.dataclass
class Joined:
    examples: dict = dataclasses.field(default_factory=dict)  # impression id -> (span, label)
    twice: list = dataclasses.field(default_factory=list)
    dead: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # (outcome id, kind)
    dead_rows: list = dataclasses.field(default_factory=list)
    attributed: int = 0
    states: list = dataclasses.field(default_factory=list)  # each published run's committed JSON
    span_uris: list = dataclasses.field(default_factory=list)
    last: object = None  # the newest run's JoinResult, published or not

    @property
    def state(self) -> join.JoinState:
        return join.JoinState.from_json(self.states[-1] if self.states else None)


def run_until_idle(config, root, joined: Joined, max_runs: int = 6) -> Joined:
    """Runs the join until a run emits nothing; each emitting run is 'published': its state committed as JSON."""
    for _ in range(max_runs):
        out = str(root / f"run-{len(joined.states)}")
        run = join_run.run_join(config, WINDOW, joined.state, out, dedup_span_uris=joined.span_uris)
        joined.last = run.result
        if not run.result.emits:
            return joined
        for e in run.result.examples:
            if e.impression_id in joined.examples:
                joined.twice.append(e.impression_id)
            joined.examples[e.impression_id] = (e.span, e.label)
            joined.attributed += e.outcomes
        for d in run.result.dead_letters:
            oid = json.loads(d.line)["outcome_id"] if d.stream == "outcomes" else d.stream
            joined.dead[(oid, d.kind)] += 1
            joined.dead_rows.append(d.to_row())
        joined.states.append(run.committed.to_json())
        joined.span_uris += [ingest.span_dir(out, s) for s in run.result.emitted_spans]
    raise AssertionError("the join kept emitting")


def assert_matches_truth(joined: Joined, truth: Truth) -> None:
    assert not joined.twice, f"impressions emitted twice: {joined.twice[:5]}"
    expected = {i: l for i, l in truth.label.items() if not i.startswith("flush")}
    assert {i: l for i, (_, l) in joined.examples.items()} == expected
    assert all(span == ts // SPAN_MS for (span, _), ts in
               ((joined.examples[e["impression_id"]], e["ts"]) for e in truth.impressions if e["impression_id"] in expected))
    want_dead = collections.Counter({k: n for k, n in truth.fate.items() if k[1] is not None})
    assert joined.dead == want_dead
    assert joined.attributed == sum(n for (_, kind), n in truth.fate.items() if kind is None)


def _write_all(streams, truth, until_ms=None, since_ms=None):
    imp, out = streams

    def pick(events):
        return [e for e in events if (since_ms is None or e["ts"] >= since_ms) and (until_ms is None or e["ts"] < until_ms)]
    imp.write(pick(truth.impressions))
    out.write(pick(truth.outcomes))


@pytest.fixture(scope="module")
def truth():
    return generate(240)


@pytest.fixture(scope="module")
def through_logs(truth, tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    streams = (LogStream(root, "imp"), LogStream(root, "out"))
    _write_all(streams, truth)
    config = join_config(streams[0].log_dir, streams[1].log_dir, orphan_bound_seconds=ORPHAN_S)
    joined = run_until_idle(config, root, Joined())
    assert_matches_truth(joined, truth)
    return joined


# -- config and state: no broker ---------------------------------------------------------------------------------------

def test_a_kafka_stream_is_configured_as_the_kafka_source_is_and_round_trips():
    from components.streaming_example_gen.join_component import join_config_from_json, join_config_to_json

    kafka = KafkaConfig("b:9092", "impressions", partitions=(0, 1), client_config={"security.protocol": "SASL_SSL"},
                        secret_env={"sasl.password": "KAFKA_SASL_PASSWORD"})
    cfg = dataclasses.replace(join_config("unused", "out"),
                              impressions=JoinStreamConfig(schema=impression_schema(), kind="kafka", kafka=kafka))
    cfg.validate()
    assert join_config_from_json(join_config_to_json(cfg)) == cfg
    assert "KAFKA_SASL_PASSWORD" in join_config_to_json(cfg)
    imp = cfg.impressions
    cases = [
        (JoinStreamConfig(schema=imp.schema, kind="kafka"), "join.impressions.kafka=KafkaConfig"),
        (JoinStreamConfig("dir", imp.schema, kind="kafka", kafka=kafka), "join.impressions.kind is 'kafka' but "
                                                                         "join.impressions.log_dir is set"),
        (JoinStreamConfig("dir", imp.schema, kafka=kafka), "set join.impressions.kind='kafka'"),
        (JoinStreamConfig(schema=imp.schema), "join.impressions.log_dir is empty"),
        (JoinStreamConfig("dir"), "join.impressions.schema is not set"),
        (JoinStreamConfig(schema=imp.schema, kind="kafka", kafka=dataclasses.replace(kafka, topic="")),
         "join.impressions.kafka.topic is empty"),
        # A secret in client_config is refused as for the source, naming the join stream's settings.
        (JoinStreamConfig(schema=imp.schema, kind="kafka", kafka=dataclasses.replace(
            kafka, client_config={"sasl.password": "hunter2"})), "join.impressions.kafka.secret_env"),
    ]
    for stream, fix in cases:
        with pytest.raises(ConfigError, match=fix.replace("(", r"\(").replace(".", r"\.")) as e:
            dataclasses.replace(cfg, impressions=stream).validate()
        assert "hunter2" not in str(e.value)
    same = dataclasses.replace(cfg, outcomes=JoinStreamConfig(schema=outcome_schema(), kind="kafka",
                                                              kafka=dataclasses.replace(kafka, partitions=(1,))))
    with pytest.raises(ConfigError, match="the same Kafka topic"):
        same.validate()
    other = dataclasses.replace(same, outcomes=dataclasses.replace(same.outcomes, kafka=dataclasses.replace(
        kafka, partitions=(2,))))
    other.validate()  # other partitions of one topic are other streams


def test_the_committed_state_holds_per_partition_vectors_and_round_trips():
    end = KafkaOffsets.of("imp", {0: 40, 1: 7, 2: 13})
    # The resume vector: each partition back to its first pending record; one with none resumes at its end.
    resume = join.resume_frontier(end, [PartitionOffset(0, 31), PartitionOffset(2, 12), PartitionOffset(0, 35)])
    assert resume == KafkaOffsets.of("imp", {0: 31, 1: 7, 2: 12})
    assert join.resume_frontier(end, []) == end
    assert join.resume_frontier(Position("s1", 90), [Position("s1", 40), Position("s0", 70)]) == Position("s0", 70)
    state = join.JoinState(imp_end=end, imp_resume=resume, out_end=Position("segment-1", 300),
                           out_resume=Position("segment-0", 20), imp_max_event_time_ms=5, out_max_event_time_ms=6,
                           last_span=2, pending_outcomes=(Position("segment-0", 20), Position("segment-1", 10)),
                           imp_cutoffs=((end, 99),), out_cutoff_ms=99)
    assert join.JoinState.from_json(state.to_json()) == state
    d = json.loads(state.to_json())
    assert d["imp_end"] == {"topic": "imp", "offsets": {"0": 40, "1": 7, "2": 13}}
    kafka_outs = dataclasses.replace(state, out_end=KafkaOffsets.of("out", {0: 9}), out_resume=KafkaOffsets.of(
        "out", {0: 3}), pending_outcomes=(PartitionOffset(0, 3), PartitionOffset(0, 5)))
    assert join.JoinState.from_json(kafka_outs.to_json()) == kafka_outs


# -- against the broker ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kinds", [("kafka", "kafka"), ("kafka", "log"), ("log", "kafka")])
def test_a_join_over_topics_gives_the_examples_labels_and_dead_letters_of_the_logs(kinds, truth, through_logs, tansu,
                                                                                   tmp_path):
    imp = _streams(kinds[0], tmp_path, tansu, "imp", IMP_PARTITIONS)
    out = _streams(kinds[1], tmp_path, tansu, "out", OUT_PARTITIONS)
    _write_all((imp, out), truth)
    config = dataclasses.replace(join_config("x", "y", orphan_bound_seconds=ORPHAN_S),
                                 impressions=imp.config(impression_schema()), outcomes=out.config(outcome_schema()))
    joined = run_until_idle(config, tmp_path, Joined())
    assert_matches_truth(joined, truth)
    assert joined.examples == through_logs.examples
    assert joined.dead == through_logs.dead and joined.attributed == through_logs.attributed
    state = joined.state
    for stream, end, resume in ((imp, state.imp_end, state.imp_resume), (out, state.out_end, state.out_resume)):
        if isinstance(stream, TopicStream):
            # The committed positions are the topic's per-partition vectors.
            assert isinstance(end, KafkaOffsets) and isinstance(resume, KafkaOffsets) and end.topic == stream.topic
            assert len(end.offsets) == stream.partitions
        else:
            assert isinstance(end, Position)
    # The flush impressions wait for their windows: the resume vector points at them, not at the end.
    if kinds[0] == "kafka":
        flush_parts = {zlib.crc32(f"flush{k}".encode()) % IMP_PARTITIONS for k in range(2)}
        behind = {p for p, o in state.imp_resume.offsets if o < state.imp_end.get(p)}
        assert behind == flush_parts
    # Dead letters say where each record is: topic, partition and offset.
    rows = [r for r in joined.dead_rows if r["stream"] == "outcomes"]
    if kinds[1] == "kafka":
        assert all(r["topic"] == out.topic and {"partition", "offset"} <= set(r) for r in rows)
        assert len({(r["partition"], r["offset"]) for r in rows}) == len(rows)
    else:
        assert all("segment" in r for r in rows)


def test_a_topic_whose_event_time_is_the_record_timestamp_joins_by_it(truth, through_logs, tansu, tmp_path):
    imp, out = TopicStream(tansu, "imp", IMP_PARTITIONS), TopicStream(tansu, "out", OUT_PARTITIONS)
    imp.write(truth.impressions)
    out.write(truth.outcomes, time_in_record=True)
    config = dataclasses.replace(join_config("x", "y", orphan_bound_seconds=ORPHAN_S),
                                 impressions=imp.config(impression_schema()),
                                 outcomes=out.config(outcome_schema(), event_time="record_timestamp"))
    joined = run_until_idle(config, tmp_path, Joined())
    assert_matches_truth(joined, truth)
    assert joined.examples == through_logs.examples and joined.dead == through_logs.dead


def test_a_restart_mid_stream_resumes_from_the_committed_vectors_losing_and_duplicating_nothing(truth, through_logs,
                                                                                                tansu, tmp_path):
    imp, out = TopicStream(tansu, "imp", IMP_PARTITIONS), TopicStream(tansu, "out", OUT_PARTITIONS)
    config = dataclasses.replace(join_config("x", "y", orphan_bound_seconds=ORPHAN_S),
                                 impressions=imp.config(impression_schema()), outcomes=out.config(outcome_schema()))
    half = BASE_MS + 130_000  # mid-span 2: span 0 closes, span 1's last windows are still open
    _write_all((imp, out), truth, until_ms=half)
    first = run_until_idle(config, tmp_path, Joined())
    assert first.states, "the first half published nothing"
    committed = first.states[-1]
    state = join.JoinState.from_json(committed)
    # Pending impressions are not held anywhere but in the topic: the resume vector is behind the end vector.
    assert any(o < state.imp_end.get(p) for p, o in state.imp_resume.offsets), committed
    assert state.pending_outcomes and all(isinstance(p, PartitionOffset) for p in state.pending_outcomes)
    # A second run, from nothing but the committed JSON (a new process would read it from ML Metadata).
    second = Joined(states=[committed], span_uris=list(first.span_uris))
    _write_all((imp, out), truth, since_ms=half)
    run_until_idle(config, tmp_path, second)
    both = Joined(examples=dict(first.examples), dead=first.dead + second.dead,
                  attributed=first.attributed + second.attributed,
                  twice=first.twice + second.twice + sorted(set(first.examples) & set(second.examples)))
    both.examples.update(second.examples)
    assert_matches_truth(both, truth)
    assert both.examples == through_logs.examples and both.dead == through_logs.dead


def test_a_stalled_topic_holds_the_join_back_and_status_says_so(tansu, tmp_path):
    from pipelines.config import default_config
    from pipelines.controller import joined_spans

    truth = generate(150, seed=3)
    imp, out = TopicStream(tansu, "imp", IMP_PARTITIONS), TopicStream(tansu, "out", OUT_PARTITIONS)
    join_cfg = dataclasses.replace(join_config("x", "y", orphan_bound_seconds=ORPHAN_S),
                                   impressions=imp.config(impression_schema()), outcomes=out.config(outcome_schema()))
    base = default_config(str(tmp_path / "home"))
    config = base.replace(
        window=dataclasses.replace(base.window, span_seconds=SPAN_MS // 1000,
                                   allowed_lateness_seconds=LATENESS_MS // 1000, max_future_seconds=None),
        transform=dataclasses.replace(base.transform, numeric={}),
        gate=dataclasses.replace(base.gate, slice_feature=None)).with_join(join_cfg).validate()
    # In join mode the pipeline's source is the impressions topic.
    assert config.source.kind == "kafka" and config.source.kafka == join_cfg.impressions.kafka
    # The impressions run far ahead; the outcomes topic stalls after 40 s of event time.
    imp.write(truth.impressions)
    out.write([o for o in truth.outcomes if o["ts"] < BASE_MS + 40_000])
    stalled = run_until_idle(join_cfg, tmp_path, Joined())
    assert not stalled.states, "a span was joined though the outcomes had not passed its windows"
    result = stalled.last
    assert result.held_back_by == "outcomes" and result.pending_impressions == 150 + 2
    assert result.outcomes_watermark_ms < BASE_MS + 40_000 < result.impressions_watermark_ms
    due = joined_spans(config)
    assert not due.run and "held back by the outcomes stream's watermark" in due.why, due
    # The outcomes catch up: the join goes on, and the examples are the generator's.
    out.write([o for o in truth.outcomes if o["ts"] >= BASE_MS + 40_000])
    assert joined_spans(config).run
    assert_matches_truth(run_until_idle(join_cfg, tmp_path, stalled), truth)


def test_an_unreachable_topic_and_a_switched_source_stop_naming_the_stream(tansu, tmp_path):
    imp, out = TopicStream(tansu, "imp", 1), LogStream(tmp_path, "out")
    config = dataclasses.replace(join_config("x", out.log_dir, orphan_bound_seconds=ORPHAN_S),
                                 impressions=imp.config(impression_schema()), outcomes=out.config(outcome_schema()))
    missing = dataclasses.replace(config, impressions=JoinStreamConfig(
        schema=impression_schema(), kind="kafka", kafka=dataclasses.replace(imp.kafka(), topic="no-such-topic")))
    from components.kafka_log import KafkaSourceError

    with pytest.raises(KafkaSourceError, match=r"join\.impressions \(Kafka topic 'no-such-topic'") as e:
        join_run.run_join(missing, WINDOW, join.JoinState(), str(tmp_path / "o"), write=False)
    assert "set join.impressions.kafka.topic to an existing topic" in str(e.value), str(e.value)
    # `driftline run` checks both streams before TFX records anything.
    from pipelines import local_runner
    from pipelines.config import default_config

    local_runner.preflight(default_config(str(tmp_path / "home")).with_join(config))
    with pytest.raises(KafkaSourceError, match=r"join\.impressions \(Kafka topic 'no-such-topic'.*Create it"):
        local_runner.preflight(default_config(str(tmp_path / "home")).with_join(missing))
    # A state committed over an event log is not read as a topic's (nor the other way round).
    logged = join.JoinState(imp_end=Position("segment-000000000000.jsonl", 10),
                            imp_resume=Position("segment-000000000000.jsonl", 0))
    with pytest.raises(KafkaSourceError, match="A pipeline keeps its source for its whole life"):
        join_run.run_join(config, WINDOW, logged, str(tmp_path / "o"), write=False)


def test_a_config_file_joins_a_topic_to_a_log_and_its_source_is_the_topic(tmp_path, monkeypatch):
    from pipelines import two_streams
    from pipelines.config_file import dump_config, load_config, loads_config
    from components import kafka_log
    from pipelines.serve.impressions import ImpressionLog, KafkaImpressions
    from pipelines.serve.server import options_from_config

    (tmp_path / "outcomes.json").write_text(two_streams.outcomes_schema().to_json())
    path = tmp_path / "join.yaml"
    path.write_text(f"""
home: {tmp_path / 'home'}
join:
  impressions:
    kind: kafka
    kafka: {{bootstrap_servers: 'broker:9092', topic: impressions, partitions: [0, 1],
             client_config: {{security.protocol: SASL_SSL, sasl.mechanism: PLAIN, sasl.username: u}},
             secret_env: {{sasl.password: KAFKA_SASL_PASSWORD}}}}
    schema: {json.dumps(two_streams.impressions_schema().to_dict())}
  outcomes:
    log_dir: {tmp_path / 'out'}
    schema_file: outcomes.json
  attribution_window_seconds: 120
""")
    config = load_config(str(path))
    imp = config.join.impressions
    assert imp.is_kafka and imp.kafka.topic == "impressions" and imp.kafka.partitions == (0, 1)
    assert imp.kafka.secret_env == {"sasl.password": "KAFKA_SASL_PASSWORD"} and not imp.log_dir
    # `source` left out: the impressions topic, with the joined examples' schema.
    assert config.source.kind == "kafka" and config.source.kafka == imp.kafka and not config.source.log_dir
    assert config.source.schema == config.join.examples_schema
    assert loads_config(dump_config(config), base_dir=str(tmp_path)) == config
    # A source that is not the impressions topic is refused, naming the fix.
    with pytest.raises(ConfigError, match=r"leave source \(and --log, --kafka-\*\) out"):
        config.replace(source=dataclasses.replace(config.source, kafka=dataclasses.replace(
            imp.kafka, topic="other"))).validate()
    with pytest.raises(ConfigError, match="join.impressions.kafka.secret_env") as e:
        loads_config(path.read_text().replace("secret_env: {sasl.password: KAFKA_SASL_PASSWORD}", "secret_env: {}")
                     .replace("sasl.username: u}", "sasl.username: u, sasl.password: hunter2}"), base_dir=str(tmp_path))
    assert "hunter2" not in str(e.value)
    # The server of a join over an impressions topic writes that topic, with the stream's secrets by reference:
    # the writer process's target names the variable, and resolves its value only when it connects.
    sink = options_from_config(config, "127.0.0.1", 0, None, False).impressions_dir
    assert isinstance(sink, KafkaImpressions) and sink.topic == "impressions"
    assert sink.bootstrap_servers == "broker:9092" and sink.client_config["sasl.username"] == "u"
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-value")
    log = ImpressionLog(sink)  # nothing submitted: its writer process is never started
    try:
        target = json.loads(log._target_json())
    finally:
        log.close()
    assert target["secret_env"] == {"sasl.password": "KAFKA_SASL_PASSWORD"}
    assert "s3cret-value" not in json.dumps(target)
    settings = kafka_log.producer_settings(target["bootstrap_servers"], target["client_config"],
                                           target["secret_env"], target["secret_files"])
    assert settings["sasl.password"] == "s3cret-value" and settings["sasl.username"] == "u"


def test_a_re_read_impression_wins_over_a_new_duplicate_in_a_lower_partition(tansu, tmp_path):
    """Records a published run read are read before new ones, whatever their partition: the first reading of an
    impression stays its example and a later copy is a duplicate dead letter, as in a log."""
    imp, out = TopicStream(tansu, "imp", 2), TopicStream(tansu, "out", 1)
    config = dataclasses.replace(join_config("x", "y", orphan_bound_seconds=ORPHAN_S),
                                 impressions=imp.config(impression_schema()), outcomes=out.config(outcome_schema()))
    t = BASE_MS + 70_000  # span 1

    def impression(iid, ts, ad, partition):
        return partition, json.dumps({"impression_id": iid, "ts": ts, "ad_id": ad}).encode(), None

    def view(iid, ts):
        return 0, json.dumps({"outcome_id": f"v-{iid}", "impression_id": iid, "ts": ts,
                              "outcome_type": "view"}).encode(), None
    # Span 0 closes, span 1 (holding "dup" in partition 1) stays open.
    tansu.produce(imp.topic, [impression("a", BASE_MS + 1000, "ad1", 0), impression("dup", t, "first", 1),
                              impression("b", t + 10_000, "ad1", 0)])
    tansu.produce(out.topic, [view("b", t + 10_000)])
    first = run_until_idle(config, tmp_path, Joined())
    assert list(first.examples) == ["a"]
    state = first.state
    assert state.imp_resume.get(1) == 0 and state.imp_resume.get(0) == 1, state.to_json()
    # A copy of "dup" lands in partition 0, read before partition 1 if the order were by partition alone.
    tansu.produce(imp.topic, [impression("dup", t + 5, "second", 0), impression("c", BASE_MS + 300_000, "f", 0)])
    tansu.produce(out.topic, [view("c", BASE_MS + 300_000)])
    second = Joined(states=list(first.states), span_uris=list(first.span_uris))
    run_until_idle(config, tmp_path, second)
    dead = [r for r in second.dead_rows if r["stream"] == "impressions"]
    assert [(r["partition"], json.loads(r["line"])["ad_id"]) for r in dead] == [(0, "second")], dead
    assert dead[0]["reason"].startswith("duplicate impression")
    assert sorted(second.examples) == ["b", "dup"]


def test_the_off_policy_estimate_says_why_it_makes_none_over_an_impressions_topic():
    from components.evaluator import off_policy_run
    from components.evaluator.config import GateConfig

    record = off_policy_run.estimate_span("", impression_schema(), 2, "position", "/nonexistent", {
        "span_start_ms": 0, "span_end_ms": SPAN_MS, "start_position": json.dumps(
            {"imp_resume": {"topic": "imp", "offsets": {"0": 3}}})}, "eval", "label", "/nonexistent", GateConfig())
    assert record == {"why": "the impressions are a Kafka topic (join.impressions.kind: kafka): the off-policy "
                             "estimate reads them from an event log only"}
