"""StreamingExampleGen's ingest graph under Beam's PortableRunner equals DirectRunner's, example by example.

PortableRunner (`beam.runner: PortableRunner`: an embedded job server, LOOPBACK SDK workers) runs every
step through the Fn API: DoFns pickled, elements encoded by their coders and sent over gRPC, bundles
split as a portable runner (Dataflow, Flink) splits them. The same log goes through the real ingest
graph (`ingest.run_ingest`, no TFX) under both runners; every published example is parsed back into a
`tf.Example` and compared per span and split (the order of features inside the serialized bytes may
differ between runners, so examples are compared re-serialized deterministically), and so are the dead
letters, the per-span counts and the committed state. The evaluator's TFMA graph is compared the same way
in tests/test_evaluator_component.py.
"""
from __future__ import annotations

import collections
import glob
import os
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from components.event_schema import ad_click_schema
from components.streaming_example_gen import ingest, windowing
from components.streaming_example_gen.sources import EventLogSource
from ingest_helpers import BASE_MS, MINUTE_MS, SyntheticLog, dead_letter_bytes, read_dead_letters
from pipelines.config import BeamConfig, ConfigError

SPAN_MS = 10 * MINUTE_MS
WINDOW = windowing.Window(span_ms=SPAN_MS, allowed_lateness_ms=MINUTE_MS, eval_fraction=0.2)


def _published(root: str, spans) -> dict:
    """(span, split) -> Counter of examples, each parsed and re-serialized with sorted map keys."""
    import tensorflow as tf

    out = {}
    for span in spans:
        for split_dir in sorted(glob.glob(os.path.join(ingest.span_dir(root, span), "Split-*"))):
            examples = collections.Counter()
            for path in glob.glob(os.path.join(split_dir, "*.tfrecord.gz")):
                for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                    example = tf.train.Example.FromString(record.numpy())
                    examples[example.SerializeToString(deterministic=True)] += 1
            out[(span, os.path.basename(split_dir))] = examples
    return out


def _dead_letters(root: str, spans) -> collections.Counter:
    return collections.Counter(dead_letter_bytes(row) for span in spans
                               for row in read_dead_letters(ingest.span_dir(root, span)))


def _ingest(tmp_path, log_dir: str, name: str, beam_args):
    root, work = str(tmp_path / name), str(tmp_path / f"{name}-work")
    os.makedirs(work)
    started = time.monotonic()
    # Small chunks: a dozen chunks, so the runner really splits the read across bundles.
    run = ingest.run_ingest(lambda: beam.Pipeline(options=PipelineOptions(beam_args)),
                            source=EventLogSource(log_dir, chunk_bytes=40_000), schema=ad_click_schema(),
                            window=WINDOW, state=windowing.CommittedState(), output_root=root, work_dir=work)
    return run, root, time.monotonic() - started


def test_ingest_under_the_portable_runner_equals_direct_runner_example_by_example(tmp_path):
    log = SyntheticLog(str(tmp_path / "events"), seed=24, max_segment_bytes=150_000)
    # 3,000 events over 30 minutes (three spans closed by the last minutes), some late, some malformed.
    log.append(BASE_MS, 30, 100, late_fraction=0.05, late_range_ms=(0, 2 * MINUTE_MS), malformed=25)
    log.append(BASE_MS + 30 * MINUTE_MS, 12, 50)

    direct, direct_root, direct_s = _ingest(tmp_path, log.log_dir, "direct", BeamConfig().args())
    portable_args = BeamConfig(runner="PortableRunner").args()
    assert "--job_endpoint=embed" in portable_args and "--environment_type=LOOPBACK" in portable_args
    portable, portable_root, portable_s = _ingest(tmp_path, log.log_dir, "portable", portable_args)

    spans = sorted(direct.result.decision.emitted_spans)
    assert spans == sorted(portable.result.decision.emitted_spans) and len(spans) >= 3
    assert direct.result.chunks == portable.result.chunks >= 10
    ours, theirs = _published(direct_root, spans), _published(portable_root, spans)
    # (Late events reach back into the span before the first, as its eval split only.)
    assert set(ours) == set(theirs) and len(ours) >= 2 * len(spans) - 1
    for key in ours:
        assert ours[key] == theirs[key], f"{key}: the runners published different examples"
    # Every valid event of the closed spans, each once (the truth is what the log writer wrote).
    closed_through = max(spans)
    expected = sum(1 for t in log.valid.values() if t // SPAN_MS <= closed_through)
    assert sum(sum(c.values()) for c in ours.values()) == expected
    dead = _dead_letters(direct_root, spans)
    assert sum(dead.values()) == len(log.malformed) and dead == _dead_letters(portable_root, spans)
    assert {s: v.events for s, v in direct.result.spans.items()} == \
        {s: v.events for s, v in portable.result.spans.items()}
    assert direct.committed.to_json() == portable.committed.to_json()
    print(f"ingest of {len(log.valid)} events: DirectRunner {direct_s:.1f}s, PortableRunner {portable_s:.1f}s")


def test_an_unknown_runner_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"beam.runner must be one of \('DirectRunner', 'PortableRunner', "
                                          r"'DataflowRunner'\), got 'SparkRunner'"):
        BeamConfig(runner="SparkRunner").args()
