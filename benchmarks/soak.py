"""Soak: many short cycles of the continuous controller, with retention on; disk, ML Metadata and cycle time.

The controller (`pipelines.controller.run_continuous`, in this one process,
which imports TFX once) runs on the built-in stream cut into short spans:
each step appends one span of events to the log (outside the home, so the
home's disk use is what the pipeline keeps) and lets the controller run
until no cycle is due, which is one cycle per step. After every cycle it
records the cycle's wall time (the TFX run, and with retention), the disk
use of the home and of its parts, the size and row counts of the ML
Metadata SQLite file, and the process's resident memory. It then checks
that nothing grows with history: cycle time late in the soak against early
on, and disk halfway against at the end.

    .venv/bin/python benchmarks/soak.py [--cycles 100] [--keep-cycles 3] [--events-per-minute 3000]

Writes benchmarks/results/soak.json, benchmarks/results/soak.png and the
`soak` section of benchmarks/RESULTS.md. Run it on a quiet machine: it
reports wall times.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402
from pipelines.report import format_table, quiet_tensorflow  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SPAN_SECONDS = 60
MLMD_TABLES = ("Artifact", "ArtifactProperty", "Execution", "ExecutionProperty", "Event", "Context",
               "Attribution", "Association")


def du(path: str) -> int:
    """Bytes on disk under `path` (allocated blocks, as `du` counts them)."""
    total = 0
    for dirpath, dirnames, names in os.walk(path):
        for name in names + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def mlmd_rows(path: str) -> dict:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in MLMD_TABLES}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak_config(home: str, log_dir: str, keep_cycles: int):
    from pipelines.config import GateConfig, RetentionConfig, TrainerConfig, WindowConfig, default_config

    return default_config(home, log_dir).replace(
        window=WindowConfig(span_seconds=SPAN_SECONDS, allowed_lateness_seconds=5),
        trainer=TrainerConfig(cold_epochs=2, warm_epochs=1),
        # What is soaked is the machinery, not model quality: bounds a sound model clears on a short
        # span, so that most cycles push (the path that writes the most).
        gate=GateConfig(min_auc=0.55, min_calibration=0.5, max_calibration=1.6, max_log_loss=0.65,
                        max_auc_drop=0.03, min_slice_auc=0.5, min_eval_examples=300, min_eval_positives=20),
        retention=RetentionConfig(keep_cycles=keep_cycles)).validate()


def window_median(rows, key: str, lo: float, hi: float) -> float:
    """Median of `key` over the cycles in the [lo, hi] fraction of the run (at least one cycle)."""
    n = len(rows)
    a = max(0, min(n - 1, int(round(lo * n)) - 1))
    b = max(a + 1, int(round(hi * n)))
    return statistics.median(r[key] for r in rows[a:b])


def slope(xs, ys) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def payload(row) -> int:
    return row["bytes"]["pipeline_root"] + row["bytes"]["serving"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--keep-cycles", type=int, default=3)
    parser.add_argument("--events-per-minute", type=int, default=3000,
                        help="events per one-minute span (default 3000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", help="where the home and the log go (default: a new temp folder, removed)")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--results-dir", default=os.path.join(HERE, "results"), help="for soak.json and soak.png")
    args = parser.parse_args(argv)
    if args.cycles < 2:
        parser.error("--cycles must be >= 2")
    quiet_tensorflow()
    from pipelines.controller import run_continuous
    from pipelines.simulator import SimulatorConfig, simulate

    work = args.work_dir or tempfile.mkdtemp(prefix="driftline-soak-")
    home, log_dir = os.path.join(work, "home"), os.path.join(work, "events")
    config = soak_config(home, log_dir, args.keep_cycles)
    sim = SimulatorConfig(minutes=2, events_per_minute=args.events_per_minute, seed=args.seed,
                          hot_ad_minute=None)
    simulate(log_dir, sim)  # two minutes: the first span closes
    rows = []
    started = time.monotonic()
    for step in range(1, args.cycles + 1):
        if step > 1:
            simulate(log_dir, dataclasses.replace(sim, minutes=1), append=True)  # closes one more span
        lines = []
        t0 = time.monotonic()
        ran = run_continuous(config, until_idle=True, emit=lines.append, say=lambda m: None)
        controller_s = time.monotonic() - t0
        if ran != 1 or len(lines) != 1:
            raise SystemExit(f"step {step}: expected one cycle, the controller ran {ran}")
        cycle = json.loads(lines[0])
        sizes = {"home": du(home), "pipeline_root": du(config.pipeline_root), "serving": du(config.serving_dir),
                 "mlmd": os.path.getsize(config.metadata_path), "event_log": du(log_dir)}
        row = {
            "cycle": step, "spans": cycle["spans"], "start": cycle["start"], "model_id": cycle["model_id"],
            "blessed": cycle["blessed"],
            "pushed_version": cycle["pushed_version"], "cycle_s": cycle["wall_seconds"],
            "controller_s": round(controller_s, 2), "retention_s": cycle["retention"]["seconds"],
            "deleted": cycle["retention"]["deleted"], "freed_bytes": cycle["retention"]["freed_bytes"],
            "unused_folders": cycle["retention"]["unused_folders"], "rss_mb": round(rss_mb(), 1),
            "bytes": sizes, "mlmd_rows": mlmd_rows(config.metadata_path)}
        rows.append(row)
        print(f"cycle {step:3d}: {row['cycle_s']:5.1f} s (+{row['retention_s']:.2f} s retention), home "
              f"{sizes['home'] / 1e6:6.1f} MB, MLMD {sizes['mlmd'] / 1e6:5.2f} MB, "
              f"{row['mlmd_rows']['Artifact']} artifacts, RSS {row['rss_mb']:.0f} MB, "
              f"{'pushed ' + row['pushed_version'] if row['pushed_version'] else 'not pushed'}", file=sys.stderr)
    total = time.monotonic() - started

    from pipelines import lineage

    status = lineage.status(config)
    # Why each cycle that pushed nothing did not (the 2026-12-06 runs kept only that it did not).
    not_pushed = why_not_pushed(rows, lineage.models(config.metadata_path, config.pipeline_name))
    chain = lineage.chain(config.metadata_path, config.pipeline_name, serving_dir=config.serving_dir)
    freed_total = sum(r["freed_bytes"] for r in rows)
    n = len(rows)
    half = rows[n // 2 - 1]
    last = rows[-1]
    summary = {
        "cycles": n, "keep_cycles": args.keep_cycles, "events_per_span": args.events_per_minute,
        "span_seconds": SPAN_SECONDS, "total_s": round(total, 1),
        "cycle_s_early": window_median(rows, "cycle_s", 0.1, 0.3),
        "cycle_s_late": window_median(rows, "cycle_s", 0.8, 1.0),
        "controller_s_early": window_median(rows, "controller_s", 0.1, 0.3),
        "controller_s_late": window_median(rows, "controller_s", 0.8, 1.0),
        "home_bytes_half": half["bytes"]["home"], "home_bytes_end": last["bytes"]["home"],
        "home_bytes_max": max(r["bytes"]["home"] for r in rows),
        "payload_bytes_half": payload(half), "payload_bytes_end": payload(last),
        "payload_bytes_max": max(payload(r) for r in rows),
        # Over the second half: what a cycle adds once retention is in its steady state.
        "payload_bytes_per_cycle": slope([r["cycle"] for r in rows[n // 2:]], [payload(r) for r in rows[n // 2:]]),
        "home_bytes_per_cycle": slope([r["cycle"] for r in rows[n // 2:]], [r["bytes"]["home"] for r in rows[n // 2:]]),
        # Past the first tenth (the cold start, the first pushes): seconds a cycle gains per cycle of history.
        "cycle_s_trend": slope([r["cycle"] for r in rows[n // 10:]], [r["cycle_s"] for r in rows[n // 10:]]),
        "mlmd_bytes_half": half["bytes"]["mlmd"], "mlmd_bytes_end": last["bytes"]["mlmd"],
        "mlmd_bytes_per_cycle": slope([r["cycle"] for r in rows[n // 2:]], [r["bytes"]["mlmd"] for r in rows[n // 2:]]),
        "artifacts_per_cycle": (last["mlmd_rows"]["Artifact"] - half["mlmd_rows"]["Artifact"]) / max(1, n - n // 2),
        "rss_mb_half": half["rss_mb"], "rss_mb_end": last["rss_mb"],
        "freed_bytes_total": freed_total,
        "without_retention_bytes_estimate": last["bytes"]["home"] + freed_total,
        "pushes": sum(1 for r in rows if r["pushed_version"]),
        "not_pushed": not_pushed,
        "status": {"serving_version": status.serving.version, "serving_model_id": status.serving.model_id,
                   "spans_ingested": status.spans_ingested, "spans_payload_deleted": status.spans_payload_deleted,
                   "models_trained": status.models_trained, "models_payload_deleted": status.models_payload_deleted,
                   "chain_length": len(chain), "chain_ends_cold": bool(chain) and chain[-1].start == "cold"},
        "per_cycle": rows, "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([".venv/bin/python", "benchmarks/soak.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "soak.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(rows, os.path.join(args.results_dir, "soak.png"))
    write_section(summary, args.out)
    print(f"wrote {args.out}, {args.results_dir}/soak.json and soak.png ({total:.0f} s)", file=sys.stderr)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def why_not_pushed(rows, records) -> list:
    """For each cycle that pushed nothing, what ML Metadata says of its model (the cycle's `model_id`): the
    gate's failed checks and the blessing's reason (or the pusher's). `records`: `lineage.models`."""
    by_id = {r.model_id: r for r in records}
    out = []
    for row in rows:
        if row["pushed_version"]:
            continue
        record = by_id.get(row["model_id"])
        if record is None:
            out.append({"cycle": row["cycle"], "model_id": row["model_id"], "failed_checks": [],
                        "reason": "no model recorded for the cycle"})
            continue
        out.append({"cycle": row["cycle"], "model_id": record.model_id,
                    "failed_checks": list(record.failed_checks or []),
                    "reason": record.blessing_reason if record.blessed is False else
                    (record.push_reason or record.blessing_reason or "")})
    return out


def longest_without_push(rows) -> tuple:
    """(length, first cycle, last cycle) of the longest run of consecutive cycles that pushed nothing:
    a serving stall (the 2026-12-06 soak: 40 cycles, 61-100). (0, None, None) when every cycle pushed."""
    best, start, run = (0, None, None), None, 0
    for r in rows:
        if r["pushed_version"]:
            run = 0
            continue
        run += 1
        start = r["cycle"] if run == 1 else start
        if run > best[0]:
            best = (run, start, r["cycle"])
    return best


def write_section(s: dict, out: str) -> None:
    rows = s["per_cycle"]
    n = s["cycles"]
    mb = lambda b: f"{b / 1e6:.1f}"  # noqa: E731
    pick = sorted({1, 2, 3, 5, 10, 20, 30, 50, 75, n} & set(range(1, n + 1)) | {n // 2})
    table = format_table(
        ("cycle", "cycle s", "+retention s", "home MB", "pipeline_root MB", "serving MB", "MLMD MB", "artifacts",
         "executions", "events", "RSS MB"),
        [(r["cycle"], f"{r['cycle_s']:.1f}", f"{r['retention_s']:.2f}", mb(r["bytes"]["home"]),
          mb(r["bytes"]["pipeline_root"]), mb(r["bytes"]["serving"]), f"{r['bytes']['mlmd'] / 1e6:.2f}",
          r["mlmd_rows"]["Artifact"], r["mlmd_rows"]["Execution"], r["mlmd_rows"]["Event"], f"{r['rss_mb']:.0f}")
         for r in rows if r["cycle"] in pick])
    ratio = s["cycle_s_late"] / s["cycle_s_early"] if s["cycle_s_early"] else float("nan")
    m = s["machine"]
    st = s["status"]
    early = f"cycles {max(1, int(round(0.1 * n)))}-{max(1, int(round(0.3 * n)))}"
    late = f"cycles {max(1, int(round(0.8 * n)))}-{n}"
    at_half, at_end = f"cycle {n // 2}", f"cycle {n}"
    per_cycle = lambda b: f"{b / 1e3:+.1f} KB a cycle over the second half"  # noqa: E731
    stall = longest_without_push(rows)
    checks = [
        ("cycle wall time, median (the TFX run)", f"{s['cycle_s_early']:.1f} s ({early})",
         f"{s['cycle_s_late']:.1f} s ({late})", f"ratio {ratio:.2f}"),
        ("controller time a cycle, median (run, retention, due check)", f"{s['controller_s_early']:.1f} s",
         f"{s['controller_s_late']:.1f} s", ""),
        (f"cycle time trend (least squares from cycle {n // 10 + 1})", "", "",
         f"{100 * s['cycle_s_trend']:+.1f} s per 100 cycles"),
        ("payload on disk (pipeline_root + serving)", f"{mb(s['payload_bytes_half'])} MB ({at_half})",
         f"{mb(s['payload_bytes_end'])} MB ({at_end})",
         f"{per_cycle(s['payload_bytes_per_cycle'])}; max {mb(s['payload_bytes_max'])} MB"),
        ("home on disk (payload + ML Metadata)", f"{mb(s['home_bytes_half'])} MB ({at_half})",
         f"{mb(s['home_bytes_end'])} MB ({at_end})",
         f"{per_cycle(s['home_bytes_per_cycle'])}; max {mb(s['home_bytes_max'])} MB"),
        ("ML Metadata SQLite", f"{s['mlmd_bytes_half'] / 1e6:.2f} MB ({at_half})",
         f"{s['mlmd_bytes_end'] / 1e6:.2f} MB ({at_end})",
         f"{per_cycle(s['mlmd_bytes_per_cycle'])}, {s['artifacts_per_cycle']:.1f} artifact records a cycle"),
        ("resident memory", f"{s['rss_mb_half']:.0f} MB ({at_half})", f"{s['rss_mb_end']:.0f} MB ({at_end})", ""),
        ("pushes; the longest run of cycles without one", "", "",
         f"{s['pushes']} of {n}; " + ("none without" if not stall[0] else
                                      f"{stall[0]} cycles ({stall[1]}-{stall[2]})" if stall[0] > 1 else
                                      f"1 cycle (cycle {stall[1]})")),
    ]
    check_rows = "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in checks)
    body = f"""## Soak: {n} controller cycles with retention

* Date: {s['date']}; machine: {m['nproc']} CPU ({m['cpu_model']}), {m['mem_gib']} GiB;
  TFX {m['tfx']}, Beam {m['apache_beam']}
* Command: `{s['command']}`
* The controller (`run_continuous`, one process, TFX imported once) on the built-in stream cut into
  {s['span_seconds']} s spans of {s['events_per_span']:,} events, one span per cycle; retention keeps
  the newest {s['keep_cycles']} cycles' payloads plus what the next cycle and serving need; the event log
  lives outside the home. A relaxed gate, so that most cycles push ({s['pushes']} of {n} did).

| check | early | late | |
|---|---:|---:|---|
{check_rows}

{not_pushed_lines(s.get("not_pushed"))}* Payload deleted by retention over the run: {mb(s['freed_bytes_total'])} MB; without retention the home
  would hold about {mb(s['without_retention_bytes_estimate'])} MB now.
* ML Metadata keeps every record (marked DELETED) by design, so that lineage and status survive; so it
  does not level off. At the rate above, a cycle every 5 minutes adds about
  {s['mlmd_bytes_per_cycle'] * 288 * 365 / 1e9:.1f} GB a year.
* At the end, `driftline status` read: serving version {st['serving_version']} (model {st['serving_model_id']}),
  {st['spans_ingested']} spans ({st['spans_payload_deleted']} with payload deleted), {st['models_trained']}
  models ({st['models_payload_deleted']} with payload deleted); the serving model's lineage chain has
  {st['chain_length']} models and {'ends' if st['chain_ends_cold'] else 'does NOT end'} at a cold start.

```
{table}
```

![soak](results/soak.png)
"""
    start, end = marks("soak")
    replace_section(out, "soak", f"{start}\n{body.rstrip()}\n{end}")


def not_pushed_lines(not_pushed) -> str:
    """The RESULTS lines on the cycles that pushed nothing, with why ("" for a run stored without reasons)."""
    if not not_pushed:
        return ""
    lines = ["* Not pushed:"] + [
        f"  cycle {c['cycle']} (model {c['model_id']}): " + (f"failed {', '.join(c['failed_checks'])}; "
                                                            if c["failed_checks"] else "") + str(c["reason"])
        for c in not_pushed]
    return "\n".join(lines) + "\n"


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["cycle"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    ax = axes[0]
    for key, label in (("home", "home (total)"), ("pipeline_root", "pipeline_root"), ("serving", "serving"),
                       ("mlmd", "ML Metadata")):
        ax.plot(x, [r["bytes"][key] / 1e6 for r in rows], label=label)
    ax.set_ylabel("MB on disk")
    ax.set_title("driftline soak: disk, ML Metadata and cycle time per cycle (retention on)")
    ax.legend()
    ax = axes[1]
    ax.plot(x, [r["bytes"]["mlmd"] / 1e6 for r in rows], color="tab:red", label="ML Metadata MB")
    ax.set_ylabel("MB")
    ax2 = ax.twinx()
    ax2.plot(x, [r["mlmd_rows"]["Artifact"] for r in rows], color="tab:gray", linestyle="--", label="artifact records")
    ax2.set_ylabel("records")
    ax.legend(loc="upper left")
    ax2.legend(loc="lower right")
    ax = axes[2]
    ax.plot(x, [r["cycle_s"] for r in rows], ".-", label="cycle (TFX run)")
    ax.plot(x, [r["controller_s"] for r in rows], ".", alpha=0.5, label="controller (run + retention)")
    ax.set_ylabel("seconds")
    ax.set_xlabel("cycle")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
