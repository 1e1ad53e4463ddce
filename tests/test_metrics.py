"""The controller's Prometheus metrics over a real socket, against what ML Metadata says (issue #23).

One real cycle through TFX LocalDagRunner: a controller in a thread serves /metrics on a free loopback
port; the test scrapes it with urllib, parses it with prometheus_client's parser and compares with
`lineage.status`. A second controller on the same home reports the same ML Metadata values before it
runs anything (the truth at once after a restart), and `driftline run --cycles` then finds nothing to
do on this home with a history, and records nothing.
"""
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines import cli, lineage
from pipelines.config import GateConfig, LatencyConfig, TrainerConfig, WindowConfig, default_config
from pipelines.simulator import SimulatorConfig, simulate

pytestmark = pytest.mark.e2e

# 90 s of events with 60 s spans: the first span closes, the second does not. Some malformed lines, so
# the dead-letter count is not zero.
STREAM = SimulatorConfig(minutes=1.5, events_per_minute=1500, seed=23, hot_ad_minute=None, bad_fraction=0.01)


def small_config(home):
    return default_config(home).replace(
        window=WindowConfig(span_seconds=60, allowed_lateness_seconds=3),
        trainer=TrainerConfig(cold_epochs=1, warm_epochs=1),
        # Mechanics, not model quality, are under test.
        gate=GateConfig(min_auc=0.5, min_calibration=0.3, max_calibration=3.0, max_log_loss=1.0, max_auc_drop=0.2,
                        max_label_shift=5.0, min_slice_auc=0.3, max_auc_interval_width=0.3, min_eval_positives=8),
        latency=LatencyConfig(enabled=False)).validate()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    """{sample name or name{labels}: value} from GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()) if k != "le")
            if "le" in sample.labels:
                continue
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


class Controller:
    """run_continuous in a thread, serving metrics on a free port; stopped like SIGTERM stops it."""

    def __init__(self, config):
        self.port, self.stop, self.lines, self.said, self.done = free_port(), threading.Event(), [], [], []
        self.thread = threading.Thread(target=self._run, args=(config,), daemon=True)
        self.thread.start()

    def _run(self, config):
        from pipelines.controller import run_continuous

        try:
            self.done.append(run_continuous(config, poll_seconds=0.2, stop=self.stop, say=self.said.append,
                                            emit=lambda line: self.lines.append(json.loads(line)),
                                            metrics_port=self.port))
        except BaseException as e:  # noqa: BLE001: the test reports it
            self.done.append(e)

    def wait_for(self, what, predicate, timeout=900):
        deadline = time.monotonic() + timeout
        while True:
            assert not self.done, f"the controller stopped: {self.done}, {self.said[-5:]}"
            try:
                values = scrape(self.port)
                if predicate(values):
                    return values
            except urllib.error.URLError:
                pass  # not serving yet
            assert time.monotonic() < deadline, f"waited too long for {what}: {self.said[-5:]}"
            time.sleep(0.2)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=120)
        assert self.done == [len([line for line in self.lines if line["outcome"] == "ok"])], self.done


def test_metrics_over_http_are_what_ml_metadata_says(tmp_path, capfd):
    config = small_config(str(tmp_path / "home"))
    simulate(config.source.log_dir, STREAM)

    first = Controller(config)
    try:
        # One cycle, then at least one poll that found nothing to do.
        values = first.wait_for("a cycle and an idle poll",
                                lambda v: v.get('driftline_cycles_total{outcome="nothing_to_do"}', 0) >= 1
                                and v.get('driftline_cycles_total{outcome="ok"}', 0) == 1)
        scraped_at = time.time()
    finally:
        first.close()
    [line] = first.lines
    assert line["outcome"] == "ok" and line["model_id"] is not None, first.said
    st = lineage.status(config)
    assert st.dead_lettered_events > 0 and st.serving_version is not None, "the stream must exercise both"

    assert values["driftline_serving_version"] == st.serving_version
    assert values["driftline_serving_model_id"] == st.serving_model_id == line["model_id"]
    assert values["driftline_pushes_total"] == st.pushes == 1
    assert values["driftline_last_push_timestamp_seconds"] == line["pushed_at_ms"] / 1000
    assert values["driftline_serving_newest_event_timestamp_seconds"] == st.newest_event_ms / 1000
    assert values["driftline_freshness_seconds"] == pytest.approx(scraped_at - st.newest_event_ms / 1000, abs=5)
    [model] = lineage.models(config.metadata_path, config.pipeline_name)
    assert values["driftline_gate_candidate_auc"] == model.candidate_auc  # the JSON line's is rounded
    assert values["driftline_gate_candidate_auc"] == pytest.approx(line["candidate_auc"], abs=1e-4)
    for metric, field in (("driftline_events_dead_lettered_total", "dead_lettered_events"),
                          ("driftline_events_late_total", "late_events"),
                          ("driftline_events_ingested_total", "events_ingested"),
                          ("driftline_events_duplicate_total", "duplicate_events"),
                          ("driftline_events_future_total", "future_events"),
                          ("driftline_events_too_late_total", "too_late_events"),
                          ("driftline_spans_ingested_total", "spans_ingested"),
                          ("driftline_models_refused_total", "models_rejected"),
                          ("driftline_models_trained_total", "models_trained")):
        assert values[metric] == getattr(st, field), metric
    assert values['driftline_cycles_total{outcome="failed"}'] == 0
    assert values["driftline_consecutive_failures"] == 0
    assert values['driftline_cycle_duration_seconds_count{outcome="ok"}'] == 1
    assert values['driftline_cycle_duration_seconds_sum{outcome="ok"}'] == line["wall_seconds"]
    # The server went with the controller.
    with pytest.raises(urllib.error.URLError):
        scrape(first.port)

    # A restarted controller reports ML Metadata's values at once, before (and without) any cycle.
    second = Controller(config)
    try:
        again = second.wait_for("the first scrape", lambda v: True, timeout=120)
    finally:
        second.close()
    assert second.lines == []
    for metric in ("driftline_serving_version", "driftline_pushes_total", "driftline_events_dead_lettered_total",
                   "driftline_last_push_timestamp_seconds", "driftline_gate_candidate_auc"):
        assert again[metric] == values[metric], metric
    assert again['driftline_cycles_total{outcome="ok"}'] == 0  # this process ran none

    # Nothing to do on a home with a history: one line, no TFX run, nothing recorded.
    from pipelines.metadata import open_store

    store = open_store(config.metadata_path)
    before = (len(store.get_executions()), len(store.get_contexts()), len(store.get_artifacts()))
    capfd.readouterr()
    assert cli.main(["run", "--home", config.home, "--cycles", "1", "--span-seconds", "60",
                     "--allowed-lateness-seconds", "3"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "nothing to do: no span closed" in err, err
    assert (len(store.get_executions()), len(store.get_contexts()), len(store.get_artifacts())) == before
    assert lineage.status(config).last_cycle == st.last_cycle


def test_a_taken_metrics_port_stops_the_controller_before_any_cycle(tmp_path, capfd):
    config = default_config(str(tmp_path / "home"))
    simulate(config.source.log_dir, SimulatorConfig(minutes=1, events_per_minute=50))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["run", "--home", config.home, "--continuous", "--metrics-port", str(port)]) == 1
    err = capfd.readouterr().err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err and "--metrics-port" in err
    assert lineage.controller_state(config.home).state == "not running"
    assert cli.main(["run", "--home", config.home, "--metrics-port", str(port)]) == 2
    assert "--metrics-port is for --continuous" in capfd.readouterr().err
