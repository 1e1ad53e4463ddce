"""`driftline serve` under load: p99 of a 1,000-candidate rank request over loopback HTTP.

    .venv/bin/python benchmarks/serving.py [--seconds 4] [--rounds 5] [--clients 1 4] [--swaps 20]

What it does, all on this machine, loopback only, bounded in time and requests:

1. builds a home: a transform graph written by TFT (tests/latency_helpers.py) and the default
   model (`pipelines.ads_model`, untrained weights: the same cost as trained ones) exported by
   its real export path and pushed as version 1 with the pusher's `serving.push`;
2. the floor: the served model's `serving_raw` signature called in this process on the same
   1,000 candidates (`model_store.load_version`, as the server loads it), and the server's
   own Python work per request around it (checking the body against the schema);
3. starts the real server (`python -m pipelines.cli serve`) twice, with the impressions log and
   without it, and for each client count runs --rounds pairs of segments, one on each server,
   their order alternating (on-off, off-on, ...): N clients, each sending one rank request after
   another (one user, 1,000 ads; the body is serialized once) for --seconds, at most --max-requests
   in all. A row's p50 and p99 are the medians over its segments, and the log's cost is the median
   over the rounds of the paired difference of p99s: this machine's speed drifts from minute to
   minute (the same configuration's server CPU per request moved 8.3 -> 11.4 ms between two rounds,
   2026-12-06), and pairs measured seconds apart keep that drift out of the difference. The clients
   are `wrk` (Debian's package: `apt-get install wrk`), one thread holding N connections, in its own process: a load generator that costs the 2 cores
   little. Without wrk (or with --client httpx) they are asyncio tasks of one httpx.AsyncClient
   in this process, which takes most of a core from the server it measures;
4. hot swaps: under 1 client's steady load (httpx, in this process: each answer's version is
   read), pushes --swaps new versions (alternating two models), waits for the server to answer
   with each, and records failed requests, p99 during swaps against steady p99, and the
   server's RSS after each swap.

Writes benchmarks/results/serving.json and the `serving` section of benchmarks/RESULTS.md
(--out and --json elsewhere for a trial run).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))  # latency_helpers: the transform graph and model fixtures

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402

NAME = "driftline"
# Set to end every load loop at once (the hot-swap load runs until the swaps are done).
global_stop = [False]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: List[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def median(values: List[float]) -> float:
    import statistics

    return round(statistics.median(values), 2)


def combine(segments: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One row of alternating segments: p50 and p99 the medians over them, counts summed, the worst max."""
    seconds = sum(s["requests"] / s["requests_per_s"] for s in segments if s["requests_per_s"])
    return {"requests": sum(s["requests"] for s in segments), "failed": sum(s["failed"] for s in segments),
            "p50_ms": median([s["p50_ms"] for s in segments]), "p99_ms": median([s["p99_ms"] for s in segments]),
            "max_ms": max(s["max_ms"] for s in segments),
            "requests_per_s": round(sum(s["requests"] for s in segments) / seconds, 1) if seconds else None,
            "segment_p99_ms": [s["p99_ms"] for s in segments]}


def log_added_p99(on: List[Dict[str, Any]], off: List[Dict[str, Any]]) -> float:
    """The log's cost: the median over rounds of (p99 with the log - p99 without), each pair seconds apart."""
    return median([a["p99_ms"] - b["p99_ms"] for a, b in zip(on, off)])


