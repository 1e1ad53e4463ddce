"""The closed loop (#21): simulated users -> `driftline serve` -> impressions + clicks -> join -> train -> gate
-> push -> hot swap -> the same users, in real time.

`run_closed_loop(home)` writes a few minutes of past traffic (the mode without a server, so the first model
has data), starts a real `driftline serve` process on the home (its impressions log is the join's), and runs
the controller in join mode (`run_continuous`). Once the first model is pushed and served, a population of
users (pipelines/population.py) ranks ads through the server, is shown the top k and clicks with the
world's true probability after a delay; every later cycle trains on what that population did with what
the previous model showed it. The result pairs, per span, the served click-through rate (online: what the
users did) with the offline AUC of the model that served the span (the gate's, on held-out data).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from pipelines.config import (ControllerConfig, DriftlineConfig, GateConfig, TrainerConfig, WindowConfig,
                              default_config)
from pipelines.population import Population, PopulationConfig, Tally, closed_loop_join, write_history
from pipelines.simulator import SimulatorConfig

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class ClosedLoopResult:
    config: DriftlineConfig
    cycles: List[dict]  # the controller's JSON lines
    tally: Tally
    server_log: str
    # span -> {"shown", "served_ctr", "versions" {version: shown}, "offline_auc" {version: AUC}}
    rows: List[dict] = dataclasses.field(default_factory=list)


def closed_loop_config(home: str, population: PopulationConfig, span_seconds: int,
                       allowed_lateness_seconds: int = 2) -> DriftlineConfig:
    join = closed_loop_join(os.path.join(home, "impressions"), os.path.join(home, "outcomes"), population)
    return default_config(home).replace(
        window=WindowConfig(span_seconds=span_seconds, allowed_lateness_seconds=allowed_lateness_seconds),
        trainer=TrainerConfig(cold_epochs=2, warm_epochs=1),
        # Spans of seconds hold a few hundred shown ads: bounds such spans can give evidence for.
        gate=GateConfig(min_auc=0.55, min_calibration=0.3, max_calibration=3.0, max_log_loss=None,
                        max_auc_drop=0.05, min_slice_auc=0.0, min_eval_positives=5, max_auc_interval_width=0.6),
        controller=ControllerConfig(retry_initial_seconds=1.0, retry_max_seconds=5.0)).with_join(join).validate()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {_tail(log_path)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server serves no model after {timeout_s:.0f} s: {_tail(log_path)}")
        time.sleep(0.3)


def start_server(home: str) -> Tuple[subprocess.Popen, str, str]:
    """`driftline serve --home home` on a free loopback port, its output in <home>/server.log: (the process,
    its URL, the log's path). It serves once the home's first model is pushed (`_wait_healthy`)."""
    port = _free_port()
    log_path = os.path.join(home, "server.log")
    env = {**os.environ, "PYTHONPATH": _REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log_path, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--home", home, "--port",
                                   str(port), "--poll-seconds", "0.5"], cwd=_REPO, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}", log_path


def stop_server(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (the server drains and flushes its impressions log), then SIGKILL if it has not exited."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-3000:]
    except OSError:
        return ""


CONTINUOUS, STATIC = 1, 0  # retrain_every_spans: a cycle as each span closes; never after the first push


def run_closed_loop(home: str, cycles: int = 4, span_seconds: int = 20, history_minutes: int = 3,
                    requests_per_second: float = 20.0, events_per_minute: int = 3000, seed: int = 0,
                    progress: Callable[[str], None] = lambda s: None, *, live_spans: Optional[int] = None,
                    retrain_every_spans: int = CONTINUOUS,
                    hot_ad_after_seconds: Optional[float] = None,
                    attribution_window_seconds: Optional[int] = None,
                    allowed_lateness_seconds: int = 2) -> ClosedLoopResult:
    """Runs the loop on an empty `home` (the first cycle on the written history); see the module doc.

    By default it ends after `cycles` cycles. With `live_spans` it ends instead once the population has
    ranked through the server for that many spans' time, and the controller retrains as
    `retrain_every_spans` says: `CONTINUOUS` (1) runs a cycle as each span closes, K > 1 wakes every K spans
    and runs one cycle over the spans closed since (a model retrained in batch every K spans, warm-started),
    `STATIC` (0) keeps the first model. `hot_ad_after_seconds`: the world's hot ad (a new id with a high
    click rate) appears that long after the population starts. `attribution_window_seconds`: the join's
    window (None: the population's default, 10 s). `allowed_lateness_seconds`: the watermark's lag (2 s suits
    spans of seconds; the pipeline's default is 30 s).
    """
    if retrain_every_spans < 0:
        raise ValueError(f"retrain_every_spans must be >= 0 (0: static), got {retrain_every_spans}")
    if retrain_every_spans != CONTINUOUS and live_spans is None:
        raise ValueError("a batch or static regime runs for a stretch of live traffic: give live_spans")
    from pipelines.config_file import persist_config
    from pipelines.controller import run_continuous

    span_ms = span_seconds * 1000
    # The world starts `history_minutes` whole minutes before now: live traffic continues its drift.
    origin_ms = (int(time.time() * 1000) // 60_000 - history_minutes) * 60_000
    world = SimulatorConfig(seed=seed, events_per_minute=events_per_minute, hot_ad_minute=None)
    population = PopulationConfig(world=world, origin_ms=origin_ms, requests_per_second=requests_per_second,
                                  seed=seed)
    if attribution_window_seconds is not None:
        population = dataclasses.replace(population, attribution_window_seconds=attribution_window_seconds)
    config = closed_loop_config(home, population, span_seconds, allowed_lateness_seconds)
    written = write_history(config.join.impressions.log_dir, config.join.outcomes.log_dir, population,
                            history_minutes)
    progress(f"history: {written:,} impressions and their clicks, {history_minutes} min before now")
    persist_config(config)  # the server reads the home's config: the join's log is the one it writes
    server, url, log_path = start_server(home)
    progress(f"server: pid {server.pid} on {url}")
    users: Dict[str, Population] = {}
    lines: List[dict] = []
    stop = threading.Event()

    def emit(line: str) -> None:
        lines.append(json.loads(line))
        last = lines[-1]
        progress(f"cycle {len(lines)}: spans {last.get('spans')}, {last.get('outcome')}, "
                 f"pushed {last.get('pushed_version') or 'nothing'}")
        if last.get("outcome") != "ok":
            stop.set()
        elif "users" not in users and last.get("pushed_version"):
            # The first model serves: the population starts.
            _wait_healthy(url, server, log_path, timeout_s=180)
            users_config = population
            if hot_ad_after_seconds is not None:
                hot_ms = int(time.time() * 1000 + hot_ad_after_seconds * 1000)
                users_config = dataclasses.replace(population, world=dataclasses.replace(
                    population.world, hot_ad_minute=(hot_ms - origin_ms) / 60_000))
            users["users"] = Population(url, config.pipeline_name, config.join.outcomes.log_dir, users_config,
                                        span_ms).start()
            progress("population: ranking through the server")
            threading.Thread(target=_stop_if_all_refused, args=(users["users"].tally, stop, progress),
                             daemon=True).start()
            if live_spans is not None:
                live_end.start()
                if retrain_every_spans != CONTINUOUS:
                    first_push.set()  # the continuous controller's part ends here

    # With live_spans: the end of the live stretch stops whatever runs then.
    live_end = threading.Timer(float(live_spans or 0) * span_seconds, stop.set)
    live_end.daemon = True
    first_push = threading.Event()
    try:
        if live_spans is None:
            run_continuous(config, poll_seconds=0.5, max_cycles=cycles, stop=stop, emit=emit, say=progress)
        else:
            run_continuous(config, poll_seconds=0.5, stop=_either(stop, first_push), emit=emit, say=progress)
            # Batch: a cycle every K spans over what closed since; static: no cycle at all.
            while retrain_every_spans > CONTINUOUS and not stop.wait(retrain_every_spans * span_seconds):
                run_continuous(config, poll_seconds=0.5, max_cycles=1, until_idle=True, stop=stop, emit=emit,
                               say=progress)
            stop.wait()
    finally:
        live_end.cancel()
        tally = users["users"].stop() if "users" in users else Tally(span_ms=span_ms)
        stop_server(server)
    result = ClosedLoopResult(config=config, cycles=lines, tally=tally, server_log=log_path)
    result.rows = served_rows(config, tally)
    return result


# This many requests, every one failed: the server refuses the population (a schema mismatch, say), so no
# impression is logged, the join's watermark never moves and no cycle would ever come: stop instead.
ALL_REFUSED_AFTER = 50


def _stop_if_all_refused(tally: Tally, stop: threading.Event, progress: Callable[[str], None]) -> None:
    while not stop.wait(1.0):
        if tally.requests >= ALL_REFUSED_AFTER:
            if tally.failed == tally.requests:
                progress(f"population: all {tally.requests} requests failed, stopping: {tally.errors[:1]}")
                stop.set()
            return


def _either(a: threading.Event, b: threading.Event) -> threading.Event:
    """An event set as soon as `a` or `b` is (run_continuous watches one event)."""
    both = threading.Event()

    def watch() -> None:
        while not (a.wait(0.2) or b.is_set()):
            pass
        both.set()

    threading.Thread(target=watch, daemon=True).start()
    return both


def served_rows(config: DriftlineConfig, tally: Tally) -> List[dict]:
    """Per span the population saw: ads shown, served CTR, the versions that served, and their offline AUC."""
    from pipelines import lineage

    records = lineage.models(lineage.connect(config.metadata_connection), config.pipeline_name)
    auc = {int(m.pushed_version): m.candidate_auc for m in records if m.pushed_version is not None}
    rows = []
    for span in sorted(tally.spans):
        s = tally.spans[span]
        rows.append({"span": span, "start_ms": span * tally.span_ms, "shown": s.shown, "served_ctr": s.ctr,
                     "clicks_in_window": s.clicks_in_window, "versions": dict(sorted(s.versions.items())),
                     "expected_clicks": s.expected_clicks, "oracle_expected_clicks": s.oracle_expected_clicks,
                     "random_expected_clicks": s.random_expected_clicks,
                     "hot_candidates": s.hot_candidates, "hot_shown": s.hot_shown,
                     "hot_clicks_in_window": s.hot_clicks_in_window,
                     "offline_auc": {v: auc.get(v) for v in sorted(s.versions)}})
    return rows


def served_table(rows: List[dict]) -> str:
    from pipelines.report import format_table
    from pipelines.status_text import format_ms

    body = []
    for r in rows:
        versions = ", ".join(str(v) for v in r["versions"])
        aucs = ", ".join("-" if a is None else f"{a:.3f}" for a in r["offline_auc"].values())
        body.append((r["span"], format_ms(r["start_ms"])[11:], r["shown"],
                     "-" if r["served_ctr"] is None else f"{r['served_ctr']:.3f}", versions, aucs))
    return format_table(("span", "start (UTC)", "ads shown", "served CTR", "served by version", "offline AUC"), body)
