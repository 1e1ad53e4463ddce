"""Ingest throughput: event log (JSON Lines) -> gzipped TFRecords of tf.Example.

For each size the simulated ad-click log is generated once (not timed, cached
under the work folder by size, seed and simulator settings), then every method
runs in a fresh Python process (imports not timed) and converts the same log:

* ``driftline-beam-inmemory``: ``ingest.run_ingest`` on a fresh ``beam.Pipeline``
  with ``BeamConfig().args()`` (DirectRunner, in_memory: the local default);
* ``driftline-beam-mp2``: the same graph with ``--direct_num_workers=2
  --direct_running_mode=multi_processing``;
* ``driftline-beam-portable``: the same graph under ``BeamConfig(runner="PortableRunner").args()``
  (an embedded job server, LOOPBACK workers: the Fn API path Dataflow takes);
* ``tfx-localdagrunner``: the whole StreamingExampleGen component through TFX's
  LocalDagRunner and SQLite ML Metadata (driver, launcher, MLMD publish);
* ``plain-tf-example`` (the ceiling): one plain Python loop, json.loads, minimal
  type checks, ``tf.train.Example`` built the usual way, ``tf.io.TFRecordWriter``
  (GZIP) into train/eval files by span;
* ``plain-example-encoder``: the same loop with driftline's ``ExampleEncoder``
  instead of ``tf.train.Example``, to separate encoder cost from Beam cost;
* ``driftline-dofns-no-beam``: driftline's own ``ParseChunk`` / ``WriteChunk``
  code called in a plain loop, so that Beam's share is the difference to
  ``driftline-beam-inmemory``; its first repeat also times each step of the
  parse alone (read, json.loads, EventSchema.parse, ExampleEncoder, writing).

Wall time, CPU time of the process and its children (Beam's SDK workers) and
the CPU the rest of the machine used meanwhile are recorded for every run, so a
result taken on a busy machine says so.

Every method must produce the same output: the examples of every span the
watermark has closed. The benchmark log ends with one sentinel event far enough
in the future to close every span of the simulated stream, so each method must
write exactly the simulator's valid events (asserted, per span and split); the
sentinel's own span stays open and is written by none. The plain loops apply the
same rule as driftline: they keep serialized examples in memory until the read
ends, then write the closed spans.

    .venv/bin/python benchmarks/ingest.py                      # 100k and 1M
    .venv/bin/python benchmarks/ingest.py --quick              # tiny smoke run
    .venv/bin/python benchmarks/ingest.py --sizes 100000 --repeats 3
"""
from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402

START_MARK, END_MARK = marks("ingest")

# Simulated minutes of event time for every size (so every size has the same
# number of spans); events per minute is scaled to the size.
SIM_MINUTES = 100
BAD_FRACTION = 0.001
SENTINEL_ID = "bench-watermark-sentinel"

DRIFTLINE_INMEMORY = "driftline-beam-inmemory"
DRIFTLINE_MP2 = "driftline-beam-mp2"
DRIFTLINE_PORTABLE = "driftline-beam-portable"
TFX = "tfx-localdagrunner"
PLAIN_TF = "plain-tf-example"
PLAIN_ENCODER = "plain-example-encoder"
DOFNS = "driftline-dofns-no-beam"
METHODS = (PLAIN_TF, PLAIN_ENCODER, DOFNS, DRIFTLINE_INMEMORY, DRIFTLINE_MP2, DRIFTLINE_PORTABLE, TFX)
LABELS = {
    PLAIN_TF: "plain loop, tf.train.Example (ceiling)",
    PLAIN_ENCODER: "plain loop, driftline ExampleEncoder",
    DOFNS: "driftline's DoFns called in a plain loop (no Beam)",
    DRIFTLINE_INMEMORY: "driftline Beam graph, DirectRunner in_memory (BeamConfig default)",
    DRIFTLINE_MP2: "driftline Beam graph, DirectRunner multi_processing x2",
    DRIFTLINE_PORTABLE: "driftline Beam graph, PortableRunner (embedded job server, LOOPBACK)",
    TFX: "StreamingExampleGen via TFX LocalDagRunner + SQLite MLMD",
}
DRIFTLINE_METHODS = (DRIFTLINE_INMEMORY, DRIFTLINE_MP2, DRIFTLINE_PORTABLE)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the log -------------------------------------------------------------------------

def _window():
    from components.streaming_example_gen.windowing import Window
    from pipelines.config import WindowConfig

    w = WindowConfig()
    return Window(span_ms=w.span_ms, allowed_lateness_ms=w.allowed_lateness_ms, eval_fraction=w.eval_fraction)


def _sim_config(size: int, seed: int):
    from pipelines.simulator import SimulatorConfig

    if size % SIM_MINUTES:
        raise SystemExit(f"--sizes must be multiples of {SIM_MINUTES}, got {size}")
    return SimulatorConfig(seed=seed, minutes=float(SIM_MINUTES), events_per_minute=size // SIM_MINUTES,
                           bad_fraction=BAD_FRACTION)


