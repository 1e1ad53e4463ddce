"""Shared helpers of the ingest end-to-end tests (test_ingest_e2e.py, test_exactly_once.py).

* :class:`SyntheticLog` writes an ad-click log with :class:`EventLogWriter`
  (valid events in arrival order, late events, malformed lines of many kinds,
  optionally a half-written last line) and remembers what it wrote, so tests
  compare the component's output with the truth, not with the component's
  own arithmetic.
* :func:`scan_log` splits the log files into lines with plain Python, without
  the reader under test.
* :func:`published_spans` reads what ML Metadata says was published and then
  reads the examples and dead letters of exactly those artifacts, through
  their MLMD URIs only.
* :func:`forkserver_main` is the body of a subprocess that imports TFX once
  and forks one child per ingest run, so a test can SIGKILL many real runs
  without paying the TFX import (30-50 s) for each one.

Nothing here imports TFX or TensorFlow at module level.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import random
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from components.event_log import SEGMENT_SUFFIX, EventLogWriter, Position  # noqa: E402

# 2026-01-01T00:00:00Z, a multiple of every span length the tests use.
BASE_MS = 1_767_225_600_000
MINUTE_MS = 60_000
NODE_ID = "StreamingExampleGen"
CATEGORIES = ("sports", "travel", "food", "tech", "fashion")
DEVICES = ("mobile", "desktop", "tablet")


# -- writing a log ---------------------------------------------------------------------------------------------


def ad_click_event(event_id: str, event_time_ms: int, rng: random.Random) -> dict:
    return {
        "event_id": event_id,
        "event_time": event_time_ms,
        "user_id": f"u{rng.randrange(300)}",
        "ad_id": f"ad{rng.randrange(60)}",
        "ad_category": rng.choice(CATEGORIES),
        "device": rng.choice(DEVICES),
        "hour_of_day": (event_time_ms // 3_600_000) % 24,
        "price": round(rng.uniform(0.05, 9.0), 3),
        "clicked": int(rng.random() < 0.12),
    }


def _dumps(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def malformed_line(index: int, rng: random.Random) -> bytes:
    """One line the ad-click schema must reject; `index` picks the kind and makes the line unique."""
    base = ad_click_event(f"bad-{index}", BASE_MS + index, rng)
    kind = index % 10
    if kind == 0:
        return f"this is not json #{index}".encode()
    if kind == 1:
        del base["clicked"]
        return _dumps(base)
    if kind == 2:
        base["price"] = "expensive"
        return _dumps(base)
    if kind == 3:
        # Python's json accepts NaN; the schema must not.
        return json.dumps(dict(base, price=float("nan"))).encode()
    if kind == 4:
        base["user_id"] = "x" * 1500
        return _dumps(base)
    if kind == 5:
        return b"\xff\xfe not utf-8 \xc3(" + str(index).encode()
    if kind == 6:
        return f"[{index}, 2, 3]".encode()
    if kind == 7:
        base["event_time"] = -5 - index
        return _dumps(base)
    if kind == 8:
        base["clicked"] = True
        return _dumps(base)
    return _dumps(base)[:-7]  # truncated JSON object


@dataclasses.dataclass
class AppendReport:
    """What one `SyntheticLog.append` wrote."""

    valid_ids: List[str]
    out_of_order_ids: List[str]  # event time behind the newest event time written before it
    malformed: List[bytes]
    max_event_time_ms: Optional[int]


class SyntheticLog:
    """An ad-click event log that remembers every line it wrote.

    `valid` maps event_id to event time for every valid event whose line is
    complete in the log; a half-written last line (`partial_tail=True`) is
    completed by the next append and only counts from then on.
    """

    def __init__(self, log_dir: str, seed: int, max_segment_bytes: int = 1 << 20):
        self.log_dir = log_dir
        self.max_segment_bytes = max_segment_bytes
        self.rng = random.Random(seed)
        self.valid: Dict[str, int] = {}
        self.malformed: List[bytes] = []
        self.max_event_time_ms: Optional[int] = None
        self._next_id = 0
        self._next_bad = 0
        self._partial: Optional[Tuple[str, int, bytes]] = None  # (event_id, time, the rest of the line)
        os.makedirs(log_dir, exist_ok=True)

    def _new_id(self, prefix: str = "ev") -> str:
        self._next_id += 1
        return f"{prefix}-{self._next_id:07d}"

    def _finish_partial(self) -> Optional[Tuple[str, int]]:
        if self._partial is None:
            return None
        event_id, t, rest = self._partial
        path = newest_segment_path(self.log_dir)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, rest + b"\n")
        finally:
            os.close(fd)
        self._partial = None
        return event_id, t

    def append(self, start_ms: int, minutes: float, per_minute: int, *, late_fraction: float = 0.0,
               late_range_ms: Tuple[int, int] = (0, 0), malformed: int = 0,
               extra_events: Sequence[Tuple[str, int]] = (), partial_tail: bool = False,
               not_before_ms: int = 0) -> AppendReport:
        """Appends `minutes` of events starting at event time `start_ms`, in arrival order.

        A `late_fraction` of the events carry an event time `late_range_ms`
        behind their arrival time; `extra_events` (id prefix, event time) are
        written at random places among them; `malformed` bad lines likewise.
        With `partial_tail` the batch ends in half of one more valid line.
        Late event times are clamped to `not_before_ms`.
        """
        rng = self.rng
        report = AppendReport([], [], [], None)
        finished = self._finish_partial()
        if finished is not None:
            self.valid[finished[0]] = finished[1]
            report.valid_ids.append(finished[0])
        n = int(round(minutes * per_minute))
        step = MINUTE_MS / per_minute
        records: List[Tuple[str, bytes, Optional[Tuple[str, int]]]] = []
        for i in range(n):
            arrival = start_ms + int(i * step) + rng.randrange(int(step) or 1)
            t = arrival
            if late_fraction and rng.random() < late_fraction:
                t = max(not_before_ms, arrival - rng.randint(*late_range_ms))
            event_id = self._new_id()
            records.append(("valid", _dumps(ad_click_event(event_id, t, rng)), (event_id, t)))
        for prefix, t in extra_events:
            event_id = self._new_id(prefix)
            records.insert(rng.randrange(len(records) + 1),
                           ("valid", _dumps(ad_click_event(event_id, t, rng)), (event_id, t)))
        for _ in range(malformed):
            line = malformed_line(self._next_bad, rng)
            self._next_bad += 1
            records.insert(rng.randrange(len(records) + 1), ("bad", line, None))
        with EventLogWriter(self.log_dir, max_segment_bytes=self.max_segment_bytes) as writer:
            # One write call per line keeps rotation fine-grained; batches of lines would do as well.
            for kind, line, info in records:
                writer.write_lines([line])
        newest_before = self.max_event_time_ms
        for kind, line, info in records:
            if kind == "bad":
                self.malformed.append(line)
                report.malformed.append(line)
                continue
            event_id, t = info
            self.valid[event_id] = t
            report.valid_ids.append(event_id)
            if newest_before is not None and t < newest_before:
                report.out_of_order_ids.append(event_id)
            newest_before = t if newest_before is None else max(newest_before, t)
        if partial_tail:
            event_id = self._new_id()
            t = start_ms + int(minutes * MINUTE_MS) - 1
            line = _dumps(ad_click_event(event_id, t, rng))
            cut = len(line) // 2
            fd = os.open(newest_segment_path(self.log_dir), os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, line[:cut])
            finally:
                os.close(fd)
            self._partial = (event_id, t, line[cut:])
        times = [self.valid[i] for i in report.valid_ids]
        if times:
            report.max_event_time_ms = max(times)
            self.max_event_time_ms = max(times + ([self.max_event_time_ms] if self.max_event_time_ms else []))
        return report


def newest_segment_path(log_dir: str) -> str:
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(SEGMENT_SUFFIX))
    return os.path.join(log_dir, names[-1])


@dataclasses.dataclass(frozen=True)
class LogLine:
    segment: str
    offset: int
    line: bytes


def scan_log(log_dir: str) -> Tuple[List[LogLine], Position]:
    """Every complete, non-blank line of the log, in log order, and the position after the last one.

    Plain byte splitting, independent of `components.event_log.read_chunk`.
    A last line without its newline in the newest segment is not complete.
    """
    names = sorted(n for n in os.listdir(log_dir) if n.endswith(SEGMENT_SUFFIX))
    lines: List[LogLine] = []
    end = Position(names[0], 0) if names else Position("", 0)
    for i, name in enumerate(names):
        with open(os.path.join(log_dir, name), "rb") as f:
            data = f.read()
        newest = i == len(names) - 1
        complete = data[:data.rfind(b"\n") + 1] if newest else data
        offset = 0
        for piece in complete.split(b"\n"):
            if offset >= len(complete):
                break
            if piece.strip():
                lines.append(LogLine(name, offset, piece))
            offset += len(piece) + 1
        end = Position(name, len(complete))
    return lines, end


def event_id_of(line: bytes) -> Optional[str]:
    try:
        return json.loads(line).get("event_id")
    except Exception:
        return None


# -- reading what was published ------------------------------------------------------------------------------------


def open_store(metadata_path: str):
    from pipelines.metadata import open_store as _open

    return _open(metadata_path)


def node_context(store, pipeline_name: str, node_id: str = NODE_ID):
    return store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")


def int_prop(artifact, key: str) -> int:
    return artifact.custom_properties[key].int_value


def str_prop(artifact, key: str) -> str:
    return artifact.custom_properties[key].string_value


@dataclasses.dataclass
class PublishedSpan:
    artifact: object  # metadata_store_pb2.Artifact
    span: int
    uri: str
    # split -> [(event_id, event_time_ms)], as read back from the TFRecords of the artifact's URI
    examples: Dict[str, List[Tuple[str, int]]]
    # rows of <uri>/dead_letter/*.jsonl
    dead_letters: List[dict]
    examples_files: List[str]

    @property
    def all_ids(self) -> List[str]:
        return [e for rows in self.examples.values() for e, _ in rows]


def read_tfrecord_examples(files: Sequence[str]) -> List[Tuple[str, int]]:
    """(event_id, event_time) of every tf.Example in gzipped TFRecord files, parsed by TensorFlow."""
    import tensorflow as tf

    out: List[Tuple[str, int]] = []
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for path in files:
        # TensorFlow's own record reader (checks the CRCs); much cheaper per file than a tf.data pipeline.
        for record in tf.compat.v1.io.tf_record_iterator(path, options):
            example = tf.train.Example.FromString(record)
            feature = example.features.feature
            out.append((feature["event_id"].bytes_list.value[0].decode(), int(feature["event_time"].int64_list.value[0])))
    return out


def read_dead_letters(uri: str) -> List[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(uri, "dead_letter", "*.jsonl"))):
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    row["_file"] = path
                    rows.append(row)
    return rows


def dead_letter_bytes(row: dict) -> bytes:
    import base64

    if "line_base64" in row:
        return base64.b64decode(row["line_base64"])
    return row["line"].encode("utf-8")


def examples_artifacts(store, pipeline_name: str, node_id: str = NODE_ID) -> list:
    """Every Examples artifact in the node's context, whatever its state, oldest first."""
    ctx = node_context(store, pipeline_name, node_id)
    if ctx is None:
        return []
    return sorted(_typed(store, store.get_artifacts_by_context(ctx.id), "Examples"), key=lambda a: a.id)


