"""JoinExampleGen through TFX with SIGKILLs (DESIGN.md invariant 2, over two streams).

Two real event logs (EventLogWriter, 16 KiB segments, 4 KiB read chunks) grow round by round: impressions in
event-time order, and their outcomes: clicks inside the 10 s attribution window (some exactly at its end,
some duplicated by a retry, some logged a round before their impression), clicks outside it (some 1 ms
after), views (a type that does not count), outcomes of impressions that never appear (orphans) and, at the
very end, clicks that arrive after their impression's span was emitted (late). After each round
JoinExampleGen runs in a forked process (TFX LocalDagRunner, SQLite ML Metadata); most runs are SIGKILLed at a
random moment or around publishing. What the generator wrote is the truth the audit compares with, reading
only what ML Metadata says was published:

* every impression is in exactly one published span, its own, with the label the generator implies;
* every outcome line is either attributed once (the spans' attributed_count adds up) or a dead letter once,
  with the reason the generator implies; no span is published twice.

The same, over two Kafka topics of the Tansu broker (tests/kafka_broker.py; records keyed by impression id,
3 and 2 partitions): the committed positions are then per-partition offset vectors, and a dead letter names
its partition and offset.
"""
from __future__ import annotations

import collections
import json
import os
import random
import signal
import statistics
import sys
import time

import zlib

import pytest

import ingest_helpers as H
from join_helpers import JOIN_NODE_ID
from kafka_broker import tansu  # noqa: F401  (the session fixture)

SPAN_S, LATENESS_S, W_MS, ORPHAN_S = 60, 5, 10_000, 30
SPAN_MS = SPAN_S * 1000
PIPELINE = "join_exactly_once"
SEED = 20261205
MIN_KILLS, MIN_ROUNDS, MAX_ROUNDS = 6, 10, 30

ATTRIBUTED = None
LATE, ORPHAN, OUTSIDE, DUPLICATE, NOT_COUNTED = (
    "late outcome", "orphan outcome", "outcome outside the attribution window", "duplicate outcome",
    "outcome type not counted")


class JoinForkServer(H.ForkServer):
    def __init__(self, config: dict, stderr_path: str, timeout_s: float = 240.0):
        import subprocess

        here = os.path.dirname(os.path.abspath(__file__))
        bootstrap = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r); import join_helpers; "
                     "join_helpers.join_forkserver_main(sys.argv[1])" % (H.REPO_ROOT, here))
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", bootstrap, json.dumps(config)], cwd=H.REPO_ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, bufsize=1)
        self._expect("READY", timeout_s, stderr_path)


class TopicWriter:
    """Appends events to a topic, keyed by impression id (one impression's outcomes in one partition, in order),
    and remembers each record's (partition, offset) in write order."""

    def __init__(self, broker, topic: str, partitions: int):
        broker.create_topic(topic, partitions)
        self.broker, self.topic, self.partitions = broker, topic, partitions
        self.placed = []  # ((partition, offset), event)

    def write_events(self, events) -> None:
        if not events:
            return
        where = self.broker.produce(self.topic, [(zlib.crc32(e["impression_id"].encode()) % self.partitions,
                                                  json.dumps(e).encode(), None) for e in events])
        self.placed += list(zip(where, events))

    def kafka_settings(self) -> dict:
        return dict(bootstrap_servers=self.broker.bootstrap, topic=self.topic, poll_timeout_s=0.5, read_timeout_s=10.0)


