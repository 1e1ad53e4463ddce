"""Real artifacts for the serving tests, without running a pipeline.

A transform graph written by TFT on Beam (`tests/latency_helpers.py`), the
default model exported through `pipelines.ads_model.export_serving_model`,
and simulated events of the built-in stream, parsed by its event schema.
"""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from typing import Any, Dict, List, Optional

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from latency_helpers import SCHEMA, TRANSFORM, write_transform_graph  # noqa: F401  (re-exported)


def events(n: int, seed: int = 3) -> List[Dict[str, Any]]:
    """`n` simulated events of the built-in stream, parsed as ingestion parses them."""
    from pipelines.simulator import SimulatorConfig, simulate

    log = tempfile.mkdtemp(prefix="serve-events-")
    simulate(log, SimulatorConfig(minutes=max(1, -(-n // 200)), events_per_minute=200, seed=seed))
    out = []
    for path in sorted(glob.glob(os.path.join(log, "*.jsonl"))):
        with open(path, "rb") as f:
            out += [SCHEMA.parse(line) for line in f if line.strip()]
    assert len(out) >= n, f"the simulator wrote {len(out)} events, wanted {n}"
    return out[:n]


def export_ads_model(export_dir: str, transform_graph: str, seed: int = 0) -> str:
    """The default model, untrained (weights from `seed`), exported as the trainer exports it."""
    import tensorflow_transform as tft

    from pipelines import ads_model
    from pipelines.config import TrainerConfig
    from transforms import stream

    model = ads_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM), stream.numeric_features(SCHEMA, TRANSFORM),
                                  dict(TrainerConfig().model), seed=seed)
    ads_model.export_serving_model(model, tft.TFTransformOutput(transform_graph), SCHEMA.label_field, export_dir)
    return export_dir


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_models(root: str, seeds=(1, 2, 3)) -> Dict[int, str]:
    """One transform graph and the default model exported with each seed: {seed: SavedModel folder}."""
    graph = write_transform_graph(os.path.join(root, "graph"))
    return {seed: export_ads_model(os.path.join(root, f"m{seed}"), graph, seed=seed) for seed in seeds}


@contextlib.contextmanager
def running_server(home: str, *args: str, port: Optional[int] = None, timeout_s: float = 180):
    """The real `driftline serve --home HOME ARGS` process on a free loopback port, healthy; stopped after.

    Yields {"base", "home", "proc", "port", "log", "serving_dir"}. The process is stopped with SIGTERM (a
    clean stop) and killed if it does not end within 30 s.
    """
    import subprocess
    import sys
    import time

    import httpx

    port = port or free_port()
    log_path = os.path.join(home, "server.log")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--home", home, "--port", str(port),
                                 *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            assert proc.poll() is None, f"the server exited: {open(log_path).read()[-3000:]}"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no healthy server after {timeout_s} s: " \
                                                f"{open(log_path).read()[-3000:]}"
            time.sleep(0.3)
        yield {"base": base, "home": home, "proc": proc, "port": port, "log": log_path,
               "serving_dir": os.path.join(home, "serving")}
    finally:
        from pipelines.closed_loop import stop_server

        stop_server(proc)


def record_model(history, newest_event_ms: int, blessed: bool = True, push_version: Optional[int] = None,
                 pushed_at_ms: Optional[int] = None, saved_model: Optional[str] = None) -> int:
    """One cycle's records in a real SQLite ML Metadata (tests/mlmd_history.py writes them as TFX does): an
    ingest, a transform, a Model trained on data up to `newest_event_ms` (its SavedModel copied from
    `saved_model` to `<uri>/Format-Serving`, the trainer's layout), its blessing, and, for `push_version`, the
    PushedModel that published `<serving_dir>/<push_version>`. Returns the Model's id."""
    import shutil

    run = history.new_run()
    examples = history.ingest(run)
    _, graph = history.execute(run, "Transform", {"examples": examples},
                               {"transform_graph": [("TransformGraph", {})]})
    _, out = history.execute(run, "WarmStartTrainer", {"examples": examples,
                                                       "transform_graph": graph["transform_graph"]},
                             {"model": [("Model", {"start": "cold", "base_model_id": -1,
                                                   "max_event_time_ms": newest_event_ms})]})
    model_id = out["model"][0]
    if saved_model is not None:
        shutil.copytree(saved_model, os.path.join(history.artifact(model_id).uri, "Format-Serving"))
    _, ev = history.execute(run, "Evaluator", {"examples": examples, "model": [model_id]},
                            {"blessing": [("ModelBlessing", {"blessed": int(blessed), "current_model_id": model_id,
                                                             "reason": "blessed" if blessed else "refused"})]})
    if push_version is not None:
        history.execute(run, "BlessingPusher", {"model": [model_id], "model_blessing": ev["blessing"]},
                        {"pushed_model": [("PushedModel", {
                            "pushed": 1, "pushed_version": str(push_version), "model_id": model_id,
                            "pushed_destination": os.path.join(history.serving_dir, str(push_version)),
                            "pushed_at_ms": pushed_at_ms})]})
    return model_id


def until(predicate, timeout: float = 60, what: str = "the condition"):
    """Polls `predicate` every 0.1 s until it returns something true (returned), or fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(0.1)


def ingest_impressions(home: str, tmp_path, span_ms: int):
    """StreamingExampleGen's ingest of the server's impressions log (every closed span, one run): (the
    examples' serialized bytes, the dead letters' rows)."""
    import json

    import apache_beam as beam
    import tensorflow as tf

    from components.streaming_example_gen import ingest, windowing
    from components.streaming_example_gen.sources import EventLogSource
    from pipelines.serve.impressions import impressions_schema

    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    run = ingest.run_ingest(beam.Pipeline, source=EventLogSource(os.path.join(home, "impressions"),
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
            with open(path) as f:
                dead += [json.loads(line) for line in f]
    return examples, dead


def read_impressions(home: str) -> List[Dict[str, Any]]:
    """Every line of `<home>/impressions/`, parsed, in segment order (none while the folder is not there:
    the writer process creates it with its first batch, a moment after the first request)."""
    import json

    folder = os.path.join(home, "impressions")
    lines: List[Dict[str, Any]] = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.endswith(".jsonl"):
            with open(os.path.join(folder, name), "rb") as f:
                lines += [json.loads(line) for line in f if line.strip()]
    return lines
