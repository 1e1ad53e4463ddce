"""The multi_processing chunk loss, root-caused: Beam's runner-side data plane dropped bytes a periodic flush raced.

`data_plane.TimeBasedBufferingClosableOutputStream` flushes from a timer thread with
`callback(self.get()); self._clear()`, while the runner's bundle thread writes into it unlocked: a
write between the two is cleared unsent (components/beam_data_plane.py). The runner flushes once a
second, so on its own the race needs a send loop longer than a second (big inputs, busy cores). Here
the flush interval is shortened (`worker_handlers.DATA_BUFFER_TIME_LIMIT_MS`, read when the runner
starts its gRPC server), which changes only how often the race window opens, not what a correct data
plane must deliver: every byte written.
"""
from __future__ import annotations

import json
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane

from components.beam_data_plane import make_runner_data_plane_lossless
from pipelines.config import BeamConfig


def test_a_write_racing_the_periodic_flush_is_sent():
    make_runner_data_plane_lossless()
    sent = []

    def send(data: bytes) -> None:
        if data:
            sent.append(data)
            time.sleep(0.005)  # building and queueing the Elements proto: the writing thread runs meanwhile

    stream = data_plane.ClosableOutputStream.create(send, send, 20)
    assert isinstance(stream, data_plane.TimeBasedBufferingClosableOutputStream)
    blob, written, started = b"x" * 100, 0, time.monotonic()
    while time.monotonic() - started < 1.0:  # ~50 flushes race the writes
        stream.write(blob)
        written += 1
        time.sleep(0.0005)
    stream.close()
    assert b"".join(sent) == blob * written


class _Parse(beam.DoFn):
    """Stands in for ParseChunk: one big element per chunk, as a parsed chunk of a 1M-event log is."""

    def process(self, chunk):
        yield chunk, b"x" * PAYLOAD_BYTES


class _Write(beam.DoFn):
    """Stands in for WriteChunk: a side input, so its input is materialized and sent to the workers."""

    def process(self, parsed, newest):
        yield parsed[0]


PAYLOAD_BYTES = 2_000_000
CHUNKS = 40


def test_multi_processing_returns_every_chunk_through_a_side_input_stage(tmp_path, monkeypatch):
    # Flush the runner's input streams every 10 ms instead of every second: the ~80 MB send loops
    # here then span several flushes, as the loops of a 1M-event ingest on busy cores spanned the first.
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 10)
    make_runner_data_plane_lossless()
    here = os.path.dirname(os.path.abspath(__file__))
    # The SDK workers are subprocesses: they import the DoFns above from this folder.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    args = BeamConfig(direct_num_workers=2).args()
    assert "--direct_running_mode=multi_processing" in args
    out = str(tmp_path / "chunks.json")
    # The shape of ingest.build_ingest: chunks -> Reshuffle -> parse -> (global combine -> side input)
    # and parse -> write(side input) -> ToList.
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        parsed = (p | beam.Create(list(range(CHUNKS))) | beam.Reshuffle() | "Parse" >> beam.ParDo(_Parse()))
        newest = parsed | beam.Map(lambda pc: pc[0]) | beam.CombineGlobally(lambda xs: max(xs, default=None))
        _ = (parsed | "Write" >> beam.ParDo(_Write(), beam.pvalue.AsSingleton(newest))
             | beam.combiners.ToList() | beam.Map(_save, out))
    with open(out) as f:
        assert sorted(json.load(f)) == list(range(CHUNKS))


def _save(chunks, path):
    with open(path, "w") as f:
        json.dump(chunks, f)