def summary(latencies_s: List[float], seconds: float, failed: int) -> Dict[str, Any]:
    ms = [x * 1000 for x in latencies_s]
    return {"requests": len(ms), "failed": failed, "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2) if ms else None, "requests_per_s": round(len(ms) / seconds, 1)}


def build_home(root: str) -> Dict[str, str]:
    from latency_helpers import SCHEMA, TRANSFORM, write_transform_graph

    import tensorflow_transform as tft

    from components.blessing_pusher import serving
    from pipelines import ads_model
    from pipelines.config import TrainerConfig
    from transforms import stream

    graph = write_transform_graph(os.path.join(root, "graph"))
    models = {}
    for seed in (1, 2):
        model = ads_model.build_model(stream.hash_buckets(SCHEMA, TRANSFORM),
                                      stream.numeric_features(SCHEMA, TRANSFORM), dict(TrainerConfig().model), seed)
        models[seed] = os.path.join(root, f"m{seed}")
        ads_model.export_serving_model(model, tft.TFTransformOutput(graph), SCHEMA.label_field, models[seed])
    home = os.path.join(root, "home")
    serving.push(models[1], os.path.join(home, "serving"))
    return {"home": home, "serving_dir": os.path.join(home, "serving"), "m1": models[1], "m2": models[2]}


def rank_body(candidates: int, seed: int = 7) -> Dict[str, Any]:
    import random

    rng = random.Random(seed)
    return {"context": {"user_id": "u-42", "device": "mobile", "hour_of_day": 9},
            "candidates": [{"ad_id": f"ad-{rng.randrange(5000)}", "ad_category": f"cat-{rng.randrange(40)}",
                            "price": round(rng.uniform(0.1, 20.0), 2)} for _ in range(candidates)]}


def floor(serving_dir: str, body: Dict[str, Any], repeats: int) -> Dict[str, float]:
    """The fastest in-process call of the served function, and of the server's checks plus the call."""
    from components.event_schema import ad_click_schema
    from pipelines.serve.inputs import RequestChecker
    from pipelines.serve.model_store import load_version

    schema = ad_click_schema()
    model = load_version(serving_dir, 1, schema)
    checker = RequestChecker(schema, list(model.inputs))
    def columns_of(body):
        columns, n = checker.rank_body(body)
        columns[schema.id_field] = [f"x-{i}" for i in range(n)]
        columns[schema.event_time_field] = [1_790_000_000_000] * n
        return columns

    columns = columns_of(body)
    calls, checked = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(columns)
        calls.append(time.perf_counter() - t)
        t = time.perf_counter()
        model.predict(columns_of(body))
        checked.append(time.perf_counter() - t)
    return {"model_call_p50_ms": round(pct(calls, 50) * 1000, 2), "model_call_p99_ms": round(pct(calls, 99) * 1000, 2),
            "checks_and_call_p50_ms": round(pct(checked, 50) * 1000, 2),
            "checks_and_call_p99_ms": round(pct(checked, 99) * 1000, 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: str, impressions: bool, writer_nice: int = 0) -> Dict[str, Any]:
    import httpx

    port = free_port()
    args = [sys.executable, "-m", "pipelines.cli", "serve", "--home", home, "--port", str(port), "--poll-seconds",
            "0.2"]
    if not impressions:
        args.append("--no-impressions")
    elif writer_nice:
        args += ["--impressions-writer-nice", str(writer_nice)]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return {"proc": proc, "base": base}
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("no healthy server after 180 s")
        time.sleep(0.3)


def stop_server(server: Dict[str, Any]) -> None:
    server["proc"].terminate()
    try:
        server["proc"].wait(timeout=30)
    except subprocess.TimeoutExpired:
        server["proc"].kill()


async def load(base: str, payload: bytes, clients: int, seconds: float, max_requests: int,
               events: List[tuple] = None) -> Dict[str, Any]:
    """`clients` closed-loop clients for `seconds` (or `max_requests` in all): latencies, failures, versions."""
    import httpx

    latencies: List[float] = []
    failed = [0]
    stop_at = time.monotonic() + seconds
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        async def one():
            while time.monotonic() < stop_at and not global_stop[0] and len(latencies) + failed[0] < max_requests:
                t = time.perf_counter()
                try:
                    r = await client.post(f"/v1/models/{NAME}:rank", content=payload, headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                done = time.perf_counter()
                if ok:
                    latencies.append(done - t)
                    if events is not None:
                        # The version is near the start of the body: no need to parse 1,000 scores.
                        head = r.content[:40]
                        version = int(head.split(b'"model_version":', 1)[1].split(b",", 1)[0])
                        events.append((t, done, version))
                else:
                    failed[0] += 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return {"latencies": latencies, "failed": failed[0]}


# wrk's script: POSTs the body file, stops its thread after MAX requests, and prints what summary() reads.
WRK_SCRIPT = """
local f = assert(io.open(%(body)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local count = 0
response = function(status, headers, body)
  count = count + 1
  if count >= %(max_requests)d then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("DRIFTLINE %%d %%d %%d %%.1f %%.1f %%.1f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_load(base: str, payload: bytes, clients: int, seconds: float, max_requests: int) -> Dict[str, Any]:
    """`clients` connections of one wrk thread, for `seconds` or `max_requests`: its summary.

    wrk records every request's latency (microseconds) and gives its percentiles; requests that fail
    (a socket error, or a status other than 2xx/3xx) are counted apart.
    """
    with tempfile.TemporaryDirectory(prefix="serving-wrk-") as tmp:
        body_path = os.path.join(tmp, "body.json")
        with open(body_path, "wb") as f:
            f.write(payload)
        script = os.path.join(tmp, "rank.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT % {"body": json.dumps(body_path), "max_requests": max(1, max_requests)})
        out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
                              "-s", script, f"{base}/v1/models/{NAME}:rank"],
                             capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    fields = next(line for line in out.splitlines() if line.startswith("DRIFTLINE ")).split()[1:]
    requests, duration_us, failed = (int(x) for x in fields[:3])
    p50, p99, worst = (float(x) / 1000 for x in fields[3:])
    ok = requests - failed
    return {"requests": ok, "failed": failed, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
            "max_ms": round(worst, 2), "requests_per_s": round(ok / (duration_us / 1e6), 1)}


def server_rss_mib(pid: int) -> float:
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2 ** 20, 1)


def hot_swaps(home: Dict[str, str], server: Dict[str, Any], payload: bytes, swaps: int) -> Dict[str, Any]:
    """Pushes `swaps` versions under one client's load; failures, p99 in and out of swaps, RSS per swap."""
    import threading

    from components.blessing_pusher import serving

    events: List[tuple] = []
    result: Dict[str, Any] = {}
    budget = 60.0 + swaps * 15.0

    def run_load():
        result.update(asyncio.run(load(server["base"], payload, 1, budget, 10 ** 7, events)))

    global_stop[0] = False
    thread = threading.Thread(target=run_load)
    thread.start()
    windows, rss = [], []
    time.sleep(2.0)
    try:
        for i in range(swaps):
            model = home["m2"] if i % 2 == 0 else home["m1"]
            pushed_at = time.perf_counter()
            version = serving.push(model, home["serving_dir"]).version
            deadline = time.monotonic() + 60
            while not events or events[-1][2] != version:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not swap to version {version} in 60 s")
                time.sleep(0.01)
            swapped_at = events[-1][0]
            windows.append((pushed_at, swapped_at + 0.5))
            time.sleep(1.0)
            rss.append(server_rss_mib(server["proc"].pid))
            # Keep the folder small, as the controller's retention does.
            serving.apply_retention(home["serving_dir"], keep=3)
    finally:
        global_stop[0] = True  # ends the load now, not at the end of its time budget
        thread.join(timeout=budget + 30)
    in_swap = [done - t for t, done, _ in events if any(a <= t <= b for a, b in windows)]
    steady = [done - t for t, done, _ in events if not any(a <= t <= b for a, b in windows)]
    return {"swaps": swaps, "failed": result.get("failed"), "requests": len(events),
            "steady_p99_ms": round(pct(steady, 99) * 1000, 2), "swap_p99_ms": round(pct(in_swap, 99) * 1000, 2),
            "swap_requests": len(in_swap), "rss_mib_after_each_swap": rss}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per segment (default 4)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="pairs of segments (log on, log off) per client count, their order alternating")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--max-requests", type=int, default=20_000, help="per measurement, whatever the time")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--client", choices=("wrk", "httpx"), default="wrk",
                        help="the load generator of the latency rows (default wrk; httpx if wrk is not installed)")
    parser.add_argument("--writer-nice", type=int, default=0,
                        help="the logged server's --impressions-writer-nice (default 0, the server's default)")
    parser.add_argument("--shared-note", default="", help="a note on what else ran on the machine")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--json", default=os.path.join(HERE, "results", "serving.json"))
    args = parser.parse_args(argv)

    import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

    client = args.client
    if client == "wrk" and shutil.which("wrk") is None:
        log("wrk is not installed (apt-get install wrk): the clients are httpx tasks in this process instead")
        client = "httpx"
    root = tempfile.mkdtemp(prefix="serving-bench-")
    log(f"building the home in {root}")
    home = build_home(root)
    body = rank_body(args.candidates)
    payload = json.dumps(body).encode()
    log("in-process floor")
    results: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(),
                               "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                               "candidates": args.candidates, "body_bytes": len(payload), "seconds": args.seconds,
                               "rounds": args.rounds, "log_added_p99_ms": {}, "writer_nice": args.writer_nice,
                               "client": client,
                               "floor": floor(home["serving_dir"], body, 200), "http": {}}
    # Both servers up at once, their segments alternated (log on, log off, for each client count): the pair
    # compared for the log's cost is measured a few seconds apart, not minutes, on a machine whose load
    # from other work comes and goes. The server without the log is stopped before the swaps (it would
    # load every pushed version too).
    global_stop[0] = False
    servers = {}
    try:
        for impressions in (True, False):
            servers[impressions] = start_server(home["home"], impressions, args.writer_nice)
            asyncio.run(load(servers[impressions]["base"], payload, 1, 2.0, 200))  # warm-up, not counted
        for clients in args.clients:
            segments: Dict[bool, List[Dict[str, Any]]] = {True: [], False: []}
            for round_ in range(args.rounds):
                for impressions in ((True, False) if round_ % 2 == 0 else (False, True)):
                    time.sleep(1.0)  # the log's writer catches up on the previous segment before the next one
                    base = servers[impressions]["base"]
                    log(f"load: {clients} client(s), impressions {'on' if impressions else 'off'}, round "
                        f"{round_ + 1} of {args.rounds} ({client})")
                    if client == "wrk":
                        row = wrk_load(base, payload, clients, args.seconds, args.max_requests)
                    else:
                        out = asyncio.run(load(base, payload, clients, args.seconds, args.max_requests))
                        row = summary(out["latencies"], args.seconds, out["failed"])
                    segments[impressions].append(row)
            for impressions in (True, False):
                results["http"][f"{clients}_{'log' if impressions else 'nolog'}"] = {
                    "clients": clients, "impressions": impressions, **combine(segments[impressions])}
            results["log_added_p99_ms"][str(clients)] = log_added_p99(segments[True], segments[False])
        stop_server(servers.pop(False))
        if args.swaps:
            log(f"{args.swaps} hot swaps under load")
            results["swaps"] = hot_swaps(home, servers[True], payload, args.swaps)
    finally:
        for server in servers.values():
            stop_server(server)
        # The impressions log of a run is gigabytes (~385 bytes a line, 1,000 lines a request): a few runs
        # left behind filled this machine's disk.
        shutil.rmtree(root, ignore_errors=True)
    results["note"] = args.shared_note
    # What else ran: this machine is shared, and a busy neighbour moves the p99s more than anything here.
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    replace_section(args.out, "serving", render(results))
    print(json.dumps(results, indent=2))
    return 0


