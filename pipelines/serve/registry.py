"""Which `driftline serve` processes run for a home: their records, and what `driftline status` says of them.

A server writes `<home>/servers/<pid>.json` ({"pid", "host", "port", "url",
"model_name", "started_at_ms"}) once its socket is bound, and removes it when
it stops cleanly. The record says only where to look, like the controller's
lock file: it is a process's address, not a fact about models (those stay in
ML Metadata). `driftline status` trusts no record: it checks that the pid is
alive and asks the server's /healthz, so a server that was killed (its record
left behind) or hangs is reported as such, never as running. The version and
the request rate come from the server itself: /healthz, and two scrapes of
/metrics `window_s` apart (the rate of `driftline_serve_requests_total`).

Nothing here imports TensorFlow; the probes are stdlib HTTP with short timeouts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

SERVERS_DIR = "servers"
# Addresses a server listens on that a client reaches through loopback.
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def servers_dir(home: str) -> str:
    return os.path.join(home, SERVERS_DIR)


def record_path(home: str, pid: Optional[int] = None) -> str:
    return os.path.join(servers_dir(home), f"{pid or os.getpid()}.json")


def client_url(host: str, port: int) -> str:
    host = _ANY.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_record(home: str, host: str, port: int, model_name: str) -> str:
    """This process's record, written atomically (a reader sees all of it or none). Returns its path."""
    path = record_path(home)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {"pid": os.getpid(), "host": host, "port": port, "url": client_url(host, port),
              "model_name": model_name, "started_at_ms": int(time.time() * 1000)}
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)
    return path


def remove_record(home: str) -> None:
    try:
        os.remove(record_path(home))
    except FileNotFoundError:
        pass


@dataclasses.dataclass(frozen=True)
class ServerState:
    """One record under <home>/servers and what probing it found.

    state: "running" (the pid is alive and /healthz answers 200), "loading" (alive, /healthz 503: no version
    loaded yet), "not answering" (alive, /healthz does not answer), "stale" (the pid is gone: the server did
    not stop cleanly), "unknown" (an unreadable record).
    """

    state: str
    record_path: str
    pid: Optional[int] = None
    url: Optional[str] = None
    started_at_ms: Optional[int] = None
    model_version: Optional[int] = None
    # Requests answered per second over the last `rate_window_s`, and since the server started.
    requests_per_second: Optional[float] = None
    rate_window_s: Optional[float] = None
    requests_total: Optional[float] = None
    detail: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "description": self.describe()}

    def describe(self) -> str:
        from pipelines.status_text import format_ms

        where = f"pid {self.pid}, {self.url}"
        if self.state == "running":
            rate = (f", {self.requests_per_second:.1f} requests/s over the last {self.rate_window_s:g} s"
                    if self.requests_per_second is not None else "")
            total = f", {self.requests_total:,.0f} requests since start" if self.requests_total is not None else ""
            return (f"running ({where}, since {format_ms(self.started_at_ms)} UTC), version {self.model_version}"
                    f"{rate}{total}")
        if self.state == "loading":
            return f"starting ({where}): no version loaded yet ({self.detail})"
        if self.state == "not answering":
            return f"not answering ({where}: {self.detail})"
        if self.state == "stale":
            return f"not running (stale record {self.record_path} of pid {self.pid}: it did not stop cleanly)"
        return f"unknown (unreadable record {self.record_path}: {self.detail})"


def _get(url: str, timeout_s: float) -> tuple:
    """(status, body bytes) of a GET; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _requests_total(base: str, timeout_s: float) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, body = _get(f"{base}/metrics", timeout_s)
    return sum(s.value for family in text_string_to_metric_families(body.decode("utf-8"))
               for s in family.samples if s.name == "driftline_serve_requests_total")


def probe(path: str, window_s: float = 1.0, timeout_s: float = 2.0) -> ServerState:
    """What the server of the record at `path` is doing (see ServerState)."""
    from pipelines.controller_lock import pid_alive

    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        pid, url = int(record["pid"]), str(record["url"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return ServerState(state="unknown", record_path=path, detail=f"{type(e).__name__}: {e}")
    fields = dict(record_path=path, pid=pid, url=url, started_at_ms=record.get("started_at_ms"))
    if not pid_alive(pid):
        return ServerState(state="stale", **fields)
    try:
        code, body = _get(f"{url}/healthz", timeout_s)
        health = json.loads(body)
    except (OSError, ValueError) as e:  # refused, timed out, not our JSON
        return ServerState(state="not answering", detail=f"GET /healthz: {e}", **fields)
    if code != 200:
        return ServerState(state="loading", detail=str(health.get("error") or f"/healthz {code}"), **fields)
    try:
        first, started = _requests_total(url, timeout_s), time.monotonic()
        time.sleep(window_s)
        last, window = _requests_total(url, timeout_s), time.monotonic() - started
    except (OSError, ValueError) as e:
        return ServerState(state="running", model_version=health.get("model_version"),
                           detail=f"GET /metrics: {e}", **fields)
    return ServerState(state="running", model_version=health.get("model_version"),
                       requests_per_second=(last - first) / window, rate_window_s=round(window, 1),
                       requests_total=last, **fields)


def server_states(home: str, window_s: float = 1.0) -> List[ServerState]:
    """Every record under <home>/servers, probed, oldest pid first."""
    folder = servers_dir(home)
    try:
        names = sorted((n for n in os.listdir(folder) if n.endswith(".json")),
                       key=lambda n: (len(n), n))
    except FileNotFoundError:
        return []
    return [probe(os.path.join(folder, n), window_s=window_s) for n in names]


def status_lines(states: List[ServerState]) -> List[str]:
    """The lines `driftline status` prints about servers."""
    if not states:
        return ["  server:      not running (no `driftline serve` record in this home)"]
    return [f"  server:      {s.describe()}" for s in states]
