"""The controller keeps going when cycles fail, through TFX LocalDagRunner on real parts (issue #19).

A user's `run_fn` (tests/failing_model.py) raises on chosen spans, inside the real WarmStartTrainer of a
real cycle. The controller prints a failed JSON line and records the failure in ML Metadata, retries
after a backoff (a resumed cycle over the span the failed one published), quarantines the span after
`quarantine_after_failures` failures in a row and moves on to the next span; `driftline replay --span`
then trains the quarantined span. `driftline run --cycles` resumes spans left untrained, as the
controller does.
"""
import json

import pytest

from pipelines import cli, lineage
from pipelines.config import ControllerConfig, GateConfig, LatencyConfig, TrainerConfig, WindowConfig, default_config
from pipelines.metadata import open_store
from pipelines.recovery import judged_span_ids, untrained_spans
from pipelines.simulator import SimulatorConfig, simulate

pytestmark = pytest.mark.e2e

SPAN_FLAGS = ["--span-seconds", "60", "--allowed-lateness-seconds", "3"]
# 90 s of events: the first 60 s span closes, the second does not.
STREAM = SimulatorConfig(minutes=1.5, events_per_minute=1500, seed=19, hot_ad_minute=None)


def small_config(home: str, **changes):
    return default_config(home).replace(
        window=WindowConfig(span_seconds=60, allowed_lateness_seconds=3),
        trainer=TrainerConfig(cold_epochs=1, warm_epochs=1),
        # Mechanics, not model quality, are under test.
        gate=GateConfig(min_auc=0.5, min_calibration=0.3, max_calibration=3.0, max_log_loss=1.0, max_auc_drop=0.2,
                        max_label_shift=5.0, min_slice_auc=0.3, min_eval_examples=100, min_eval_positives=8),
        latency=LatencyConfig(enabled=False), **changes).validate()


def spans_of(config, ids):
    store = open_store(config.metadata_path)
    return sorted(a.properties["span"].int_value for a in store.get_artifacts_by_id(sorted(ids)))


def test_failing_cycles_are_recorded_retried_quarantined_and_the_span_replayed(tmp_path, monkeypatch, capsys):
    from failing_model import FAIL_SPANS_ENV
    from pipelines.controller import run_continuous

    home = str(tmp_path / "home")
    config = small_config(home, controller=ControllerConfig(retry_initial_seconds=0.2, retry_max_seconds=1.0,
                                                            quarantine_after_failures=2))
    config = config.replace(trainer=TrainerConfig(run_fn="failing_model.run_fn", cold_epochs=1, warm_epochs=1))
    simulate(config.source.log_dir, STREAM)
    lines, said = [], []

    def run():
        return run_continuous(config, poll_seconds=0.1, until_idle=True, emit=lambda l: lines.append(json.loads(l)),
                              say=said.append)

    # Every span fails: the first cycle publishes span S and dies in training; the retry is a resumed
    # cycle over S, which fails too, and S is quarantined; then nothing is due.
    monkeypatch.setenv(FAIL_SPANS_ENV, "*")
    assert run() == 0
    assert [line["outcome"] for line in lines] == ["failed", "failed"], said
    first, second = lines
    [span] = first["spans"]
    assert (first["resumed"], first["consecutive_failures"], first["quarantined"]) == (False, 1, [])
    assert (second["resumed"], second["spans"], second["consecutive_failures"], second["quarantined"]) == \
        (True, [span], 2, [span])
    assert f"this run_fn cannot read span {span}" in first["error"]["message"] and first["retryable"]
    waits = [float(m.split()[2]) for m in said if m.startswith("retrying in")]
    assert len(waits) == 2 and 0.2 <= waits[0] <= 0.4 and 0.4 <= waits[1] <= 0.6, said
    assert said[-2].startswith("idle: no span closed") and untrained_spans(open_store(config.metadata_path),
                                                                           config.pipeline_name) == []
    st = lineage.status(config)
    assert st.consecutive_failures == 2 and st.last_failure.resumed and st.last_failure.spans == [span]
    assert [(q.span, q.failures) for q in st.quarantined_spans] == [(span, 2)]
    assert st.last_cycle.outcome == "failed" and "WarmStartTrainer failed" in st.last_cycle.reason
    assert cli.main(["status", "--home", home]) == 0
    text = capsys.readouterr().out
    assert "failures:    2 in a row" in text and f"quarantined: span {span}" in text
    assert f"this run_fn cannot read span {span}" in text

    # The stream moves on: with span S still broken, the next span gets its cycle.
    monkeypatch.setenv(FAIL_SPANS_ENV, str(span))
    simulate(config.source.log_dir, SimulatorConfig(minutes=1.0, events_per_minute=1500, seed=20, hot_ad_minute=None),
             append=True)
    del lines[:]
    assert run() == 1
    [ok] = lines
    assert ok["outcome"] == "ok" and ok["spans"] == [span + 1] and ok["model_id"] is not None, said
    st = lineage.status(config)
    assert st.consecutive_failures == 0 and [q.span for q in st.quarantined_spans] == [span]
    assert cli.main(["lineage", "--home", home, "--json"]) == 0
    assert [q["span"] for q in json.loads(capsys.readouterr().out)["quarantined_spans"]] == [span]

    # Fixed: `driftline replay --span S` releases S and a resumed cycle trains it.
    monkeypatch.delenv(FAIL_SPANS_ENV)
    assert cli.main(["replay", "--home", home, "--span", str(span + 1)] + SPAN_FLAGS) == 1
    assert f"span {span + 1} is not quarantined" in capsys.readouterr().err
    assert cli.main(["replay", "--home", home, "--span", str(span)] + SPAN_FLAGS) == 0
    err = capsys.readouterr().err
    assert f"span {span} (Examples " in err and "released by `driftline replay`" in err
    store = open_store(config.metadata_path)
    assert spans_of(config, judged_span_ids(store, config.pipeline_name)) == [span, span + 1]
    assert untrained_spans(store, config.pipeline_name) == []
    st = lineage.status(config)
    assert st.quarantined_spans == [] and st.last_cycle.resumed and st.last_cycle.spans == [span]
    assert [e.properties["span"].int_value for e in store.get_executions_by_type("driftline.SpanReplay")] == [span]


def test_run_cycles_trains_spans_an_earlier_run_left_untrained(tmp_path, capsys):
    """Spans published but never trained (as a killed or failed cycle leaves them): `run --cycles 1` resumes them."""
    home = str(tmp_path / "home")
    config = default_config(home)
    simulate(config.source.log_dir, STREAM)
    assert cli.main(["ingest", "--home", home] + SPAN_FLAGS) == 0
    store = open_store(config.metadata_path)
    left = [a.id for a in untrained_spans(store, config.pipeline_name)]
    assert len(left) == 1
    capsys.readouterr()
    assert cli.main(["run", "--home", home, "--cycles", "1"] + SPAN_FLAGS) == 0
    assert judged_span_ids(open_store(config.metadata_path), config.pipeline_name) == set(left)
    assert untrained_spans(open_store(config.metadata_path), config.pipeline_name) == []
    assert "published but never trained: resuming" in capsys.readouterr().err
