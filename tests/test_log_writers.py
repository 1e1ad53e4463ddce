"""Several writer processes on one event-log folder, read while they write; and the reader's check, through
ingestion, that no segment grows after it was passed.

The writers are real processes appending through `EventLogWriter` (which
flocks `<log>/.writer.lock`); the reader is `plan_read`/`read_chunk`, driven
the way ingestion drives it (each plan starts at the last plan's end, with the
sizes of the segments it passed). What the writers wrote is the truth the
reader is compared with.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

import ingest_helpers as H
from components.event_log import EventLogError, plan_read, read_chunk

WRITER = """
import random, sys, time
from components.event_log import EventLogWriter
log, name, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
with EventLogWriter(log, max_segment_bytes=2000) as w:
    i = 0
    while i < n:
        k = min(n - i, rng.randint(1, 6))
        w.write_lines([b"%s-%05d-" % (name.encode(), j) + b"p" * rng.randint(0, 90) for j in range(i, i + k)])
        i += k
        time.sleep(rng.random() * 0.002)
"""


def test_writer_processes_sharing_a_folder_lose_no_line_to_a_concurrent_reader(tmp_path):
    log = str(tmp_path / "events")
    os.makedirs(log)
    plan_read(log, None)  # imports TensorFlow now, so the reader keeps up with the writers
    n, names = 600, ["w0", "w1", "w2"]
    env = dict(os.environ, PYTHONPATH=H.REPO_ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, log, name, str(n), str(seed)], env=env, cwd=H.REPO_ROOT)
             for seed, name in enumerate(names)]
    read, plans, plan = [], 0, None
    while True:
        done = all(p.poll() is not None for p in procs)
        # As ingestion does: each plan starts where the last one ended, and checks the segments it passed.
        plan = (plan_read(log, None, chunk_bytes=700) if plan is None else
                plan_read(log, plan.end, chunk_bytes=700, passed_sizes=plan.segment_sizes))
        read += [line for c in plan.chunks for _, line in read_chunk(log, c)]
        plans += 1
        if done:
            break
        time.sleep(0.005)
    assert [p.returncode for p in procs] == [0, 0, 0]
    counts = Counter(b"-".join(line.split(b"-")[:2]) for line in read)
    expected = {b"%s-%05d" % (name.encode(), j) for name in names for j in range(n)}
    assert set(counts) == expected and set(counts.values()) == {1}, (
        f"{len(expected - set(counts))} line(s) lost, {sum(v > 1 for v in counts.values())} read twice")
    assert all(line.split(b"-")[0] in (b"w0", b"w1", b"w2") and set(line.split(b"-")[2]) <= {ord("p")}
               for line in read), "a line was torn or interleaved"
    segments = H.scan_log(log)[0]
    assert len({ln.segment for ln in segments}) > 20 and plans > 3
    # Rotation decisions saw every writer's lines: no segment is over the size limit.
    assert max(os.path.getsize(os.path.join(log, s)) for s in {ln.segment for ln in segments}) <= 2000


def direct_pipeline():
    import apache_beam as beam

    from pipelines.config import driftline_setup_file

    return beam.Pipeline(argv=["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory",
                               f"--setup_file={driftline_setup_file()}"])


def test_ingestion_commits_passed_segment_sizes_and_stops_when_one_grows(tmp_path):
    from components.event_schema import ad_click_schema
    from components.streaming_example_gen import ingest, windowing
    from components.streaming_example_gen.sources import EventLogSource

    log_dir = str(tmp_path / "events")
    log = H.SyntheticLog(log_dir, seed=8, max_segment_bytes=20_000)
    log.append(H.BASE_MS, minutes=25, per_minute=40)
    window = windowing.Window(span_ms=600_000, allowed_lateness_ms=60_000, eval_fraction=0.2)
    source = EventLogSource(log_dir, chunk_bytes=16_384)

    def run(state, n):
        os.makedirs(tmp_path / f"w{n}")
        return ingest.run_ingest(direct_pipeline, source=source, schema=ad_click_schema(), window=window,
                                 state=state, output_root=str(tmp_path / f"out{n}"), work_dir=str(tmp_path / f"w{n}"))

    first = run(windowing.CommittedState(), 1)
    assert first.result.decision.emits
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(".jsonl"))
    sizes = [(n, os.path.getsize(os.path.join(log_dir, n))) for n in names]
    assert len(names) > 3
    # What ML Metadata stores is the JSON: the passed segments' sizes are in it.
    state = windowing.CommittedState.from_json(first.committed.to_json())
    assert state.segment_sizes == tuple(sizes[:-1]) == first.committed.segment_sizes
    assert json.loads(first.committed.to_json())["segment_sizes"] == [list(s) for s in sizes[:-1]]

    log.append(H.BASE_MS + 25 * 60_000, minutes=10, per_minute=40)  # through the writer, under its lock
    second = run(state, 2)
    assert second.result.decision.emits
    state = windowing.CommittedState.from_json(second.committed.to_json())

    # A producer without the lock appends a valid event to a segment ingestion has passed.
    passed = state.segment_sizes[1][0]
    with open(os.path.join(log_dir, passed), "ab") as f:
        f.write(json.dumps(H.ad_click_event("stray-1", H.BASE_MS + 40 * 60_000, log.rng)).encode() + b"\n")
    log.append(H.BASE_MS + 35 * 60_000, minutes=10, per_minute=40)
    with pytest.raises(EventLogError, match=f"segment '{passed}' .* grew from .*without the writer lock"):
        run(state, 3)