class TwoStreams:
    """Writes both streams and remembers, per impression, its label, and per outcome, its expected fate."""

    def __init__(self, imps, outs, rng: random.Random):
        self.imps, self.outs = imps, outs  # EventLogWriter or TopicWriter
        self.rng = rng
        self.truth_label = {}  # impression id -> 0/1
        self.impression_time = {}
        self.fate = {}  # (outcome id, copy) -> expected dead-letter kind, or None: attributed
        self.held_impressions = []  # written next round, after their outcomes
        self.stragglers = []  # clicks written at the very end
        self.n = 0

    def _outcome(self, iid, t, kind="click", copy=0, oid=None):
        oid = oid or f"o{len(self.fate)}"
        return {"outcome_id": oid, "impression_id": iid, "ts": t, "outcome_type": kind}, (oid, copy)

    def round(self, start_ms: int, seconds: int) -> None:
        rng = self.rng
        imps, outs = list(self.held_impressions), []
        self.held_impressions = []
        for k in range(seconds):
            self.n += 1
            iid, t = f"i{self.n}", start_ms + k * 1000 + rng.randint(0, 999)
            self.impression_time[iid] = t
            self.truth_label[iid] = 0
            event = {"impression_id": iid, "ts": t, "ad_id": f"ad{rng.randint(0, 5)}"}
            r = rng.random()
            fates = []
            if r < 0.25:
                delay = rng.choice([W_MS, rng.randint(0, W_MS - 1)])  # some exactly at the window's end
                fates.append((t + delay, "click", ATTRIBUTED))
                self.truth_label[iid] = 1
                if rng.random() < 0.15:
                    fates.append((t + delay, "click", DUPLICATE))  # a retry: the same outcome again
            elif r < 0.32:
                fates.append((t + rng.choice([W_MS + 1, rng.randint(W_MS + 2, 2 * W_MS)]), "click", OUTSIDE))
            elif r < 0.6:
                fates.append((t + rng.randint(0, 5_000), "view", NOT_COUNTED))
            elif r < 0.62:
                self.stragglers.append((iid, t + rng.randint(0, W_MS)))
            oid = None
            for ts, kind, fate in fates:
                o, key = self._outcome(iid, ts, kind, copy=1 if fate == DUPLICATE else 0, oid=oid)
                oid = o["outcome_id"]
                self.fate[key] = fate
                outs.append(o)
            # The last impressions of a round are logged next round, after their outcomes.
            (self.held_impressions if k >= seconds - 2 else imps).append(event)
        for g in range(2):  # outcomes of impressions that never appear
            o, key = self._outcome(f"ghost{self.n}-{g}", start_ms + rng.randint(0, seconds * 1000))
            self.fate[key] = ORPHAN
            outs.append(o)
        outs.sort(key=lambda o: o["ts"])
        self.imps.write_events(imps)
        self.outs.write_events(outs)

    def flush(self, t: int, tag: str) -> None:
        """Impressions and views far ahead, to move both watermarks past every window so far."""
        held, self.held_impressions = self.held_impressions, []
        self.imps.write_events(held + [{"impression_id": f"{tag}{k}", "ts": t + k, "ad_id": "f"} for k in range(2)])
        for k in range(2):
            self.impression_time[f"{tag}{k}"], self.truth_label[f"{tag}{k}"] = t + k, 0
        views = []
        for k in range(2):
            o, key = self._outcome(f"{tag}{k}", t + k, "view")
            self.fate[key] = NOT_COUNTED
            views.append(o)
        self.outs.write_events(views)

    def write_stragglers(self) -> None:
        late = []
        for iid, ts in self.stragglers:
            o, key = self._outcome(iid, ts)
            self.fate[key] = LATE
            late.append(o)
        self.outs.write_events(late)


def _read_examples(files):
    import tensorflow as tf

    rows = []
    for path in files:
        for record in tf.compat.v1.io.tf_record_iterator(path, tf.io.TFRecordOptions(compression_type="GZIP")):
            f = tf.train.Example.FromString(record).features.feature
            rows.append((f["impression_id"].bytes_list.value[0].decode(), int(f["ts"].int64_list.value[0]),
                         int(f["label"].int64_list.value[0])))
    return rows


@pytest.mark.e2e
def test_sigkilled_join_runs_label_every_impression_once_and_decide_every_outcome_once(tmp_path):
    imp_dir, out_dir = str(tmp_path / "impressions"), str(tmp_path / "outcomes")
    _sigkilled_join(tmp_path, H.EventLogWriter(imp_dir, max_segment_bytes=16 << 10),
                    H.EventLogWriter(out_dir, max_segment_bytes=16 << 10))


@pytest.mark.e2e
def test_sigkilled_join_runs_over_kafka_topics_label_every_impression_once_and_decide_every_outcome_once(
        tmp_path, tansu):
    tag = f"{os.getpid()}-{random.randrange(1 << 30)}"
    _sigkilled_join(tmp_path, TopicWriter(tansu, f"impressions-{tag}", 3), TopicWriter(tansu, f"outcomes-{tag}", 2))