def ensure_log(work_dir: str, size: int, seed: int) -> Dict[str, Any]:
    """Generates (or reuses) the benchmark log of `size` lines; returns its facts."""
    import dataclasses

    from components.event_log import EventLogWriter
    from pipelines.simulator import simulate

    config = _sim_config(size, seed)
    window = _window()
    key_src = json.dumps({"sim": dataclasses.asdict(config), "window": dataclasses.asdict(window),
                          "sentinel": SENTINEL_ID}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:10]
    log_dir = os.path.join(work_dir, "logs", f"n{size}-seed{seed}-{key}")
    facts_path = os.path.join(log_dir, "_facts.json")
    if os.path.exists(facts_path):
        with open(facts_path) as f:
            facts = json.load(f)
        log(f"size {size}: reusing cached log {log_dir} ({facts['bytes'] / 1e6:.1f} MB)")
        return facts
    shutil.rmtree(log_dir, ignore_errors=True)
    log(f"size {size}: generating the log with the simulator (not timed) ...")
    started = time.monotonic()
    summary = simulate(log_dir, config)
    # One valid event far in the future closes every simulated span (its own stays open).
    last_span = window.span_of(summary.last_event_ms)
    sentinel_ms = (last_span + 2) * window.span_ms + window.allowed_lateness_ms
    assert window.closed_through(sentinel_ms) >= last_span and window.span_of(sentinel_ms) > last_span + 1
    sentinel = {"event_id": SENTINEL_ID, "event_time": sentinel_ms, "user_id": "u0", "ad_id": "a0",
                "ad_category": "c0", "device": "mobile", "hour_of_day": 0, "price": 1.0, "clicked": 0}
    with EventLogWriter(log_dir, max_segment_bytes=config.max_segment_bytes) as writer:
        writer.write_events([sentinel])
    segments = sorted(glob.glob(os.path.join(log_dir, "*.jsonl")))
    facts = {
        "log_dir": log_dir, "size": size, "seed": seed,
        "valid_events": summary.events_written, "bad_lines": summary.bad_lines,
        "late_events": summary.late_events, "lines": summary.lines_written + 1,
        "segments": len(segments), "bytes": sum(os.path.getsize(p) for p in segments),
        "first_event_ms": summary.first_event_ms, "last_event_ms": summary.last_event_ms,
        "sentinel_ms": sentinel_ms, "generate_seconds": round(time.monotonic() - started, 2),
    }
    with open(facts_path, "w") as f:
        json.dump(facts, f, indent=1)
    log(f"size {size}: wrote {facts['lines']} lines ({facts['valid_events']} valid, {facts['bad_lines']} bad, "
        f"{facts['bytes'] / 1e6:.1f} MB in {facts['segments']} segments) in {facts['generate_seconds']}s")
    return facts


# -- measuring (in the child process) -----------------------------------------------

class CpuMeter:
    """CPU seconds of this process and every descendant (Beam's SDK worker processes).

    Children are polled with psutil while the work runs, since Beam may not reap
    its workers before the measured call returns; the larger of the polled sum
    and RUSAGE_CHILDREN is taken.
    """

    def __init__(self, heartbeat_s: float = 20.0, label: str = ""):
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._seen: Dict[int, float] = {}
        self._stop = threading.Event()
        self._heartbeat_s = heartbeat_s
        self._label = label

    @staticmethod
    def _rusage() -> Tuple[float, float]:
        import resource

        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime

    def _poll(self) -> None:
        try:
            for child in self._proc.children(recursive=True):
                try:
                    t = child.cpu_times()
                    self._seen[child.pid] = t.user + t.system
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                    pass
        except self._psutil.Error:
            pass

    def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(0.25):
            self._poll()
            if time.monotonic() - last_beat >= self._heartbeat_s:
                last_beat = time.monotonic()
                log(f"  ... {self._label} still running ({time.monotonic() - self.started:.0f}s)")

    def _machine_busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def __enter__(self) -> "CpuMeter":
        self._busy0 = self._machine_busy()
        self._poll()
        self._before_children = dict(self._seen)
        self._self0, self._children0 = self._rusage()
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.monotonic() - self.started
        self._poll()
        self._stop.set()
        self._thread.join()
        self1, children1 = self._rusage()
        polled = sum(v - self._before_children.get(pid, 0.0) for pid, v in self._seen.items())
        self.cpu_self = self1 - self._self0
        self.cpu_children = max(children1 - self._children0, polled)
        self.cpu = self.cpu_self + self.cpu_children
        # CPU time the rest of the machine used meanwhile: how contended this measurement was.
        self.others_cpu = max(0.0, self._machine_busy() - self._busy0 - self.cpu)


