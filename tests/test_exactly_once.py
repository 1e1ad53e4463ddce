"""The SIGKILL proof of exactly-once ingestion (DESIGN.md, invariant 2).

What is run: a growing ad-click log (on-time events, events up to 150 s out
of order, so many arrive after their span was emitted, malformed lines of ten
kinds, sometimes a half-written last line, segment rotation every 16 KiB,
4 KiB read chunks) is ingested by the real pipeline
(`pipelines.local_runner.run_ingest`: TFX LocalDagRunner, Beam DirectRunner,
SQLite ML Metadata) in separate processes, and most runs are SIGKILLed:

* one clean run is timed first (T);
* then rounds of "append to the log, run ingest": the run is SIGKILLed after a
  delay drawn uniformly from [0, 1.2 T), T the median duration of the runs
  let finish so far
  (before the driver, during the Beam
  job, while files are written, around publishing, or after it finished), or
  right after it logs "Publishing output artifacts" (a kill inside or just
  around the MLMD transaction), or let finish. The schedule and delays come
  from a seeded random; at least 8 runs die by SIGKILL.
* finally "flush" events are appended far enough in the future to close every
  earlier span, and ingest is run to completion twice (the second run must
  publish nothing: it has nothing new to close).

What is proven, reading only what ML Metadata says was published (artifact
URIs from MLMD, never a glob of the pipeline root, so unpublished output of
killed runs cannot leak in):

* every valid event written is in exactly one published span (by event_id),
  except the flush events, which are still pending; none twice, none lost;
* every malformed line is in exactly one dead-letter file of a published
  span, at its exact segment and offset, byte for byte;
* no span number is published twice; published runs chain: each run's
  start position is the previous published run's committed resume position,
  and its spans are newer than the previous run's;
* every example is in its own event-time span, or (late) in the train split
  of a later span, and the counts on the artifacts match the data;
* no LIVE Examples artifact lacks the committed_state property, and every
  published span comes from a COMPLETE execution.

Each ingest process is a fork of a server that has imported TFX once
(`ingest_helpers.forkserver_main`): a fresh `python -c` per run would spend
30-50 s importing TFX before each kill. The server only imports; each child
opens ML Metadata, builds and runs the pipeline itself, and is killed alone.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import random
import signal
import statistics
import time

import pytest

import ingest_helpers as H

SPAN_S = 60
LATENESS_S = 5
SPAN_MS = SPAN_S * 1000
S0 = H.BASE_MS // SPAN_MS
PIPELINE = "exactly_once"
SEED = 20260214
MIN_KILLS = 8
MIN_ROUNDS = 10
MAX_ROUNDS = 20


class _LogTail:
    """Watches a run's log file for a marker without re-reading it from the start."""

    def __init__(self, path: str):
        self.path, self.offset, self.buf = path, 0, b""

    def has(self, marker: bytes) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return False
        self.offset += len(data)
        self.buf = (self.buf + data)[-(len(marker) + 65536):]
        return marker in self.buf


def _newest_execution(metadata_path: str) -> str:
    """The state of the node's newest execution, and how many spans it published."""
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.exists(metadata_path):
        return "no store yet"
    store = H.open_store(metadata_path)
    context = H.node_context(store, PIPELINE)
    executions = store.get_executions_by_context(context.id) if context else []
    if not executions:
        return "no execution"
    newest = max(executions, key=lambda x: x.id)
    outputs = [e for e in store.get_events_by_execution_ids([newest.id]) if e.type == metadata_store_pb2.Event.OUTPUT]
    state = metadata_store_pb2.Execution.State.Name(newest.last_known_state)
    return f"execution {newest.id} {state}, {len(outputs)} spans published"


