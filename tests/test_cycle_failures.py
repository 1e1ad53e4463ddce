"""Failed cycles and spans quarantined after them, on a real SQLite ML Metadata store written the way TFX writes it.

`pipelines.failures` records each failed cycle; a span that `quarantine_after_failures` cycles in a row failed
on is quarantined, which `untrained_spans` (what `due`, the resumed cycle's resolver and retention read)
respects; `release` (what `driftline replay` records) lets it be trained again. `status` shows all of it. The
controller's retries against a source that cannot be read run here too (no TFX cycle runs: ingestion is never
reached); test_controller_failures.py runs real failing cycles.
"""
import json
import os
import threading
import time

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from mlmd_history import History
from pipelines import cli, failures, lineage, retention
from pipelines.config import ControllerConfig, ConfigError, default_config
from pipelines.recovery import untrained_spans


def config_for(h: History, quarantine_after: int = 3):
    return default_config(h.home).replace(pipeline_name=h.pipeline,
                                          controller=ControllerConfig(quarantine_after_failures=quarantine_after))


def untrained(h: History):
    return [a.id for a in untrained_spans(h.store, h.pipeline)]


def failed_cycle(h: History, spans=None):
    """A run whose trainer FAILED (as TFX records it) on `spans`, or on a newly ingested span."""
    run = h.new_run()
    if spans is None:
        spans = h.ingest(run)
    h.execute(run, "WarmStartTrainer", {"examples": spans}, {"model": [("Model", {})]}, state=pb.Execution.FAILED)
    return spans


def test_a_span_that_keeps_failing_is_quarantined_and_the_stream_moves_on(tmp_path, capsys):
    h = History(str(tmp_path))
    h.cycle()
    config = config_for(h, quarantine_after=3)
    [span] = failed_cycle(h)
    error = RuntimeError("the user's run_fn cannot read span 101\nTraceback ...")
    first = failures.record_failure(config, error, resumed=False, trigger="span 101 closed")
    assert (first.record.spans, first.record.consecutive, first.quarantined) == ([101], 1, [])
    assert untrained(h) == [span]
    for n in (2, 3):
        failed_cycle(h, [span])  # the resumed cycle fails on it again
        recorded = failures.record_failure(config, error, resumed=True, trigger="resuming")
        assert recorded.record.consecutive == n
    assert [(q.span, q.artifact_id, q.failures) for q in recorded.quarantined] == [(101, span, 3)]
    assert "3 cycles in a row failed on it" in recorded.quarantined[0].reason
    assert "RuntimeError: the user's run_fn cannot read span 101" in recorded.quarantined[0].reason
    # Out of the resumed cycles, so the next span gets its cycle; kept by retention for replay.
    assert untrained(h) == []
    assert retention.plan(config, h.store, keep_cycles=1).keep[span].startswith("quarantined after failing")

    st = lineage.status(config)
    assert st.consecutive_failures == 3 and st.last_failure.spans == [101] and st.last_failure.resumed
    assert [(q.span, q.failures) for q in st.quarantined_spans] == [(101, 3)]
    text = lineage.format_status(st)
    assert "failures:    3 in a row" in text and "RuntimeError: the user's run_fn cannot read span 101" in text
    assert "quarantined: span 101" in text and f"driftline replay --home {h.home} --span S" in text
    as_json = json.loads(lineage.to_json(st))
    assert as_json["consecutive_failures"] == 3 and as_json["quarantined_spans"][0]["span"] == 101
    assert as_json["last_failure"]["error_type"] == "RuntimeError"

    # The stream moves on: the next span's cycle completes, and the failures in a row end.
    time.sleep(0.01)
    h.cycle()
    st = lineage.status(config)
    assert st.consecutive_failures == 0 and "recovered: a run completed since" in lineage.format_status(st)
    assert [q.span for q in st.quarantined_spans] == [101]  # still waiting for replay

    # `driftline replay --span 101`: released, recorded, and a resumed cycle's span again, although
    # a newer span was judged meanwhile.
    with pytest.raises(failures.NotQuarantined, match=r"span 102 is not quarantined .*quarantined spans: 101"):
        failures.release(config, 102)
    assert cli.main(["replay", "--home", h.home, "--span", "101", "--no-run"]) == 0
    out, err = capsys.readouterr()
    assert "span 101 will be trained by the next `driftline run`" in out
    assert f"span 101 (Examples {span}) released by `driftline replay`" in err
    assert "after: 3 cycles in a row failed on it" in err
    assert untrained(h) == [span] and lineage.status(config).quarantined_spans == []
    assert failures.failures_since_release(h.store, span) == 0
    [replay] = h.store.get_executions_by_type("driftline.SpanReplay")
    assert replay.properties["span"].int_value == 101
    assert "released by `driftline replay`" in replay.properties["reason"].string_value
    # Failing again after the replay counts from zero: quarantined again only after three more.
    for _ in range(2):
        failed_cycle(h, [span])
        assert failures.record_failure(config, error, resumed=True).quarantined == []
    failed_cycle(h, [span])
    assert [q.span for q in failures.record_failure(config, error, resumed=True).quarantined] == [101]
    assert untrained(h) == []