def _plain_loop(log_dir: str, out_dir: str, use_encoder: bool) -> Dict[str, Any]:
    """The ceiling: one Python loop, no Beam, same output rule as driftline."""
    import tensorflow as tf

    from components.event_schema import ad_click_schema
    from components.streaming_example_gen.example_codec import ExampleEncoder

    schema = ad_click_schema()
    window = _window()
    fields = [(f.name, f.type) for f in schema.fields]
    time_field, max_len = schema.event_time_field, schema.max_string_length
    span_ms = window.span_ms
    eval_start = int(round(span_ms * (1.0 - window.eval_fraction)))
    encoder = ExampleEncoder(schema)
    Feature, Int64List, FloatList, BytesList = tf.train.Feature, tf.train.Int64List, tf.train.FloatList, tf.train.BytesList
    Example, Features = tf.train.Example, tf.train.Features
    isfinite, loads = math.isfinite, json.loads

    buffers: Dict[Tuple[int, str], List[bytes]] = {}
    invalid: List[bytes] = []
    max_t: Optional[int] = None
    segments = sorted(glob.glob(os.path.join(log_dir, "*.jsonl")))
    for i, path in enumerate(segments):
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    raw = loads(line)
                    if not isinstance(raw, dict):
                        raise ValueError("not an object")
                    for name, typ in fields:
                        v = raw[name]
                        if typ == "int":
                            if type(v) is not int:
                                raise ValueError(name)
                        elif typ == "float":
                            if type(v) not in (float, int) or not isfinite(v):
                                raise ValueError(name)
                        elif type(v) is not str or len(v) > max_len:
                            raise ValueError(name)
                    t = raw[time_field]
                    if t < 0:
                        raise ValueError(time_field)
                except (ValueError, KeyError):
                    invalid.append(line)
                    continue
                if use_encoder:
                    record = encoder.encode(raw)
                else:
                    feature = {}
                    for name, typ in fields:
                        v = raw[name]
                        if typ == "int":
                            feature[name] = Feature(int64_list=Int64List(value=[v]))
                        elif typ == "float":
                            feature[name] = Feature(float_list=FloatList(value=[v]))
                        else:
                            feature[name] = Feature(bytes_list=BytesList(value=[v.encode("utf-8")]))
                    record = Example(features=Features(feature=feature)).SerializeToString()
                span = t // span_ms
                split = "eval" if t - span * span_ms >= eval_start else "train"
                key = (span, split)
                buf = buffers.get(key)
                if buf is None:
                    buf = buffers[key] = []
                buf.append(record)
                if max_t is None or t > max_t:
                    max_t = t
        log(f"  {'encoder' if use_encoder else 'tf.train.Example'} loop: read segment {i + 1}/{len(segments)}")
    closed_through = window.closed_through(max_t)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    written = 0
    for (span, split), records in sorted(buffers.items()):
        if closed_through is None or span > closed_through:
            continue  # still open: the next run would read it again
        path = os.path.join(out_dir, f"span-{span}", f"Split-{split}", "data-000000.tfrecord.gz")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tf.io.TFRecordWriter(path, options=options) as writer:
            for r in records:
                writer.write(r)
        written += len(records)
    if invalid:
        os.makedirs(os.path.join(out_dir, "dead_letter"), exist_ok=True)
        with open(os.path.join(out_dir, "dead_letter", "dead_letter.jsonl"), "wb") as f:
            f.writelines(invalid)
    return {"examples_reported": written, "dead_letters": len(invalid)}


def _driftline(log_dir: str, out_dir: str, beam_args: List[str], chunk_bytes: int) -> Dict[str, Any]:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.event_schema import ad_click_schema
    from components.streaming_example_gen import ingest, sources, windowing

    work = os.path.join(out_dir, "_work")
    os.makedirs(work, exist_ok=True)
    run = ingest.run_ingest(lambda: beam.Pipeline(options=PipelineOptions(beam_args)),
                            source=sources.EventLogSource(log_dir, chunk_bytes),
                            schema=ad_click_schema(), window=_window(), state=windowing.CommittedState(),
                            output_root=out_dir, work_dir=work)
    assert run.result is not None
    return {"examples_reported": sum(s.events for s in run.result.spans.values()),
            "dead_letters": run.result.dead_letters, "chunks": run.result.chunks,
            "plan_bytes": run.plan.total_bytes, "ingest_wall_seconds": run.wall_seconds,
            # Whole reruns after the runner lost elements (ingest.RunnerLostElements); their time is in the wall.
            "reruns": run.reruns}


def _dofns(log_dir: str, out_dir: str, chunk_bytes: int) -> Dict[str, Any]:
    """driftline's own code (plan, ParseChunk, facts, decide, WriteChunk) without Beam: Beam's share is the rest."""
    from components.event_log import plan_read
    from components.event_schema import ad_click_schema
    from components.streaming_example_gen import ingest, sources, windowing

    schema, window, state = ad_click_schema(), _window(), windowing.CommittedState()
    source = sources.EventLogSource(log_dir, chunk_bytes)
    plan = plan_read(log_dir, None, chunk_bytes=chunk_bytes)
    parse = ingest.ParseChunk(source, schema.to_json(), window)
    parse.setup()
    parsed = [p for c in plan.chunks for p in parse.process(c)]
    facts = ingest._merge_facts([ingest._chunk_facts(p, state, source) for p in parsed])
    decision = windowing.decide(window, state, facts[0], facts[1])
    write = ingest.WriteChunk(source, out_dir, state.to_json())
    write.setup()
    results = [r for p in parsed for r in write.process(p, decision)]
    summary = ingest._summarize(results, decision, source)
    return {"examples_reported": sum(s.events for s in summary.spans.values()),
            "dead_letters": summary.dead_letters, "chunks": len(plan.chunks)}