def _typed(store, artifacts, type_name: str) -> list:
    type_id = store.get_artifact_type(type_name).id
    return [a for a in artifacts if a.type_id == type_id]


def published_spans(metadata_path: str, pipeline_name: str, node_id: str = NODE_ID,
                    read_examples: bool = True) -> List[PublishedSpan]:
    """The LIVE Examples artifacts of the node that carry a committed state, with their data.

    Data is read only through each artifact's MLMD URI and split names,
    never by globbing the pipeline root, so output of runs that never
    published cannot leak in.
    """
    from ml_metadata.proto import metadata_store_pb2

    store = open_store(metadata_path)
    out: List[PublishedSpan] = []
    for a in examples_artifacts(store, pipeline_name, node_id):
        if a.state != metadata_store_pb2.Artifact.LIVE or "committed_state" not in a.custom_properties:
            continue
        split_names = json.loads(a.properties["split_names"].string_value)
        examples: Dict[str, List[Tuple[str, int]]] = {}
        files_all: List[str] = []
        for split in split_names:
            files = sorted(glob.glob(os.path.join(a.uri, f"Split-{split}", "*")))
            files_all += files
            examples[split] = read_tfrecord_examples(files) if read_examples else []
        out.append(PublishedSpan(a, a.properties["span"].int_value, a.uri, examples, read_dead_letters(a.uri),
                                 files_all))
    return out