CLIENTS = {"wrk": "`wrk -t1 -cN` (Debian's wrk 4.1, its own process, one thread holding N connections)",
           "httpx": "asyncio tasks of one httpx.AsyncClient in the benchmark's process (it takes most of a core "
                    "from the server)"}


def render(r: Dict[str, Any]) -> str:
    start, end = marks("serving")
    m = r["machine"]
    lines = [start, "## Serving: `driftline serve` under load", "",
             "* Command: `.venv/bin/python benchmarks/serving.py`",
             f"* Date: {r['date']}; {m['nproc']} cores ({m['cpu_model']}), TensorFlow {m['tensorflow']}",
             f"* Requests: `POST /v1/models/{NAME}:rank`, one context and **{r['candidates']} candidates** "
             f"({r['body_bytes']:,} bytes of JSON), one after another per client; "
             f"the clients are {CLIENTS[r.get('client', 'httpx')]}; "
             + "the server is `python -m pipelines.cli serve` (uvicorn with uvloop and httptools, one worker) on "
             "loopback, started twice (log on, log off); "
             + (f"for each client count, {r['rounds']} rounds of a {r['seconds']:g} s segment on each server, "
                "their order alternating; a row's p50 and p99 are the medians over its segments, and the log's "
                "cost is the median over the rounds of the paired p99 difference (segments seconds apart: "
                "this machine's speed drifts from minute to minute)" if r.get("rounds") else
                f"{r['seconds']:g} s per row, the two rows of a client count a few seconds apart")
             + "; the hot swaps' client is httpx in the benchmark's process (it reads each answer's "
             "version)",
             *([f"* The logged server's impressions writer runs at nice {r['writer_nice']} "
                "(`--impressions-writer-nice`)"] if r.get("writer_nice") else []),
             "* Model: the default model (`pipelines.ads_model`) exported by its export path, untrained weights "
             "(the same cost as trained ones)"]
    if r.get("note"):
        lines.append(f"* Note: {r['note']}")
    if r.get("load_average_at_end"):
        start_la = r.get("load_average_at_start")
        lines.append("* Load average (1, 5, 15 min) "
                     + (f"when the run started: {', '.join(map(str, start_la))}; " if start_la else "")
                     + f"when it ended: {', '.join(map(str, r['load_average_at_end']))} (the 2 cores are shared "
                     "with other work: a load above ~1 besides this run moves the p99s more than anything here)")
    f = r["floor"]
    lines += ["", "The floor, in the benchmark's process on the same 1,000 candidates: the served `serving_raw` "
                  f"call alone p50 {f['model_call_p50_ms']} ms, p99 {f['model_call_p99_ms']} ms; with the server's "
                  f"schema checks of the body p50 {f['checks_and_call_p50_ms']} ms, p99 "
                  f"{f['checks_and_call_p99_ms']} ms.", "",
              "| clients | impressions log | requests | failed | p50 ms | p99 ms | p99 of each segment, ms | "
              "max ms | requests/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in r["http"].values():
        each = ", ".join(str(x) for x in row.get("segment_p99_ms", [row["p99_ms"]]))
        lines.append(f"| {row['clients']} | {'on' if row['impressions'] else 'off'} | {row['requests']} | "
                     f"{row['failed']} | {row['p50_ms']} | {row['p99_ms']} | {each} | {row['max_ms']} | "
                     f"{row['requests_per_s']} |")
    lines.append("")
    for clients in sorted({row["clients"] for row in r["http"].values()}):
        on, off = r["http"].get(f"{clients}_log"), r["http"].get(f"{clients}_nolog")
        if on and off:
            lines.append(f"- {clients} client(s): HTTP and the server's work over the in-process call: p99 "
                         f"{round(off['p99_ms'] - f['model_call_p99_ms'], 2)} ms; the impressions log adds "
                         f"{added_p99(r, clients)} ms to p99 (target <= 1 ms)")
    s = r.get("swaps")
    if s:
        lines += ["", f"Hot swaps: {s['swaps']} pushes under one client's load, {s['requests']} requests, "
                      f"**{s['failed']} failed**; p99 {s['swap_p99_ms']} ms in the swap windows "
                      f"({s['swap_requests']} requests from the push to 0.5 s after the first answer of the new "
                      f"version) against {s['steady_p99_ms']} ms outside them; server RSS after each swap (MiB): "
                      f"{', '.join(str(x) for x in s['rss_mib_after_each_swap'])}."]
    lines += ["", "Against #20's targets (this run):"] + [f"- {t}" for t in verdicts(r)]
    lines.append(end)
    return "\n".join(lines) + "\n"


def added_p99(r: Dict[str, Any], clients: int) -> float:
    """The log's cost to p99 with `clients`: the paired median of a run with rounds, else the rows' difference."""
    paired = r.get("log_added_p99_ms", {}).get(str(clients))
    if paired is not None:
        return paired
    return round(r["http"][f"{clients}_log"]["p99_ms"] - r["http"][f"{clients}_nolog"]["p99_ms"], 2)


def verdicts(r: Dict[str, Any]) -> List[str]:
    """Each of #20's targets, met or not, from the numbers of this run."""
    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    out = []
    for clients, target in ((1, 10.0), (4, 25.0)):
        row = r["http"].get(f"{clients}_log")
        if row:
            out.append(f"p99 <= {target:g} ms with {clients} client(s), impressions on: {row['p99_ms']} ms, "
                       f"{met(row['p99_ms'] <= target)}")
        off = r["http"].get(f"{clients}_nolog")
        if row and off:
            added = added_p99(r, clients)
            out.append(f"the impressions log adds <= 1 ms to p99 with {clients} client(s): {added} ms, "
                       f"{met(added <= 1.0)}")
    s = r.get("swaps")
    if s:
        out.append(f"0 failed requests through {s['swaps']} swaps: {s['failed']}, {met(s['failed'] == 0)}")
        out.append(f"p99 during a swap <= 2x steady: {s['swap_p99_ms']} ms against {s['steady_p99_ms']} ms, "
                   f"{met(s['swap_p99_ms'] <= 2 * s['steady_p99_ms'])}")
        rss = s["rss_mib_after_each_swap"]
        if len(rss) >= 20:
            growth = round(rss[19] - rss[4], 1)
            # Flat: within 2 % of the 5th swap's RSS (allocator noise), not growing by a model per swap.
            out.append(f"RSS flat from the 5th swap to the 20th: {rss[4]} -> {rss[19]} MiB ({growth:+} MiB), "
                       f"{met(abs(growth) <= 0.02 * rss[4])}")
    return out


if __name__ == "__main__":
    sys.exit(main())