def stage_breakdown(log_dir: str, chunk_bytes: int) -> List[List[Any]]:
    """Seconds of each step of ParseChunk on its own, each over the whole log (one pass per step)."""
    import json as _json

    from components.event_log import plan_read, read_chunk
    from components.event_schema import InvalidEvent, ad_click_schema
    from components.streaming_example_gen.example_codec import ExampleEncoder

    schema = ad_click_schema()
    encoder = ExampleEncoder(schema)
    plan = plan_read(log_dir, None, chunk_bytes=chunk_bytes)
    out: Dict[str, float] = {}
    t = time.perf_counter()
    lines = [line for c in plan.chunks for _, line in read_chunk(log_dir, c)]
    out["read_chunk (tf.io.gfile read + split lines)"] = time.perf_counter() - t
    t = time.perf_counter()
    for line in lines:
        try:
            _json.loads(line)
        except ValueError:
            pass
    out["json.loads alone"] = time.perf_counter() - t
    t = time.perf_counter()
    events = []
    for line in lines:
        try:
            events.append(schema.parse(line))
        except InvalidEvent:
            pass
    out["EventSchema.parse (json.loads + validation)"] = time.perf_counter() - t
    t = time.perf_counter()
    for e in events:
        encoder.encode(e)
    out["ExampleEncoder.encode"] = time.perf_counter() - t
    import tensorflow as tf

    records = [encoder.encode(e) for e in events]
    path = os.path.join(tempfile.mkdtemp(prefix="dl-bench-"), "x.tfrecord.gz")
    t = time.perf_counter()
    with tf.io.TFRecordWriter(path, options=tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for r in records:
            w.write(r)
    out["TFRecordWriter GZIP (one file)"] = time.perf_counter() - t
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    return [[k, round(v, 3)] for k, v in out.items()]  # a list: keeps the order through sort_keys


def _tfx(log_dir: str, out_dir: str, chunk_bytes: int) -> Dict[str, Any]:
    from pipelines import local_runner
    from pipelines.config import DriftlineConfig, SourceConfig

    config = DriftlineConfig(pipeline_name="bench", home=out_dir,
                             source=SourceConfig(log_dir=log_dir, chunk_bytes=chunk_bytes))
    local_runner.run_ingest(config)
    return {"_config": config}


def _tfx_facts(config) -> Dict[str, Any]:
    from pipelines.metadata import ingested_spans, open_store

    spans = ingested_spans(open_store(config.metadata_connection), config.pipeline_name)
    return {"examples_reported": sum(s.event_count for s in spans),
            "dead_letters": sum(s.dead_letter_count for s in spans), "spans_published": len(spans)}


def count_outputs(out_dir: str) -> Dict[str, int]:
    """Records per 'span-N/Split-x' under out_dir, read back with TensorFlow."""
    import tensorflow as tf

    counts: Dict[str, int] = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "**", "Split-*", "*.tfrecord.gz"), recursive=True)):
        m = re.search(r"(span-\d+)/(Split-\w+)/", path)
        key = f"{m.group(1)}/{m.group(2)}"
        n = int(tf.data.TFRecordDataset(path, compression_type="GZIP").reduce(0, lambda c, _: c + 1))
        counts[key] = counts.get(key, 0) + n
    return counts