def executions_of(store, artifact_id: int, event_type) -> list:
    events = [e for e in store.get_events_by_artifact_ids([artifact_id]) if e.type == event_type]
    return store.get_executions_by_id([e.execution_id for e in events])


# -- a fork server for cheap, killable ingest runs ----------------------------------------------------------------

# Lines the fork server's children log (absl INFO) at known phases of a run.
MARK_EXECUTOR_START = "Going to run a new execution"
MARK_EXECUTOR_DONE = "StreamingExampleGen: read"
MARK_PUBLISHING = "Publishing output artifacts"


def forkserver_main(config_json: str) -> None:
    """Imports TFX and driftline once, then forks one child per `RUN <log path>` line on stdin.

    Protocol (one line each way):
      RUN <log path>  ->  PID <pid>     a child starts `pipelines.local_runner.run_ingest(config)`
      WAIT <pid>      ->  EXIT <code>   reaps it: the exit code, or -<signal> when killed
    The child opens ML Metadata itself; the server never touches it. The
    server only imports, so each child is a fresh ingest process in all but
    the import time.
    """
    # Importing is all this process does before forking: no MLMD, no Beam, no threads of our own.
    from absl import logging as absl_logging

    from pipelines.config import BeamConfig, DriftlineConfig, KafkaConfig, SourceConfig, WindowConfig
    from pipelines import local_runner, pipeline as _pipeline  # noqa: F401  (the import is the point)
    import tfx.v1  # noqa: F401

    cfg = json.loads(config_json)
    if "kafka" in cfg:  # a KafkaConfig's fields, for the Kafka source's kill test
        source = SourceConfig(kind="kafka", kafka=KafkaConfig.from_json(json.dumps(cfg["kafka"])))
    else:
        source = SourceConfig(log_dir=cfg["log_dir"], chunk_bytes=cfg["chunk_bytes"])
    config = DriftlineConfig(
        pipeline_name=cfg["pipeline_name"], home=cfg["home"],
        source=source,
        window=WindowConfig(span_seconds=cfg["span_seconds"], allowed_lateness_seconds=cfg["allowed_lateness_seconds"],
                            eval_fraction=cfg.get("eval_fraction", 0.2)),
        beam=BeamConfig(direct_num_workers=cfg.get("direct_num_workers", 1)))
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "RUN":
            pid = os.fork()
            if pid == 0:  # the child: one ingest run, its log in `arg`
                code = 1
                try:
                    fd = os.open(arg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    absl_logging.set_verbosity(absl_logging.INFO)
                    absl_logging.use_absl_handler()
                    local_runner.run_ingest(config)
                    code = 0
                except BaseException:  # noqa: BLE001: the exit code and the log tell the test
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stderr.flush()
                    sys.stdout.flush()
                    os._exit(code)
            out.write(f"PID {pid}\n")
        elif cmd == "WAIT":
            _, status = os.waitpid(int(arg), 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write(f"EXIT {code}\n")
        elif cmd == "QUIT":
            out.write("BYE\n")
            out.flush()
            return
        else:
            out.write(f"ERROR unknown command {line!r}\n")
        out.flush()


class ForkServer:
    """The test side of `forkserver_main`."""

    def __init__(self, config: dict, stderr_path: str, timeout_s: float = 240.0):
        import subprocess

        bootstrap = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r); import ingest_helpers; "
                     "ingest_helpers.forkserver_main(sys.argv[1])" % (REPO_ROOT, os.path.dirname(__file__)))
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", bootstrap, json.dumps(config)], cwd=REPO_ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, bufsize=1)
        self._expect("READY", timeout_s, stderr_path)

    def _expect(self, word: str, timeout_s: float, stderr_path: str = "") -> str:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith(word):
            tail = ""
            if stderr_path and os.path.exists(stderr_path):
                with open(stderr_path, "rb") as f:
                    tail = f.read()[-4000:].decode("utf-8", "replace")
            raise RuntimeError(f"fork server: expected {word}, got {line!r}\n{tail}")
        return line.split(" ", 1)[1].strip() if " " in line else ""

    def start_run(self, log_path: str) -> int:
        self.proc.stdin.write(f"RUN {log_path}\n")
        self.proc.stdin.flush()
        return int(self._expect("PID", 30))

    def wait(self, pid: int, timeout_s: float = 180.0) -> int:
        self.proc.stdin.write(f"WAIT {pid}\n")
        self.proc.stdin.flush()
        return int(self._expect("EXIT", timeout_s))

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("QUIT\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        finally:
            self._stderr.close()


def file_has(path: str, marker: str) -> bool:
    try:
        with open(path, "rb") as f:
            return marker.encode() in f.read()
    except FileNotFoundError:
        return False


def tail(path: str, n: int = 4000) -> str:
    """The end of a child's log file, for assertion messages."""
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no file)"


def alive(pid: int) -> bool:
    """True while the child runs (a finished child stays a zombie until its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- committed states ---------------------------------------------------------------------------------------------


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


def committed_without_cutoffs(state_json: str, ends: List, clock: Tuple[int, int],
                              max_future_ms: int = 300_000) -> dict:
    """A committed state less its future cutoffs, after checking them: one per run whose read may still be
    re-read (`ends`: their ends as JSON values, oldest first), each that run's clock (between `clock`'s two
    readings, taken around the run) plus `max_future_ms`, the default window.max_future_seconds."""
    state = json.loads(state_json)
    cutoffs = state.pop("cutoffs")
    assert [end for end, _ in cutoffs] == ends, cutoffs
    assert all(clock[0] + max_future_ms <= cutoff <= clock[1] + max_future_ms for _, cutoff in cutoffs), (cutoffs, clock)
    return state


def cutoff_clocks_dropped(state: Optional[dict]) -> Optional[dict]:
    """A committed state (as JSON data) with its future cutoffs reduced to their ends: runs differ in clocks."""
    if state is None:
        return None
    return dict(state, cutoffs=[end for end, _ in state.get("cutoffs", [])])
