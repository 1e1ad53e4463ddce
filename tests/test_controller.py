"""The controller's single-instance lock, its "is a cycle due" question, and a clean SIGTERM.

Real processes, real signals, a real event log and ML Metadata; no pipeline
cycle runs here (the e2e tests cover cycles).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.config import WindowConfig, default_config
from pipelines.controller import ControllerRunning, due, single_instance
from pipelines.lineage import controller_state
from pipelines.simulator import SimulatorConfig, simulate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time\nfrom pipelines.controller import single_instance\n"
        "with single_instance(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n")


def hold_lock(home):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(home)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_controller_is_refused_while_the_first_runs(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(ControllerRunning, match=f"already running on .*pid {holder.pid}"):
            with single_instance(str(tmp_path)):
                pass
        assert controller_state(str(tmp_path)).state == "running"
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_controller_is_taken_over(tmp_path):
    holder = hold_lock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert controller_state(str(tmp_path)).state == "stale"
    with single_instance(str(tmp_path)) as path:
        assert json.load(open(path))["pid"] == os.getpid()
        assert controller_state(str(tmp_path)).state == "running"
    assert controller_state(str(tmp_path)).state == "not running"


def test_a_cycle_is_due_exactly_when_ingestion_would_emit_a_span(tmp_path):
    config = default_config(str(tmp_path))
    simulate(config.source.log_dir, SimulatorConfig(minutes=5, events_per_minute=100))
    # Five minutes of a ten-minute span: nothing has closed yet.
    assert not due(config).run
    assert due(config, min_new_events=400).run
    simulate(config.source.log_dir, SimulatorConfig(minutes=7, events_per_minute=100), append=True)
    check = due(config)
    assert check.run and "closed" in check.why
    # With longer spans the same log has nothing to emit.
    longer = config.replace(window=WindowConfig(span_seconds=3600))
    assert not due(longer).run


def test_sigterm_stops_a_waiting_controller_cleanly_and_a_second_is_refused(tmp_path):
    config = default_config(str(tmp_path))
    simulate(config.source.log_dir, SimulatorConfig(minutes=3, events_per_minute=50))
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--continuous", "--home", str(tmp_path), "--poll-seconds", "0.5"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while controller_state(str(tmp_path)).state != "running":
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the controller never took its lock"
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"already running on {tmp_path} (pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert "stopping after 0 cycle(s)" in err
        assert controller_state(str(tmp_path)).state == "not running"
    finally:
        if first.poll() is None:
            first.kill()