def worker_main(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; writes a JSON result."""
    import tensorflow as tf  # noqa: F401  (imported before timing, like every method's heavy imports)
    import apache_beam  # noqa: F401

    method, log_dir, out_dir = args.worker, args.log_dir, args.run_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    if method == TFX:
        import tfx.v1  # noqa: F401
    log(f"  {method}: start")
    error = None
    with CpuMeter(label=method) as meter:
        try:
            facts = _measured(method, log_dir, out_dir, args)
        except Exception as e:  # recorded: the parent reports the run as failed
            error = f"{type(e).__name__}: {e}"
            facts = {"examples_reported": None, "dead_letters": None}
    if method == TFX and error is None:
        facts = _tfx_facts(facts["_config"])
    log(f"  {method}: {meter.wall:.2f}s wall, {meter.cpu:.2f}s CPU{'' if error is None else ', FAILED: ' + error}; "
        "counting the records written ...")
    counts = count_outputs(out_dir)
    if method == DOFNS and args.breakdown and error is None:
        log(f"  {method}: timing each step of ParseChunk on its own ...")
        facts["stages"] = stage_breakdown(log_dir, args.chunk_bytes)
    result = {"method": method, "wall_s": meter.wall, "cpu_s": meter.cpu, "cpu_self_s": meter.cpu_self,
              "cpu_children_s": meter.cpu_children, "others_cpu_s": meter.others_cpu,
              "others_cpu_share": meter.others_cpu / (meter.wall * (os.cpu_count() or 1)),
              "examples_written": sum(counts.values()), "per_split": counts, "error": error, **facts}
    with open(args.result_file, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)


def _measured(method: str, log_dir: str, out_dir: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Runs one method over the log into out_dir; returns what it reported."""
    if method == PLAIN_TF:
        facts = _plain_loop(log_dir, out_dir, use_encoder=False)
    elif method == PLAIN_ENCODER:
        facts = _plain_loop(log_dir, out_dir, use_encoder=True)
    elif method == DOFNS:
        facts = _dofns(log_dir, out_dir, args.chunk_bytes)
    elif method == DRIFTLINE_INMEMORY:
        from pipelines.config import BeamConfig

        facts = _driftline(log_dir, out_dir, BeamConfig().args(), args.chunk_bytes)
    elif method == DRIFTLINE_MP2:
        facts = _driftline(log_dir, out_dir, ["--runner=DirectRunner", "--direct_num_workers=2",
                                              "--direct_running_mode=multi_processing"], args.chunk_bytes)
    elif method == DRIFTLINE_PORTABLE:
        from pipelines.config import BeamConfig

        facts = _driftline(log_dir, out_dir, BeamConfig(runner="PortableRunner").args(), args.chunk_bytes)
    elif method == TFX:
        facts = _tfx(log_dir, out_dir, args.chunk_bytes)
    else:
        raise SystemExit(f"unknown method {method}")
    return facts


# -- orchestration (in the parent process) -------------------------------------------

def run_method(method: str, facts: Dict[str, Any], work_dir: str, chunk_bytes: int, rep: int,
               breakdown: bool = False) -> Dict[str, Any]:
    run_dir = os.path.join(work_dir, "runs", f"n{facts['size']}", f"{method}-{rep}")
    result_file = run_dir + ".result.json"
    if os.path.exists(result_file):
        os.remove(result_file)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--log-dir", facts["log_dir"],
           "--run-dir", run_dir, "--result-file", result_file, "--chunk-bytes", str(chunk_bytes)]
    if breakdown:
        cmd.append("--breakdown")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: List[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-60:]
        if line.startswith("["):  # our own progress lines; Beam/TFX/absl logging stays quiet
            print(line, end="", flush=True)
    if proc.wait() != 0 or not os.path.exists(result_file):
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"{method} at size {facts['size']} failed (exit {proc.returncode})")
    with open(result_file) as f:
        result = json.load(f)
    result["loadavg_1m_before"] = round(load_before, 2)
    result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def verify(method: str, result: Dict[str, Any], facts: Dict[str, Any], reference: Optional[Dict[str, int]]) -> None:
    valid = facts["valid_events"]
    assert not result.get("error"), f"{method}: the run failed: {result['error']}"
    assert result["examples_written"] == valid, (
        f"{method}: wrote {result['examples_written']} examples, the log holds {valid} valid events")
    assert result["examples_reported"] == valid, (
        f"{method}: reported {result['examples_reported']} examples, the log holds {valid} valid events")
    assert result["dead_letters"] == facts["bad_lines"], (
        f"{method}: {result['dead_letters']} dead letters, the log holds {facts['bad_lines']} bad lines")
    if reference is not None:
        assert result["per_split"] == reference, f"{method}: per span/split counts differ from the ceiling's"


