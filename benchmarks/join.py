"""The join of impressions and outcomes (#21): throughput against single-stream ingest, and its memory.

For each size (impressions per span) the simulated ad-click log is generated once (not timed, cached under
the work folder) and split by `pipelines.two_streams.split_log` into an impressions log and a delayed-clicks
log, the mode without a server. Then, in the same run:

* ``ingest``: driftline's single-stream ingest (``ingest.run_ingest``, DirectRunner in_memory, the local
  default) over the original log, labels inside the events, in one run; examples written per wall second.
* ``join``: the logs grow the way they arrive. Before run k, every impression and click with an event
  time before ``(k + 1) * span + attribution window + allowed lateness + 60 s`` is appended, in arrival
  order; then ``join_run.run_join`` runs in a fresh process (imports not timed) from the state run k - 1
  committed, and must emit exactly span k with every impression of it. Examples written per wall second
  (pending impressions re-read from the log count as cost), and the process's memory: its RSS after the
  imports, its peak, and the difference, per run, so a join whose memory grew with the stream would show.

Both write gzipped TFRecords of the same `tf.Example`s. The target (#21): the join at least 50 % of the
ingest's throughput at 100k and 1M impressions per span, with memory flat across spans.

    .venv/bin/python benchmarks/join.py                      # 100k and 1M impressions per span
    .venv/bin/python benchmarks/join.py --sizes 100000 --spans 3
    .venv/bin/python benchmarks/join.py --quick              # tiny smoke run (no results written)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402

START_MARK, END_MARK = marks("join")
BAD_FRACTION = 0.001
# Past a span's end plus the attribution window and the allowed lateness, this much more of both streams is
# appended before the run that must emit it: the join watermark trails the newest event, and the click
# stream is sparse, so its newest event is some way behind the cut.
CUT_MARGIN_MS = 60_000
TARGET_RATIO = 0.5


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _defaults():
    from components.streaming_example_gen.config import WindowConfig
    from components.streaming_example_gen.windowing import Window
    from pipelines.two_streams import TwoStreamConfig

    w = WindowConfig()
    window = Window(span_ms=w.span_seconds * 1000, allowed_lateness_ms=w.allowed_lateness_seconds * 1000,
                    eval_fraction=w.eval_fraction)
    return window, TwoStreamConfig()


# -- the streams (generated once, not timed) ------------------------------------------

def ensure_streams(work_dir: str, per_span: int, spans: int, seed: int) -> Dict[str, Any]:
    """The simulated log of `spans` + 2 spans at `per_span` events each, split into the two staged streams."""
    from pipelines.simulator import SimulatorConfig, simulate
    from pipelines.two_streams import TwoStreamConfig, split_log

    window, two = _defaults()
    span_minutes = window.span_ms / 60_000
    if per_span % span_minutes:
        raise SystemExit(f"--sizes must be multiples of {span_minutes:g} (events per minute), got {per_span}")
    sim = SimulatorConfig(seed=seed, minutes=float((spans + 2) * span_minutes),
                          events_per_minute=int(per_span // span_minutes), bad_fraction=BAD_FRACTION)
    two = dataclasses.replace(two, seed=seed)
    key = hashlib.sha256(json.dumps({"sim": dataclasses.asdict(sim), "two": dataclasses.asdict(two),
                                     "window": dataclasses.asdict(window)}, sort_keys=True).encode()).hexdigest()[:10]
    root = os.path.join(work_dir, "streams", f"n{per_span}-s{spans}-seed{seed}-{key}")
    facts_path = os.path.join(root, "_facts.json")
    if os.path.exists(facts_path):
        with open(facts_path) as f:
            facts = json.load(f)
        log(f"{per_span:,}/span: reusing the cached streams {root}")
        return facts
    shutil.rmtree(root, ignore_errors=True)
    started = time.monotonic()
    log(f"{per_span:,}/span: simulating {(spans + 2) * per_span:,} events (not timed) ...")
    events_dir = os.path.join(root, "events")
    summary = simulate(events_dir, sim)
    log(f"{per_span:,}/span: splitting into impressions and delayed clicks (not timed) ...")
    truth = split_log(events_dir, os.path.join(root, "impressions"), os.path.join(root, "outcomes"), two)
    facts = {"root": root, "per_span": per_span, "spans": spans, "seed": seed,
             "events_dir": events_dir, "impressions_dir": os.path.join(root, "impressions"),
             "outcomes_dir": os.path.join(root, "outcomes"), "valid_events": summary.events_written,
             "bad_lines": summary.bad_lines, "impressions": truth.impressions, "clicks": truth.clicks,
             "clicks_after_window": truth.after_window, "first_event_ms": summary.first_event_ms,
             "attribution_window_s": two.attribution_window_seconds,
             "click_delay_mean_s": two.click_delay_mean_seconds,
             "generate_seconds": round(time.monotonic() - started, 1)}
    with open(facts_path, "w") as f:
        json.dump(facts, f, indent=1)
    log(f"{per_span:,}/span: {truth.impressions:,} impressions, {truth.clicks:,} clicks "
        f"({truth.after_window:,} after the window) in {facts['generate_seconds']} s")
    return facts


class Feeder:
    """Appends a staged log to a live one in arrival order, up to an event-time cut."""

    def __init__(self, staged_dir: str, live_dir: str, time_field: str):
        from components import event_log

        self._lines = self._read(event_log, staged_dir)
        self._writer = event_log.EventLogWriter(live_dir)
        self._field = time_field
        self._head: Optional[Tuple[bytes, dict]] = None

    @staticmethod
    def _read(event_log, staged_dir: str) -> Iterator[bytes]:
        for chunk in event_log.plan_read(staged_dir, None).chunks:
            for _, line in event_log.read_chunk(staged_dir, chunk):
                yield line

    def feed(self, cut_ms: int) -> List[dict]:
        """Appends every line before the first one at or past `cut_ms`; returns their events."""
        batch, events = [], []
        while True:
            if self._head is None:
                line = next(self._lines, None)
                if line is None:
                    break
                self._head = (line, json.loads(line))
            line, event = self._head
            if event[self._field] >= cut_ms:
                break
            batch.append(line)
            events.append(event)
            self._head = None
            if len(batch) >= 20_000:
                self._writer.write_lines(batch)
                batch = []
        if batch:
            self._writer.write_lines(batch)
        return events

    def close(self) -> None:
        self._writer.close()


# -- one measured run (in a fresh child process) --------------------------------------

def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def worker_main(args: argparse.Namespace) -> None:
    import tensorflow as tf  # noqa: F401  (heavy imports before timing, as in benchmarks/ingest.py)
    import apache_beam  # noqa: F401

    from benchmarks.ingest import CpuMeter

    result: Dict[str, Any] = {"method": args.worker}
    if args.worker == "join":
        from components.streaming_example_gen import join, join_run
        from pipelines.two_streams import join_config

        window, two = _defaults()
        config = join_config(args.impressions_dir, args.outcomes_dir, two.attribution_window_seconds)
        with open(args.state_file) as f:
            state = join.JoinState.from_json(f.read() or None)
        dedup = json.loads(args.dedup_uris)
        rss_before = _rss_bytes()
        with CpuMeter(label="join") as meter:
            run = join_run.run_join(config, window, state, args.run_dir, dedup_span_uris=dedup)
        r = run.result
        with open(args.state_file + ".next", "w") as f:
            f.write(run.committed.to_json())
        result.update(examples=len(r.examples), emitted_spans=list(r.emitted_spans),
                      per_span={str(s): sum(e.span == s for e in r.examples) for s in r.emitted_spans},
                      positives=sum(e.label > 0 for e in r.examples),
                      attributed=sum(e.outcomes for e in r.examples), dead_letters=r.dead_letter_counts(),
                      pending_impressions=r.pending_impressions, pending_outcomes=r.pending_outcomes,
                      held_back_by=r.held_back_by, rss_before_bytes=rss_before)
    else:
        from benchmarks.ingest import _driftline
        from pipelines.config import BeamConfig

        rss_before = _rss_bytes()
        with CpuMeter(label="ingest") as meter:
            facts = _driftline(args.events_dir, args.run_dir, BeamConfig().args(), 8 << 20)
        result.update(examples=facts["examples_reported"], dead_letters=facts["dead_letters"],
                      rss_before_bytes=rss_before)
    # ru_maxrss is in KiB on Linux: the process's peak, imports included.
    result.update(wall_s=meter.wall, cpu_s=meter.cpu, others_cpu_s=meter.others_cpu,
                  peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    with open(args.result_file, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)


def run_child(extra: List[str], result_file: str) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *extra, "--result-file", result_file]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    if os.path.exists(result_file):
        os.remove(result_file)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: List[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if line.startswith("["):
            print(line, end="", flush=True)
    if proc.wait() != 0 or not os.path.exists(result_file):
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"child {extra[:2]} failed (exit {proc.returncode})")
    with open(result_file) as f:
        return json.load(f)


# -- one size (in the parent) ---------------------------------------------------------

def measure_size(facts: Dict[str, Any], work_dir: str) -> Dict[str, Any]:
    from components.streaming_example_gen import ingest

    window, two = _defaults()
    per_span, spans = facts["per_span"], facts["spans"]
    run_root = os.path.join(work_dir, "runs", f"n{per_span}")
    shutil.rmtree(run_root, ignore_errors=True)
    os.makedirs(run_root)

    log(f"{per_span:,}/span: single-stream ingest of the original log ...")
    ingest_row = run_child(["--worker", "ingest", "--events-dir", facts["events_dir"],
                            "--run-dir", os.path.join(run_root, "ingest")], os.path.join(run_root, "ingest.json"))
    shutil.rmtree(os.path.join(run_root, "ingest"), ignore_errors=True)
    log(f"  ingest: {ingest_row['examples']:,} examples in {ingest_row['wall_s']:.2f} s")

    live_imp, live_out = os.path.join(run_root, "impressions"), os.path.join(run_root, "outcomes")
    imp_feed = Feeder(facts["impressions_dir"], live_imp, "event_time")
    out_feed = Feeder(facts["outcomes_dir"], live_out, "event_time")
    state_file = os.path.join(run_root, "state.json")
    open(state_file, "w").close()
    start_span = window.span_of(facts["first_event_ms"])
    runs, recent_uris = [], []
    expected: Dict[int, int] = {}
    for k in range(spans):
        span = start_span + k
        cut = (span + 1) * window.span_ms + two.attribution_window_seconds * 1000 + window.allowed_lateness_ms \
            + CUT_MARGIN_MS
        for event in imp_feed.feed(cut):
            s = window.span_of(event["event_time"])
            expected[s] = expected.get(s, 0) + 1
        clicks = len(out_feed.feed(cut))
        run_dir = os.path.join(run_root, f"join-{k}")
        row = run_child(["--worker", "join", "--impressions-dir", live_imp, "--outcomes-dir", live_out,
                         "--state-file", state_file, "--run-dir", run_dir, "--dedup-uris", json.dumps(recent_uris)],
                        os.path.join(run_root, f"join-{k}.json"))
        os.replace(state_file + ".next", state_file)
        if row["emitted_spans"] != [span] or row["per_span"][str(span)] != expected[span]:
            raise SystemExit(f"join run {k} emitted {row['per_span']}, expected span {span} with "
                             f"{expected[span]} impressions: the benchmark's cut or the join is wrong")
        row.update(span=span, clicks_appended=clicks)
        recent_uris = (recent_uris + [ingest.span_dir(run_dir, span)])[-4:]
        log(f"  join run {k}: span {span}, {row['examples']:,} examples ({row['positives']:,} positive) in "
            f"{row['wall_s']:.2f} s; peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB "
            f"(+{(row['peak_rss_bytes'] - row['rss_before_bytes']) / 2**20:.0f} MiB over the imports); "
            f"pending {row['pending_impressions']:,} impressions")
        runs.append(row)
    imp_feed.close()
    out_feed.close()
    for k in range(spans - 1):
        shutil.rmtree(os.path.join(run_root, f"join-{k}"), ignore_errors=True)

    join_examples = sum(r["examples"] for r in runs)
    join_wall = sum(r["wall_s"] for r in runs)
    join_eps = join_examples / join_wall
    ingest_eps = ingest_row["examples"] / ingest_row["wall_s"]
    growth = [r["peak_rss_bytes"] - r["rss_before_bytes"] for r in runs]
    return {"per_span": per_span, "spans": spans, "facts": facts, "ingest": ingest_row, "join_runs": runs,
            "ingest_examples_per_s": round(ingest_eps), "join_examples_per_s": round(join_eps),
            "ratio": round(join_eps / ingest_eps, 3), "met": join_eps / ingest_eps >= TARGET_RATIO,
            "join_peak_rss_mib": [round(r["peak_rss_bytes"] / 2**20) for r in runs],
            "join_rss_growth_mib": [round(g / 2**20) for g in growth]}


# -- the report -------------------------------------------------------------------------

def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['per_span']:,}/span" for r in rows]
    x = range(len(rows))
    a.bar([i - 0.2 for i in x], [r["ingest_examples_per_s"] for r in rows], 0.4, label="single-stream ingest")
    a.bar([i + 0.2 for i in x], [r["join_examples_per_s"] for r in rows], 0.4, label="join (impressions + clicks)")
    a.set_xticks(list(x), labels)
    a.set_ylabel("examples written per wall second")
    a.set_title("Throughput, same run")
    a.legend()
    for r in rows:
        b.plot(range(len(r["join_peak_rss_mib"])), r["join_peak_rss_mib"], marker="o",
               label=f"{r['per_span']:,}/span: peak RSS")
        b.plot(range(len(r["join_rss_growth_mib"])), r["join_rss_growth_mib"], marker="x", linestyle="--",
               label=f"{r['per_span']:,}/span: over the imports")
    b.set_xlabel("join run (one span each)")
    b.set_ylabel("MiB")
    b.set_ylim(bottom=0)
    b.set_title("Join process memory per run")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render_section(report: Dict[str, Any], png_rel: str) -> str:
    m = report["machine"]
    lines = [START_MARK, "## Join: impressions and delayed clicks (#21)", "",
             "Single-stream ingest of the simulated log (labels inside the events, one run, DirectRunner in_memory)",
             "against the join of the same events split into an impressions log and a delayed-clicks log",
             "(`pipelines/two_streams.py`), the logs growing by one span per join run. Every join run must emit",
             "exactly its span with every impression of it (checked). Imports are not timed; each run is a fresh",
             "process.", "",
             f"* Date: {report['date']}",
             f"* Machine: {m['nproc']} CPU ({m['cpu_model']}), {m['mem_gib']} GiB; Python {m['python']}",
             f"* Command: `{report['command']}`",
             f"* Attribution window {report['attribution_window_s']} s, clicks delayed exponentially "
             f"(mean {report['click_delay_mean_s']:g} s, 5 % after the window), span 600 s, lateness 30 s", "",
             "| impressions/span | ingest examples/s | join examples/s | join / ingest | target ≥ 0.5 | "
             "join peak RSS per run (MiB) | over the imports (MiB) |",
             "|---:|---:|---:|---:|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['per_span']:,} | {r['ingest_examples_per_s']:,} | {r['join_examples_per_s']:,} | "
                     f"{r['ratio']:.2f} | {'met' if r['met'] else '**not met**'} | "
                     f"{', '.join(map(str, r['join_peak_rss_mib']))} | "
                     f"{', '.join(map(str, r['join_rss_growth_mib']))} |")
    lines += ["", f"![join]({png_rel})", ""]
    if report.get("notes"):
        lines += [report["notes"], ""]
    lines.append(END_MARK)
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="impressions per span")
    p.add_argument("--spans", type=int, default=3, help="join runs (one span each) per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="20k/span, 2 spans, nothing written")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "driftline-join-bench"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "join.json"))
    p.add_argument("--png", default=os.path.join(ROOT, "benchmarks", "results", "join.png"))
    p.add_argument("--notes-file", default=None, help="markdown appended to the RESULTS.md section")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--worker", choices=["join", "ingest"], help=argparse.SUPPRESS)
    for hidden in ("--impressions-dir", "--outcomes-dir", "--events-dir", "--state-file", "--run-dir",
                   "--dedup-uris", "--result-file"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    if args.quick:
        args.sizes, args.spans, args.no_write = [20_000], 2, True
    if args.spans < 2:
        raise SystemExit("--spans must be >= 2: memory flat across spans needs more than one run")
    _, two = _defaults()
    rows = []
    for size in args.sizes:
        facts = ensure_streams(args.work_dir, size, args.spans, args.seed)
        row = measure_size(facts, args.work_dir)
        log(f"{size:,}/span: join {row['join_examples_per_s']:,}/s vs ingest {row['ingest_examples_per_s']:,}/s "
            f"= {row['ratio']:.2f} ({'met' if row['met'] else 'NOT met'}); peak RSS per run "
            f"{row['join_peak_rss_mib']} MiB")
        rows.append(row)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine_info(), "command": " ".join(["benchmarks/join.py", shlex.join(argv or sys.argv[1:])]).strip(),
              "attribution_window_s": two.attribution_window_seconds,
              "click_delay_mean_s": two.click_delay_mean_seconds, "rows": rows}
    if args.notes_file:
        with open(args.notes_file) as f:
            report["notes"] = f.read().strip()
    if args.no_write:
        return 0
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    plot(rows, args.png)
    replace_section(args.out, "join", render_section(report, os.path.relpath(args.png, os.path.dirname(args.out))))
    log(f"wrote {args.json}, {args.png} and the join section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