def _sigkilled_join(tmp_path, imps, outs):
    from ml_metadata.proto import metadata_store_pb2

    rng = random.Random(SEED)
    home, runs = tmp_path / "home", tmp_path / "runs"
    imp_dir, out_dir = str(tmp_path / "impressions"), str(tmp_path / "outcomes")
    runs.mkdir()
    streams = TwoStreams(imps, outs, rng)
    kafka = {name: w.kafka_settings() for name, w in (("impressions", imps), ("outcomes", outs))
             if isinstance(w, TopicWriter)}
    clock = {"t": H.BASE_MS}

    def grow(seconds: int) -> None:
        streams.round(clock["t"], seconds)
        clock["t"] += seconds * 1000

    grow(90)
    server = JoinForkServer(dict(
        pipeline_name=PIPELINE, home=str(home), imp_dir=imp_dir, out_dir=out_dir, chunk_bytes=4096,
        span_seconds=SPAN_S, allowed_lateness_seconds=LATENESS_S, horizon_runs=100, kafka=kafka,
        join=dict(attribution_window_seconds=W_MS // 1000, orphan_bound_seconds=ORPHAN_S)),
        str(runs / "server.log"))
    history = []
    pid = None
    try:
        def run(name, kill_after=None, marker=None):
            nonlocal pid
            path = str(runs / f"{name}.log")
            started = time.monotonic()
            pid = server.start_run(path)
            if kill_after is not None:
                while H.alive(pid) and time.monotonic() - started < kill_after:
                    time.sleep(0.002)
                os.kill(pid, signal.SIGKILL)
            elif marker is not None:
                while H.alive(pid) and not H.file_has(path, H.MARK_PUBLISHING):
                    time.sleep(0.001)
                time.sleep(marker)
                os.kill(pid, signal.SIGKILL)
            code = server.wait(pid)
            pid = None
            if code not in (0, -signal.SIGKILL) or (kill_after is None and marker is None and code != 0):
                pytest.fail(f"join run {name} exited with {code}:\n{H.tail(path)}")
            history.append((name, code, time.monotonic() - started))
            return code, time.monotonic() - started

        code, clean_s = run("clean")
        finished, kills = [clean_s], 0
        r = 0
        while r < MAX_ROUNDS and (r < MIN_ROUNDS or kills < MIN_KILLS):
            r += 1
            grow(rng.randint(40, 120))
            draw = rng.random()
            if draw < 0.2 and r >= 2:
                code, s = run(f"r{r:02d}-finish")
                finished.append(s)
            elif draw < 0.45:
                code, s = run(f"r{r:02d}-publish", marker=rng.uniform(0.0, 0.015))
            else:
                code, s = run(f"r{r:02d}-kill", kill_after=rng.uniform(0.0, statistics.median(finished)))
            kills += code == -signal.SIGKILL
        assert kills >= MIN_KILLS, history
        # Close every window, then log the stragglers, then close another span so that a run publishes them.
        streams.flush(clock["t"] + 3 * SPAN_MS, "flush")
        run("final-0")
        streams.write_stragglers()
        streams.flush(clock["t"] + 6 * SPAN_MS, "flushb")
        run("final-1")
        run("final-2")
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            server.wait(pid)
        server.close()
    print("\n".join(f"{n:<14} exit {c:>3} {s:6.2f} s" for n, c, s in history))

    store = H.open_store(str(home / "metadata.sqlite"))
    artifacts = [a for a in H.examples_artifacts(store, PIPELINE, JOIN_NODE_ID)
                 if a.state == metadata_store_pb2.Artifact.LIVE and "committed_state" in a.custom_properties]
    spans = [a.properties["span"].int_value for a in artifacts]
    assert len(spans) == len(set(spans)), f"a span was published twice: {collections.Counter(spans).most_common(3)}"

    # ---- impressions: each in exactly one span, its own, with the right label ----
    seen = collections.Counter()
    attributed_total = 0
    dead = []
    for a in artifacts:
        span = a.properties["span"].int_value
        files = [os.path.join(a.uri, f"Split-{s}", f) for s in ("train", "eval")
                 for f in sorted(os.listdir(os.path.join(a.uri, f"Split-{s}")))]
        rows = _read_examples(files)
        for iid, ts, label in rows:
            seen[iid] += 1
            assert ts // SPAN_MS == span, f"{iid} at {ts} in span {span}"
            assert streams.impression_time[iid] == ts
            assert label == streams.truth_label[iid], f"{iid}: label {label}, expected {streams.truth_label[iid]}"
        assert a.custom_properties["event_count"].int_value == len(rows)
        assert a.custom_properties["watermark_ms"].int_value == min(
            a.custom_properties["impressions_watermark_ms"].int_value,
            a.custom_properties["outcomes_watermark_ms"].int_value) >= (span + 1) * SPAN_MS + W_MS
        assert a.custom_properties["positive_count"].int_value == sum(r[2] for r in rows)
        attributed_total += a.custom_properties["attributed_count"].int_value
        dead += H.read_dead_letters(a.uri)
    assert not [i for i, n in seen.items() if n > 1], "an impression was published twice"
    # The last flush's impressions wait for their windows to close; everything else was emitted.
    emitted = {i for i in streams.truth_label if not i.startswith("flushb")}
    assert set(seen) == emitted, f"missing {sorted(emitted - set(seen))[:5]}, extra {sorted(set(seen) - emitted)[:5]}"

    # ---- outcomes: each line attributed once or a dead letter once, for the generator's reason ----
    # Where each outcome line is (a log's segment and offset, a topic's partition and offset), in write order.
    if kafka:
        written = [(where, event["outcome_id"]) for where, event in outs.placed]
        lane = "partition"
        assert all(r.get("topic") == outs.topic for r in dead), dead[:3]
    else:
        written = [((ln.segment, ln.offset), json.loads(ln.line)["outcome_id"]) for ln in H.scan_log(out_dir)[0]]
        lane = "segment"
    copies = collections.Counter()
    expected = {}
    for where, oid in written:
        expected[where] = streams.fate[(oid, copies[oid])]
        copies[oid] += 1
    at = collections.Counter((r[lane], r["offset"]) for r in dead)
    assert all(r["stream"] == "outcomes" for r in dead), [r for r in dead if r["stream"] != "outcomes"][:3]
    assert max(at.values()) == 1, f"dead-lettered twice: {[k for k, n in at.items() if n > 1][:3]}"
    got = {(r[lane], r["offset"]): r["reason"] for r in dead}
    wrong = [(p, expected[p], got[p]) for p in got if expected[p] is None or not got[p].startswith(expected[p])]
    assert not wrong, f"{len(wrong)} outcomes with the wrong fate, e.g. {wrong[:3]}"
    undecided = [(p, kind) for p, kind in expected.items() if kind is not None and p not in got]
    assert not undecided, f"{len(undecided)} outcomes never dead-lettered, e.g. {undecided[:3]}"
    assert attributed_total == sum(kind is None for kind in expected.values())
    kinds = collections.Counter(kind for kind in expected.values())
    assert all(kinds[k] for k in (LATE, ORPHAN, OUTSIDE, DUPLICATE, NOT_COUNTED, ATTRIBUTED)), kinds
    assert sum(a.custom_properties["late_outcome_count"].int_value for a in artifacts) == kinds[LATE]
    assert sum(a.custom_properties["orphan_outcome_count"].int_value for a in artifacts) == kinds[ORPHAN]

    # ---- the kills really interrupted runs between registering an execution and publishing ----
    executions = store.get_executions_by_context(H.node_context(store, PIPELINE, JOIN_NODE_ID).id)
    assert any(x.last_known_state == metadata_store_pb2.Execution.RUNNING for x in executions), \
        "no run was killed mid-execution: the proof is vacuous"
    if kafka:
        # The positions committed in ML Metadata are the topics' per-partition vectors.
        newest = max(artifacts, key=lambda a: a.id)
        state = json.loads(newest.custom_properties["committed_state"].string_value)
        for key, writer in (("imp", imps), ("out", outs)):
            for which in ("end", "resume"):
                vector = state[f"{key}_{which}"]
                assert vector["topic"] == writer.topic and len(vector["offsets"]) == writer.partitions, state