def summarize(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Best (fastest) repeat per (size, method), plus ratios."""
    best: Dict[Tuple[int, str], Dict[str, Any]] = {}
    for r in results:
        k = (r["size"], r["method"])
        ok = r.get("verified", True)
        if k not in best or (ok, -r["wall_s"]) > (best[k].get("verified", True), -best[k]["wall_s"]):
            best[k] = r  # the fastest verified run; a failed one only when no run of the method passed
    rows = []
    for (size, method), r in sorted(best.items(), key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]))):
        all_reps = [x for x in results if x["size"] == size and x["method"] == method]
        failed = [x for x in all_reps if not x.get("verified", True)]
        reps = [x for x in all_reps if x.get("verified", True)] or all_reps
        walls = sorted(x["wall_s"] for x in reps)
        min_cpu = min(x["cpu_s"] for x in reps)
        rows.append({"size": size, "method": method, "label": LABELS[method], "events": r["valid_events"],
                     "wall_s": round(r["wall_s"], 3), "events_per_s": round(r["valid_events"] / r["wall_s"]),
                     "cpu_s": round(r["cpu_s"], 2), "min_cpu_s": round(min_cpu, 2),
                     "events_per_cpu_s": round(r["valid_events"] / min_cpu),
                     "repeats": len(walls), "all_wall_s": [round(w, 3) for w in walls],
                     "all_cpu_s": sorted(round(x["cpu_s"], 2) for x in reps),
                     "examples_written": r["examples_written"], "loadavg_1m_before": r.get("loadavg_1m_before"),
                     "others_cpu_share": (round(r["others_cpu_share"], 2) if r.get("others_cpu_share") is not None
                                          else None),
                     "verified": r.get("verified", True), "runs": len(all_reps), "failed_runs": len(failed),
                     "failures": [x["verification_error"] for x in failed]})
    ratios = {}
    for size in sorted({r["size"] for r in rows}):
        by = {r["method"]: r for r in rows if r["size"] == size}
        drift = [by[m] for m in DRIFTLINE_METHODS if m in by and by[m]["verified"]]
        if not drift:
            continue
        head = max(drift, key=lambda r: r["events_per_s"])
        entry: Dict[str, Any] = {"headline_method": head["method"], "headline_events_per_s": head["events_per_s"]}
        for m in DRIFTLINE_METHODS + (TFX,):
            if m in by and PLAIN_TF in by:
                entry[f"{m}_vs_ceiling"] = round(by[m]["events_per_s"] / by[PLAIN_TF]["events_per_s"], 3)
            if m in by and PLAIN_ENCODER in by:
                entry[f"{m}_vs_plain_encoder"] = round(by[m]["events_per_s"] / by[PLAIN_ENCODER]["events_per_s"], 3)
        if PLAIN_TF in by:
            entry["headline_vs_ceiling"] = round(head["events_per_s"] / by[PLAIN_TF]["events_per_s"], 3)
            # Per CPU-second: steadier than wall time when other work shares the machine.
            for m in DRIFTLINE_METHODS + (TFX, PLAIN_ENCODER, DOFNS):
                if m in by:
                    entry[f"{m}_vs_ceiling_cpu"] = round(
                        by[m]["events_per_cpu_s"] / by[PLAIN_TF]["events_per_cpu_s"], 3)
        ratios[str(size)] = entry
    stages = {}
    for size in sorted({r["size"] for r in rows}):
        by = {r["method"]: r for r in rows if r["size"] == size}
        st = next((r["stages"] for r in results if r["size"] == size and r.get("stages")), None)
        entry = {}
        if st:
            entry["ParseChunk steps, each timed alone over the whole log (s)"] = st
        if DOFNS in by and DRIFTLINE_INMEMORY in by:
            entry["dofns_no_beam_s"] = by[DOFNS]["wall_s"]
            entry["beam_inmemory_s"] = by[DRIFTLINE_INMEMORY]["wall_s"]
            entry["beam_inmemory_overhead_s"] = round(by[DRIFTLINE_INMEMORY]["wall_s"] - by[DOFNS]["wall_s"], 3)
            entry["dofns_no_beam_cpu_s"] = by[DOFNS]["min_cpu_s"]
            entry["beam_inmemory_cpu_s"] = by[DRIFTLINE_INMEMORY]["min_cpu_s"]
            entry["beam_inmemory_overhead_cpu_s"] = round(
                by[DRIFTLINE_INMEMORY]["min_cpu_s"] - by[DOFNS]["min_cpu_s"], 3)
        if entry:
            stages[str(size)] = entry
    return {"rows": rows, "ratios": ratios, "where_the_time_goes": stages}


def plot(summary: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in summary["rows"]})
    methods = [m for m in METHODS if any(r["method"] == m for r in summary["rows"])]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True)
    width = 0.8 / len(methods)
    for ax, key, title in ((axes[0], "events_per_s", "events per wall-clock second (best run)"),
                           (axes[1], "events_per_cpu_s", "events per CPU-second (all processes)")):
        for i, m in enumerate(methods):
            xs, ys = [], []
            for j, s in enumerate(sizes):
                r = next((r for r in summary["rows"] if r["size"] == s and r["method"] == m), None)
                if r is not None and r.get("verified", True):  # a run that lost data has no throughput
                    xs.append(j + (i - (len(methods) - 1) / 2) * width)
                    ys.append(r[key])
            bars = ax.bar(xs, ys, width, label=LABELS[m], color=f"C{METHODS.index(m)}")
            ax.bar_label(bars, labels=[f"{y / 1000:.1f}k" for y in ys], fontsize=7)
        ax.set_xticks(range(len(sizes)), [f"{s:,} events" for s in sizes])
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("events / second (higher is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.suptitle("driftline ingest: event log -> gzipped TFRecords of tf.Example")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _others(row: Dict[str, Any]) -> str:
    if row.get("others_cpu_share") is not None:
        return f"{row['others_cpu_share']:.0%}"
    return f"load {row['loadavg_1m_before']}" if row.get("loadavg_1m_before") is not None else "-"


def render_section(report: Dict[str, Any], png_rel: str) -> str:
    m, s = report["machine"], report["summary"]
    lines = [
        START_MARK,
        "## Ingest throughput",
        "",
        "Event log (JSON Lines, simulated ad clicks) to gzipped TFRecords of `tf.Example`, split into",
        "event-time spans and train/eval. Every method runs in a fresh process (imports not timed) on the",
        "same cached log and must write exactly the log's valid events (asserted, per span and split);",
        f"{BAD_FRACTION:.1%} of lines are malformed and dead-lettered.",
        "",
        f"* Date: {report['date']}",
        f"* Machine: {m['nproc']} CPU ({m['cpu_model']}), {m['mem_gib']} GiB; Python {m['python']}, "
        f"TensorFlow {m['tensorflow']}, Beam {m['apache_beam']}, TFX {m['tfx']}",
        f"* Command: `{report['command']}`",
        f"* Log: {SIM_MINUTES} simulated minutes per size, seed {report['seed']}, chunk_bytes "
        f"{report['chunk_bytes']}, window {report['window']}",
        "",
        "| events | method | wall s | events/s | vs ceiling | CPU s | events/CPU-s | vs ceiling (CPU) | others' CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ceiling = {r["size"]: r for r in s["rows"] if r["method"] == PLAIN_TF}
    for r in s["rows"]:
        c = ceiling.get(r["size"])
        ratio = f"{r['events_per_s'] / c['events_per_s']:.2f}x" if c else "-"
        ratio_cpu = f"{r['events_per_cpu_s'] / c['events_per_cpu_s']:.2f}x" if c else "-"
        label = r["label"]
        if r.get("failed_runs"):
            label += (f" **(lost data in {r['failed_runs']} of {r['runs']} runs, see below)**" if r["verified"]
                      else f" **(FAILED verification in all {r['runs']} runs, see below)**")
        lines.append(f"| {r['size']:,} | {label} | {r['wall_s']:.2f} | {r['events_per_s']:,} | {ratio} | "
                     f"{r['min_cpu_s']:.1f} | {r['events_per_cpu_s']:,} | {ratio_cpu} | "
                     f"{_others(r)} |")
    lines += ["", "*wall s*: the fastest repeat; *CPU s*: the least CPU time of the repeats, summed over the "
              "process and its children (Beam's SDK workers). *others' CPU*: the share of the machine's "
              f"{m['nproc']} CPUs that other processes used during the best run (or, for older records, the "
              "1-minute load average before it); well above 0% means other work shared the CPU, so wall "
              "times are pessimistic and events per CPU-second is the steadier comparison (for the "
              "single-process methods it is close to the wall rate on an idle machine).", "",
              "Headline (the faster DirectRunner mode of driftline's Beam graph vs the plain tf.train.Example "
              "loop; target >= 0.5x):", ""]
    for size, e in s["ratios"].items():
        vs = f"{e['headline_vs_ceiling']:.2f}x the ceiling" if "headline_vs_ceiling" in e else "no ceiling run"
        cpu_key = f"{e['headline_method']}_vs_ceiling_cpu"
        if cpu_key in e:
            vs += f" ({e[cpu_key]:.2f}x per CPU-second)"
        lines.append(f"* {int(size):,} events: **{e['headline_events_per_s']:,} events/s** "
                     f"({LABELS[e['headline_method']]}), {vs}")
    failed = [r for r in s["rows"] if r.get("failed_runs")]
    if failed:
        lines += ["", "**Verification failures** (a run whose output does not hold exactly the log's valid events; "
                  "its timing is left out of the table unless no run of the method passed):", ""]
        for r in failed:
            for err in r["failures"]:
                lines.append(f"* {r['size']:,} events, {r['label']}: {err}")
    lines += ["", f"![ingest throughput]({png_rel})", ""]
    if s.get("where_the_time_goes"):
        lines += ["### Where driftline's time goes", ""]
        for size, e in s["where_the_time_goes"].items():
            parts = [f"* {int(size):,} events:"]
            if "dofns_no_beam_s" in e:
                share = (f"so Beam adds {e['beam_inmemory_overhead_s']:.2f}s wall / "
                         f"{e['beam_inmemory_overhead_cpu_s']:.2f} CPU-s."
                         if e["beam_inmemory_overhead_cpu_s"] >= 0 else
                         "so Beam's share is below the run-to-run noise.")
                parts.append(f"driftline's DoFns without Beam {e['dofns_no_beam_s']:.2f}s wall / "
                             f"{e['dofns_no_beam_cpu_s']:.2f} CPU-s, the same under DirectRunner in_memory "
                             f"{e['beam_inmemory_s']:.2f}s / {e['beam_inmemory_cpu_s']:.2f} CPU-s, {share}")
            st = e.get("ParseChunk steps, each timed alone over the whole log (s)")
            if st:
                pairs = st.items() if isinstance(st, dict) else st
                parts.append("Steps timed alone: " + "; ".join(f"{k} {v:.2f}s" for k, v in pairs) + ".")
            lines.append(" ".join(parts))
        lines.append("")
    if report.get("notes"):
        lines += [report["notes"].rstrip(), ""]
    lines.append(END_MARK)
    return "\n".join(lines)


def write_results_md(path: str, section: str) -> None:
    replace_section(path, "ingest", section)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="events per log")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (20k events, every method once)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "ingest.json"))
    p.add_argument("--png", default=os.path.join(ROOT, "benchmarks", "results", "ingest.png"))
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "driftline-bench"),
                   help="cached logs and scratch outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per method and size (default: 3 up to 200k events, 1 above)")
    p.add_argument("--tfx-max-size", type=int, default=100_000,
                   help="run the full TFX component only at sizes up to this")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--chunk-bytes", type=int, default=None, help="default: SourceConfig().chunk_bytes")
    p.add_argument("--notes-file", default=None, help="markdown appended to the RESULTS.md section")
    p.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md/json/png")
    p.add_argument("--from-json", default=None,
                   help="run nothing: re-render RESULTS.md and the plot from a saved results JSON (with --notes-file)")
    # Internal: one measurement in a child process.
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--log-dir", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.chunk_bytes is None:
        from pipelines.config import SourceConfig

        args.chunk_bytes = SourceConfig().chunk_bytes
    if args.worker:
        worker_main(args)
        return 0
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        if args.notes_file:
            report["notes"] = open(args.notes_file).read()
        report["summary"] = summarize(report["runs"])  # the runs are the record; the summary is derived
        write_outputs(report, args)
        return 0
    if args.quick:
        args.sizes = [20_000]
        args.tfx_max_size = max(args.tfx_max_size, 20_000)
        if args.repeats is None:
            args.repeats = 1

    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT)
                                                 else sys.executable, os.path.relpath(os.path.abspath(__file__), ROOT)]
                       + (sys.argv[1:] if argv is None else argv))
    os.makedirs(args.work_dir, exist_ok=True)
    log(f"ingest benchmark: sizes {args.sizes}, methods {args.methods}, work dir {args.work_dir}")
    machine = machine_info()
    log(f"machine: {machine['nproc']} CPU ({machine['cpu_model']}), {machine['mem_gib']} GiB")
    results: List[Dict[str, Any]] = []
    failures: List[str] = []
    logs: Dict[str, Any] = {}
    for size in args.sizes:
        facts = ensure_log(args.work_dir, size, args.seed)
        logs[str(size)] = facts
        repeats = args.repeats or (3 if size <= 200_000 else 1)
        reference: Optional[Dict[str, int]] = None
        for method in args.methods:
            if method == TFX and size > args.tfx_max_size:
                log(f"size {size}: skipping {method} (--tfx-max-size {args.tfx_max_size})")
                continue
            for rep in range(repeats):
                log(f"size {size}: {method} run {rep + 1}/{repeats}")
                r = run_method(method, facts, args.work_dir, args.chunk_bytes, rep, breakdown=rep == 0)
                r.update(size=size, valid_events=facts["valid_events"], rep=rep, verified=True)
                try:
                    verify(method, r, facts, reference)
                except AssertionError as e:
                    # Recorded, not fatal: a method that loses or duplicates data is a finding to report.
                    r.update(verified=False, verification_error=str(e))
                    failures.append(f"size {size}, {method} run {rep + 1}: {e}")
                    log(f"size {size}: {method}: VERIFICATION FAILED: {e}")
                if reference is None and r["verified"]:
                    reference = r["per_split"]
                results.append(r)
                if r["verified"]:
                    log(f"size {size}: {method}: {r['wall_s']:.2f}s wall, "
                        f"{facts['valid_events'] / r['wall_s']:,.0f} events/s, {r['cpu_s']:.1f}s CPU "
                        f"({r['examples_written']} examples verified)")
    summary = summarize(results)
    log("summary:")
    for row in summary["rows"]:
        log(f"  {row['size']:>9,} {row['method']:<24} {row['wall_s']:>8.2f}s {row['events_per_s']:>9,} ev/s "
            f"{row['min_cpu_s']:>7.1f}s CPU {row['events_per_cpu_s']:>9,} ev/CPU-s")
    for size, e in summary["ratios"].items():
        log(f"  {int(size):>9,} headline {e['headline_method']}: {json.dumps(e)}")
    window = _window()
    report = {
        "benchmark": "ingest", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "machine": machine, "seed": args.seed, "chunk_bytes": args.chunk_bytes,
        "window": f"span {window.span_ms // 1000}s, lateness {window.allowed_lateness_ms // 1000}s, "
                  f"eval {window.eval_fraction}",
        "logs": logs, "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "per_split"} for r in results],
        "notes": open(args.notes_file).read() if args.notes_file else "",
    }
    if not args.no_write:
        write_outputs(report, args)
    if failures:
        log("VERIFICATION FAILURES (recorded in the results):\n  " + "\n  ".join(failures))
        return 1
    return 0


def write_outputs(report: Dict[str, Any], args: argparse.Namespace) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    plot(report["summary"], args.png)
    png_rel = os.path.relpath(args.png, os.path.dirname(os.path.abspath(args.out)))
    write_results_md(args.out, render_section(report, png_rel))
    log(f"wrote {args.out}, {args.json}, {args.png}")


if __name__ == "__main__":
    sys.exit(main())
