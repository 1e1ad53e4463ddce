"""Schemas and config of a small two-stream join, shared by the join tests."""
from __future__ import annotations

import json

from components.event_schema import EventSchema, FieldSpec
from components.streaming_example_gen.join_config import JoinConfig, JoinStreamConfig


def impression_schema(label_type: str = "int") -> EventSchema:
    return EventSchema(name="impressions", id_field="impression_id", event_time_field="ts", label_field="label",
                       min_event_time_ms=0, fields=(
                           FieldSpec("impression_id", "string"), FieldSpec("ts", "int"),
                           FieldSpec("ad_id", "string", feature="categorical", hash_buckets=16),
                           FieldSpec("label", label_type, required=False)))


def outcome_schema() -> EventSchema:
    return EventSchema(name="outcomes", id_field="outcome_id", event_time_field="ts", label_field="value",
                       min_event_time_ms=0, fields=(
                           FieldSpec("outcome_id", "string"), FieldSpec("impression_id", "string"),
                           FieldSpec("ts", "int"), FieldSpec("outcome_type", "string"),
                           FieldSpec("value", "float", required=False)))


def join_config(imp_dir: str = "imp", out_dir: str = "out", **kw) -> JoinConfig:
    label_type = "float" if kw.get("label_rule") == "value" else "int"
    kw.setdefault("attribution_window_seconds", 10)
    kw.setdefault("orphan_bound_seconds", 60)
    return JoinConfig(impressions=JoinStreamConfig(imp_dir, impression_schema(label_type)),
                      outcomes=JoinStreamConfig(out_dir, outcome_schema()), **kw)


def simulated_join_pipeline(root: str, pipeline_name: str, **changes):
    """A pipeline config in join mode over a small simulated stream split into impressions and delayed clicks
    (pipelines/two_streams.py) under `root`: 30 minutes at 60 events a minute, 10-minute spans, a 2-minute
    attribution window, so its first ingest run emits the first spans. `changes` go to `replace`."""
    import os

    from pipelines import simulator, two_streams
    from pipelines.config import WindowConfig, default_config

    home = os.path.join(root, "home")
    imp_dir, out_dir = os.path.join(home, "impressions"), os.path.join(home, "outcomes")
    sim = simulator.SimulatorConfig(seed=24, minutes=30, events_per_minute=60, late_fraction=0.0, hot_ad_minute=None)
    simulator.simulate(os.path.join(root, "events"), sim)
    two_streams.split_log(os.path.join(root, "events"), imp_dir, out_dir,
                          two_streams.TwoStreamConfig(attribution_window_seconds=120, click_delay_mean_seconds=20))
    join = two_streams.join_config(imp_dir, out_dir, attribution_window_seconds=120)
    return default_config(home).replace(
        pipeline_name=pipeline_name, window=WindowConfig(span_seconds=600, allowed_lateness_seconds=30),
        **changes).with_join(join)


# -- a fork server for cheap, killable join runs (the protocol of ingest_helpers.forkserver_main) ---------------

JOIN_NODE_ID = "JoinExampleGen"


def join_forkserver_main(config_json: str) -> None:
    """Imports TFX once, then forks one child per `RUN <log path>`: a LocalDagRunner run of JoinExampleGen."""
    import os
    import sys

    from absl import logging as absl_logging
    from tfx import v1 as tfx

    from components.streaming_example_gen.config import WindowConfig
    from components.streaming_example_gen.join_component import JoinExampleGen

    cfg = json.loads(config_json)
    config = join_config(cfg["imp_dir"], cfg["out_dir"], **cfg["join"])
    # A stream given as KafkaConfig settings (cfg["kafka"][name]) is read from that topic instead of its log.
    for name, settings in (cfg.get("kafka") or {}).items():
        import dataclasses

        from components.streaming_example_gen.config import KafkaConfig

        schema = getattr(config, name).schema
        config = dataclasses.replace(config, **{name: JoinStreamConfig(schema=schema, kind="kafka",
                                                                       kafka=KafkaConfig(**settings))})
    window = WindowConfig(span_seconds=cfg["span_seconds"], allowed_lateness_seconds=cfg["allowed_lateness_seconds"])
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "RUN":
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    fd = os.open(arg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    absl_logging.set_verbosity(absl_logging.INFO)
                    absl_logging.use_absl_handler()
                    component = JoinExampleGen(config, window=window, chunk_bytes=cfg["chunk_bytes"],
                                               dedup_horizon_runs=cfg["horizon_runs"]).with_id(JOIN_NODE_ID)
                    pipeline = tfx.dsl.Pipeline(
                        pipeline_name=cfg["pipeline_name"], pipeline_root=os.path.join(cfg["home"], "root"),
                        components=[component], enable_cache=False,
                        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                            os.path.join(cfg["home"], "metadata.sqlite")))
                    tfx.orchestration.LocalDagRunner().run(pipeline)
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
        out.flush()


def read_log(log_dir: str) -> list:
    """Every event of an event log, parsed, in log order."""
    from components import event_log

    plan = event_log.plan_read(log_dir, None)
    return [json.loads(line) for chunk in plan.chunks for _, line in event_log.read_chunk(log_dir, chunk)]


def feed(events: list, log_dir: str, start_ms: int, end_ms: int) -> None:
    """Appends the events with start_ms <= event_time < end_ms, in the order they were logged."""
    from components import event_log

    batch = [e for e in events if start_ms <= e["event_time"] < end_ms]
    with event_log.EventLogWriter(log_dir) as writer:
        writer.write_events(batch)


def staged_two_streams(root, minutes: int, events_per_minute: int, window_s: int):
    """The simulator's stream (seed 5, no late events, no hot ad) split into impressions and delayed clicks
    (mean 30 s) under `root`: (the simulator config, the impressions, the outcomes, the split's truth)."""
    from pipelines import simulator, two_streams

    sim = simulator.SimulatorConfig(seed=5, minutes=minutes, events_per_minute=events_per_minute,
                                    late_fraction=0.0, hot_ad_minute=None)
    simulator.simulate(str(root / "events"), sim)
    staged_imp, staged_out = str(root / "staged_imp"), str(root / "staged_out")
    truth = two_streams.split_log(str(root / "events"), staged_imp, staged_out,
                                  two_streams.TwoStreamConfig(attribution_window_seconds=window_s,
                                                              click_delay_mean_seconds=30, seed=2))
    return sim, read_log(staged_imp), read_log(staged_out), truth


def run_two_cycles(config, after_first_cycle) -> tuple:
    """Two controller cycles (`run_continuous`): (the cycles' JSON lines, what it said).

    `after_first_cycle()` runs once cycle 1 is done (to feed the next step of the streams). A failing cycle
    stops the run, as it would otherwise be retried for ever, and fails the caller's fixture.
    """
    import threading

    from pipelines.controller import run_continuous

    lines, said, stop = [], [], threading.Event()

    def emit(line: str) -> None:
        lines.append(json.loads(line))
        if lines[-1].get("outcome") != "ok":
            stop.set()
        elif len(lines) == 1:
            after_first_cycle()

    cycles = run_continuous(config, poll_seconds=0.2, max_cycles=2, stop=stop, emit=emit, say=said.append)
    assert cycles == 2, (lines, said[-5:])
    return lines, said
