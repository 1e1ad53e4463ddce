"""`driftline status` and the servers of a home (#20): running, its version and request rate; stopped; killed.

Real `driftline serve` processes (tests/serve_helpers.py) on a home whose
serving folder holds a real SavedModel; `status` is the CLI's own entry point.
"""
import json
import os
import signal
import threading
import time

import httpx

from serve_helpers import events, running_server

FEATURES = ("user_id", "ad_id", "ad_category", "device", "hour_of_day", "price")


def status(capsys, home, *args):
    from pipelines import cli

    capsys.readouterr()
    assert cli.main(["status", "--home", home, *args]) == 0
    return capsys.readouterr().out


def test_status_shows_a_running_server_its_version_and_request_rate_then_its_stop(serve_models, tmp_path, capsys):
    from components.blessing_pusher import serving

    home = str(tmp_path / "home")
    serving.push(serve_models[1], os.path.join(home, "serving"))
    instances = [{k: e[k] for k in FEATURES} for e in events(4, seed=5)]
    assert "server:      not running (no `driftline serve` record" in status(capsys, home)

    with running_server(home, "--poll-seconds", "0.5") as server:
        pid = server["proc"].pid
        record = json.load(open(os.path.join(home, "servers", f"{pid}.json")))
        assert record["port"] == server["port"] and record["url"] == server["base"]

        stop, sent = threading.Event(), []

        def client():
            with httpx.Client(base_url=server["base"], timeout=30) as c:
                while not stop.is_set():
                    assert c.post("/v1/models/driftline:predict", json={"instances": instances}).status_code == 200
                    sent.append(1)

        thread = threading.Thread(target=client)
        thread.start()
        try:
            while len(sent) < 5:
                time.sleep(0.05)
            text = status(capsys, home)
            data = json.loads(status(capsys, home, "--json"))
        finally:
            stop.set()
            thread.join()
        [line] = [line for line in text.splitlines() if line.startswith("  server:")]
        assert line.startswith(f"  server:      running (pid {pid}, {server['base']}, since ")
        assert ", version 1, " in line and " requests/s over the last 1 s" in line
        rate = float(line.split(", version 1, ")[1].split(" requests/s")[0])
        assert rate > 0
        [state] = data["servers"]
        assert state["state"] == "running" and state["pid"] == pid and state["model_version"] == 1
        assert state["requests_per_second"] > 0 and state["requests_total"] >= 5

        # Idle: the rate drops to 0; the total stays.
        data = json.loads(status(capsys, home, "--json"))
        assert data["servers"][0]["requests_per_second"] == 0
        assert data["servers"][0]["requests_total"] >= len(sent)
    # A clean stop (SIGTERM) removes the record.
    assert not os.listdir(os.path.join(home, "servers"))
    assert "server:      not running (no `driftline serve` record" in status(capsys, home)

    # A killed server leaves its record behind; status checks the pid and does not call it running.
    with running_server(home, "--poll-seconds", "0.5") as server:
        pid = server["proc"].pid
        os.kill(pid, signal.SIGKILL)
        server["proc"].wait()
        text = status(capsys, home)
    assert f"server:      not running (stale record {os.path.join(home, 'servers', f'{pid}.json')} of pid {pid}" \
           in text


def test_status_does_not_report_a_server_that_does_not_answer(tmp_path, capsys):
    """A live pid whose record names a port nothing listens on (a hung or replaced server): 'not answering'."""
    from pipelines.serve import registry
    from serve_helpers import free_port

    home = str(tmp_path / "home")
    path = registry.write_record(home, "127.0.0.1", free_port(), "driftline")  # this test's own, live pid
    try:
        text = status(capsys, home)
        assert f"server:      not answering (pid {os.getpid()}, http://127.0.0.1:" in text
        assert "GET /healthz" in text
    finally:
        os.remove(path)