def test_failures_before_any_span_never_quarantine_and_repeat_into_one_record(tmp_path):
    h = History(str(tmp_path))
    h.cycle()
    config = config_for(h, quarantine_after=1)
    down = ConnectionError("broker localhost:9092: connection refused")
    for n in range(1, 4):
        recorded = failures.record_failure(config, down, trigger="checking whether a cycle is due")
        assert (recorded.record.spans, recorded.quarantined, recorded.record.consecutive) == ([], [], n)
    assert recorded.record.repeats == 3
    assert len(h.store.get_executions_by_type("driftline.CycleFailure")) == 1  # coalesced
    other = failures.record_failure(config, TimeoutError("GCS read timed out"))
    assert other.record.consecutive == 4 and other.record.repeats == 1
    [execution] = [e for e in h.store.get_executions_by_type("driftline.CycleFailure")
                   if e.id == other.record.execution_id]
    assert execution.last_known_state == pb.Execution.FAILED
    [ctx] = h.store.get_contexts_by_execution(execution.id)
    assert (ctx.name, h.store.get_context_types_by_id([ctx.type_id])[0].name) == (h.pipeline, "pipeline")
    st = lineage.status(config)
    assert st.consecutive_failures == 4 and st.quarantined_spans == []
    assert "TimeoutError: GCS read timed out (no span involved)" in lineage.format_status(st)


def test_controller_settings_are_validated_by_name():
    ControllerConfig().validate()
    with pytest.raises(ConfigError, match=r"controller.retry_initial_seconds \(--retry-initial-seconds\)"):
        ControllerConfig(retry_initial_seconds=0).validate()
    with pytest.raises(ConfigError, match=r"controller.retry_max_seconds .* must be >= "):
        ControllerConfig(retry_initial_seconds=10, retry_max_seconds=5).validate()
    with pytest.raises(ConfigError, match=r"controller.quarantine_after_failures \(--quarantine-after\)"):
        ControllerConfig(quarantine_after_failures=0).validate()


def test_the_controller_retries_a_source_it_cannot_read_with_backoff_and_records_it(tmp_path):
    """The event log folder vanishes under a running controller (an unmounted disk, a broker that is down):
    every check fails, each one is recorded, the waits grow to the cap, and a stop still ends it cleanly."""
    from pipelines.controller import run_continuous
    from pipelines.simulator import SimulatorConfig, simulate

    config = default_config(str(tmp_path)).replace(
        controller=ControllerConfig(retry_initial_seconds=0.05, retry_max_seconds=0.2))
    simulate(config.source.log_dir, SimulatorConfig(minutes=1, events_per_minute=50))
    os.rename(config.source.log_dir, config.source.log_dir + ".gone")
    stop = threading.Event()
    lines, said = [], []

    def emit(line):
        lines.append(json.loads(line))
        if len(lines) >= 6:
            stop.set()

    done = []
    worker = threading.Thread(target=lambda: done.append(run_continuous(config, poll_seconds=0.05, stop=stop,
                                                                         emit=emit, say=said.append)))
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive() and done == [0], said[-5:]
    assert [line["outcome"] for line in lines] == ["failed"] * 6
    assert [line["consecutive_failures"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert all(line["error"]["type"] == "EventLogError" and line["retryable"] and line["spans"] == []
               and line["quarantined"] == [] for line in lines)
    waits = [float(m.split()[2]) for m in said if m.startswith("retrying in")]
    assert len(waits) >= 5 and all(0.05 <= w <= 0.2 for w in waits) and waits[4] == pytest.approx(0.2, abs=0.05)
    assert said[-1].endswith("stopping after 0 cycle(s)")
    st = lineage.status(config)
    assert st.consecutive_failures == 6 and st.last_failure.repeats == 6
    assert st.last_failure.error_type == "EventLogError" and st.controller.state == "not running"