@pytest.mark.e2e
def test_sigkilled_runs_publish_every_event_exactly_once(tmp_path):
    from ml_metadata.proto import metadata_store_pb2

    rng = random.Random(SEED)
    home, log_dir, runs_dir = tmp_path / "home", tmp_path / "events", tmp_path / "runs"
    runs_dir.mkdir()
    metadata_path = str(home / "metadata.sqlite")
    log = H.SyntheticLog(str(log_dir), seed=SEED, max_segment_bytes=16 << 10)
    clock = {"t": H.BASE_MS}

    def grow(minutes: float, **kw) -> None:
        log.append(clock["t"], minutes, per_minute=120, late_fraction=0.08, late_range_ms=(2_000, 150_000),
                   malformed=rng.randint(0, 2), partial_tail=rng.random() < 0.3, not_before_ms=H.BASE_MS, **kw)
        clock["t"] += int(minutes * H.MINUTE_MS)

    grow(4)
    t0 = time.monotonic()
    server = H.ForkServer(
        dict(pipeline_name=PIPELINE, home=str(home), log_dir=str(log_dir), chunk_bytes=4096,
             span_seconds=SPAN_S, allowed_lateness_seconds=LATENESS_S),
        str(runs_dir / "server.log"))
    history = []  # (round, how, exit code, seconds)
    outcomes = []  # what MLMD shows after each run
    pid = None
    try:
        def run(name: str, kill_after=None, kill_at_marker=None):
            nonlocal pid
            path = str(runs_dir / f"{name}.log")
            started = time.monotonic()
            pid = server.start_run(path)
            if kill_after is not None:
                while H.alive(pid) and time.monotonic() - started < kill_after:
                    time.sleep(0.002)
                os.kill(pid, signal.SIGKILL)  # a zombie ignores it; its pid is not reused before the reap
            elif kill_at_marker is not None:
                marker, delay = kill_at_marker
                tail = _LogTail(path)
                while H.alive(pid) and not tail.has(marker.encode()):
                    time.sleep(0.001)
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
            code = server.wait(pid)
            pid = None
            seconds = time.monotonic() - started
            outcomes.append(_newest_execution(metadata_path))
            if code not in (0, -signal.SIGKILL):
                pytest.fail(f"ingest run {name} exited with {code}:\n{H.tail(path)}")
            if kill_after is None and kill_at_marker is None and code != 0:
                pytest.fail(f"ingest run {name} was not killed but exited with {code}:\n{H.tail(path)}")
            return code, seconds

        import_s = time.monotonic() - t0
        code, clean_s = run("clean")
        assert code == 0
        history.append(("clean", "finish", code, clean_s))
        finished = [clean_s]  # durations of runs let finish: T is their median

        kills = rounds = 0
        while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or kills < MIN_KILLS):
            rounds += 1
            grow(rng.uniform(1.0, 3.0))
            draw = rng.random()
            if draw < 0.2:
                how, code, s = "finish", *run(f"r{rounds:02d}-finish")
            elif draw < 0.4:
                # Publishing (one MLMD transaction) ends 10-60 ms after this line, and the process exits
                # soon after: kill before, in or after the transaction.
                delay = rng.uniform(0.0, 0.06)
                how = f"kill {delay * 1000:.0f} ms after '{H.MARK_PUBLISHING}'"
                code, s = run(f"r{rounds:02d}-publish", kill_at_marker=(H.MARK_PUBLISHING, delay))
            else:
                delay = rng.uniform(0.0, 1.2 * statistics.median(finished))
                how = f"kill at {delay:.2f} s"
                code, s = run(f"r{rounds:02d}-kill", kill_after=delay)
            kills += code == -signal.SIGKILL
            if how == "finish":
                finished.append(s)  # on a busy machine runs slow down: T follows them
            history.append((rounds, how, code, s))
        assert kills >= MIN_KILLS, history

        # Close every span that holds a real event: the watermark must pass the end of the newest one.
        newest_span = max(log.valid.values()) // SPAN_MS
        flush_t = (newest_span + 3) * SPAN_MS + LATENESS_S * 1000 + 1000
        flush = log.append(flush_t, minutes=0, per_minute=1, extra_events=[("flush", flush_t + k) for k in range(3)])
        flush_ids = {e for e in flush.valid_ids if e.startswith("flush-")}
        assert len(flush_ids) == 3
        for k in range(2):
            code, s = run(f"final-{k}")
            assert code == 0
            history.append((f"final-{k}", "finish", code, s))
            if k == 0:
                after_first_final = [a.id for a in H.examples_artifacts(H.open_store(metadata_path), PIPELINE)]
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            server.wait(pid)
        server.close()
    runs_s = time.monotonic() - t0 - import_s
    print(f"\nfork server import {import_s:.1f} s, {len(history)} runs {runs_s:.1f} s")
    print("\n".join(f"{r!s:>8} {how:<50} exit {c:>3} {s:6.2f} s   MLMD: {o}"
                    for (r, how, c, s), o in zip(history, outcomes)))

    # ---- what ML Metadata says was published ------------------------------------------------------------------
    store = H.open_store(metadata_path)
    all_examples = store.get_artifacts_by_type("Examples")
    assert H.examples_artifacts(store, PIPELINE) and len(all_examples) == len(H.examples_artifacts(store, PIPELINE))
    live_without_state = [a.id for a in all_examples
                          if a.state == metadata_store_pb2.Artifact.LIVE and "committed_state" not in a.custom_properties]
    assert not live_without_state, f"LIVE Examples without committed_state: {live_without_state}"
    assert sorted(a.id for a in all_examples) == after_first_final, "the second final run must publish nothing"

    published = H.published_spans(metadata_path, PIPELINE)
    lines, log_end = H.scan_log(str(log_dir))

    # ---- every valid event exactly once ------------------------------------------------------------------------
    seen = collections.Counter()
    for p in published:
        start = p.span * SPAN_MS
        n_late = 0
        for split, rows in p.examples.items():
            for event_id, t in rows:
                seen[event_id] += 1
                assert log.valid.get(event_id) == t, f"{event_id} in span {p.span} has the wrong event time"
                if t // SPAN_MS < p.span:
                    assert split == "train", f"late event {event_id} in eval of span {p.span}"
                    n_late += 1
                else:
                    assert t // SPAN_MS == p.span, f"{event_id} (span {t // SPAN_MS}) in a younger span {p.span}"
        counts = {k: H.int_prop(p.artifact, k) for k in ("event_count", "train_count", "eval_count", "late_count")}
        assert counts == {"event_count": len(p.all_ids), "train_count": len(p.examples["train"]),
                          "eval_count": len(p.examples["eval"]), "late_count": n_late}, (p.span, counts)
    duplicates = [e for e, n in seen.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} events published more than once, e.g. {duplicates[:5]}"
    expected = set(log.valid) - flush_ids
    missing = expected - set(seen)
    assert not missing, f"{len(missing)} events never published, e.g. {sorted(missing)[:5]}"
    assert set(seen) == expected, f"unexpected ids published: {sorted(set(seen) - expected)[:5]}"

    # ---- every malformed line in exactly one dead-letter file ------------------------------------------------
    rows = [r for p in published for r in p.dead_letters]
    positions = collections.Counter((r["segment"], r["offset"]) for r in rows)
    assert all(n == 1 for n in positions.values()), f"dead-lettered twice: {[k for k, n in positions.items() if n > 1]}"
    bad = {(ln.segment, ln.offset): ln.line for ln in lines if ln.line in set(log.malformed)}
    assert len(bad) == len(log.malformed) and log.malformed, "every malformed line is in the log once"
    got = {(r["segment"], r["offset"]): H.dead_letter_bytes(r) for r in rows}
    assert got == bad, f"dead letters differ: missing {sorted(set(bad) - set(got))[:3]}, extra {sorted(set(got) - set(bad))[:3]}"
    assert sum(H.int_prop(p.artifact, "dead_letter_count") for p in published) == len(rows)

    # ---- spans and runs ----------------------------------------------------------------------------------------
    spans = [p.span for p in published]
    assert len(spans) == len(set(spans)), f"a span was published twice: {collections.Counter(spans).most_common(3)}"
    assert sorted(spans) == list(range(S0, max(spans) + 1)), "dense data: published spans must be contiguous"

    # Published runs chain: one COMPLETE execution per run, each starting where the previous one committed.
    by_execution = collections.defaultdict(list)
    for p in published:
        [producer] = H.executions_of(store, p.artifact.id, metadata_store_pb2.Event.OUTPUT)
        assert producer.last_known_state == metadata_store_pb2.Execution.COMPLETE, producer
        by_execution[producer.id].append(p)
    previous = None
    for execution_id in sorted(by_execution):
        group = by_execution[execution_id]
        states = {H.str_prop(p.artifact, "committed_state") for p in group}
        starts = {H.str_prop(p.artifact, "start_position") for p in group}
        assert len(states) == 1 and len(starts) == 1, f"execution {execution_id}: artifacts disagree"
        state, start = json.loads(states.pop()), json.loads(starts.pop())
        assert state["last_span"] == max(p.span for p in group)
        if previous is None:
            assert start == [sorted(n for n in os.listdir(log_dir) if n.endswith(".jsonl"))[0], 0]
        else:
            assert start == previous["resume"], f"execution {execution_id} did not resume where the last one committed"
            assert min(p.span for p in group) > previous["last_span"]
        previous = state
    assert previous["end"] == [log_end.segment, log_end.offset], "the last run read the whole log"
    first_flush = next(ln for ln in lines if H.event_id_of(ln.line) in flush_ids)
    assert previous["resume"] == [first_flush.segment, first_flush.offset], "only the flush events are pending"

    # ---- the kills really interrupted runs ---------------------------------------------------------------------
    executions = store.get_executions_by_context(H.node_context(store, PIPELINE).id)
    interrupted = [x.id for x in executions if x.last_known_state == metadata_store_pb2.Execution.RUNNING]
    published_dirs = {os.path.dirname(p.uri) for p in published}
    examples_root = os.path.join(str(home), "pipeline_root", H.NODE_ID, "examples")
    orphans = [d for d in os.listdir(examples_root) if os.path.join(examples_root, d) not in published_dirs]
    # Files a pipeline-root glob would have read twice: why only MLMD's URIs may be read.
    orphan_files = [f for d in orphans for f in glob.glob(os.path.join(examples_root, d, "span-*", "Split-*", "*"))]
    artifact_states = collections.Counter(metadata_store_pb2.Artifact.State.Name(a.state) for a in all_examples)
    print(f"checks {time.monotonic() - t0 - import_s - runs_s:.1f} s; {len(executions)} executions, "
          f"{len(by_execution)} published runs, {len(interrupted)} left RUNNING by a kill; "
          f"Examples artifacts by state {dict(artifact_states)}; {len(orphans)} output folders of unpublished runs "
          f"on disk ({len(orphan_files)} example files); {len(published)} spans, {sum(seen.values())} events, "
          f"{len(rows)} dead letters")
    assert interrupted, "no run was killed between registering its execution and publishing: the proof is vacuous"
