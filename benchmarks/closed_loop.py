"""The closed loop in served terms (#21): continuous training against batch retraining and a static model.

Each regime runs `pipelines.closed_loop.run_closed_loop` in its own fresh process and home, on the same
simulated population (the same world, seed and rates; in real time, so each regime's stretch of live
traffic starts at its own clock time, with the world's drift measured from its own origin):

* **continuous**: driftline's controller runs a cycle as each span closes (`driftline run --continuous`);
* **batch every K spans**: the controller wakes every K spans and runs one cycle over the spans closed
  since (the model is still warm-started: this is the cadence of a cron job, not a from-scratch retrain);
* **static**: the first model serves throughout.

Each starts from the same written history, trains its first model on it, starts the population (users
rank `candidates` ads through a real `driftline serve`, see the top `shown`, click with the world's true
probability), and runs `--live-spans` spans of live traffic. The world's **hot ad** (a new ad id with a
high click rate) appears `--hot-after-spans` spans into the live stretch.

Reported per regime, over the live stretch: the served click-through rate (clicks within the window per ad
shown); the expected CTR of what was shown (the true click probabilities, free of the clicks' coin flips)
against the best order of the same candidates (the oracle) and a random order; the hot ad's show rate
(times shown / times a candidate) per span after it appears, and the first span where it is shown in at
least half the requests it is a candidate in; click-to-serving freshness (the cycles' median, from a
click's event time to the first served model trained on it; target span + attribution window + 60 s);
failed requests. Machine load moves cycle times (and so the continuous regime's lag); compare regimes
within one run.

    .venv/bin/python benchmarks/closed_loop.py                         # 3 regimes, ~20 min
    .venv/bin/python benchmarks/closed_loop.py --live-spans 6 --quick  # a smoke run, nothing written
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402

RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
RESULTS_MD = os.path.join(ROOT, "benchmarks", "RESULTS.md")
HOT_SHOWN_HALF = 0.5


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def regimes(batch_every: int) -> Dict[str, int]:
    from pipelines.closed_loop import CONTINUOUS, STATIC

    return {"continuous": CONTINUOUS, f"batch every {batch_every} spans": batch_every, "static": STATIC}


def chosen_regimes(args: argparse.Namespace) -> Dict[str, int]:
    """The regimes `--regimes` names (continuous, batch, static), in that order."""
    every = regimes(args.batch_every)
    wanted = {w.strip() for w in args.regimes.split(",")}
    unknown = wanted - {"continuous", "batch", "static"}
    if unknown:
        raise SystemExit(f"--regimes: unknown {sorted(unknown)}; choose from continuous, batch, static")
    return {name: k for name, k in every.items() if name.split()[0] in wanted}


def run_regime(home: str, retrain_every_spans: int, args: argparse.Namespace) -> dict:
    """One regime in this process; returns what the summary needs (JSON-ready)."""
    from pipelines.closed_loop import run_closed_loop
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    started = time.monotonic()
    result = run_closed_loop(home, span_seconds=args.span_seconds, history_minutes=args.history_minutes,
                             requests_per_second=args.requests_per_second, seed=args.seed,
                             progress=log, live_spans=args.live_spans, retrain_every_spans=retrain_every_spans,
                             hot_ad_after_seconds=args.hot_after_spans * args.span_seconds,
                             attribution_window_seconds=args.attribution_window_seconds,
                             allowed_lateness_seconds=args.allowed_lateness_seconds)
    return {"rows": result.rows, "cycles": result.cycles, "requests": result.tally.requests,
            "failed": result.tally.failed, "errors": result.tally.errors,
            "versions_in_order": result.tally.versions_in_order, "wall_s": time.monotonic() - started,
            "exploration_rate": result.config.serve.exploration_rate}


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b else None


def summarize(run: dict, args: argparse.Namespace) -> dict:
    """Totals over the live stretch (the spans the population saw, first and last partial spans left out)."""
    rows = sorted(run["rows"], key=lambda r: r["span"])
    live = rows[1:-1] if len(rows) > 2 else rows
    shown = sum(r["shown"] for r in live)
    clicks = sum(r["clicks_in_window"] for r in live)
    expected = sum(r["expected_clicks"] for r in live)
    oracle = sum(r["oracle_expected_clicks"] for r in live)
    random_ = sum(r["random_expected_clicks"] for r in live)
    first = rows[0]["span"] if rows else 0
    hot_rates = [(r["span"] - first, _ratio(r["hot_shown"], r["hot_candidates"])) for r in rows if r["hot_candidates"]]
    hot_half = next((i for i, rate in hot_rates if rate is not None and rate >= HOT_SHOWN_HALF), None)
    hot_first = min((i for i, _ in hot_rates), default=None)
    # Cycles after the first: the first trains on the written history, whose clicks no served user made.
    fresh = [c["click_freshness_median_seconds"] for c in run["cycles"][1:]
             if c.get("click_freshness_median_seconds") is not None]
    fresh.sort()
    return {
        "live_spans_counted": len(live), "shown": shown, "clicks_in_window": clicks,
        "served_ctr": _ratio(clicks, shown), "expected_ctr": _ratio(expected, shown),
        "oracle_ctr": _ratio(oracle, shown), "random_ctr": _ratio(random_, shown),
        # Where the served order sits between a random order (0) and the best order (1).
        "expected_share_of_oracle_gain": _ratio(expected - random_, oracle - random_),
        "hot_show_rate_by_span": hot_rates, "hot_first_span": hot_first,
        "hot_spans_to_half_shown": None if hot_half is None or hot_first is None else hot_half - hot_first,
        "hot_shown": sum(r["hot_shown"] for r in rows), "hot_candidates": sum(r["hot_candidates"] for r in rows),
        "hot_clicks_in_window": sum(r["hot_clicks_in_window"] for r in rows),
        "cycles": len(run["cycles"]), "pushes": sum(1 for c in run["cycles"] if c.get("pushed_version")),
        "click_freshness_median_s": fresh[len(fresh) // 2] if fresh else None,
        "click_freshness_target_s": args.span_seconds + args.attribution_window_seconds + 60,
        "requests": run["requests"], "failed": run["failed"], "wall_s": run["wall_s"],
    }


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, run in result["runs"].items():
        rows = sorted(run["rows"], key=lambda r: r["span"])
        first = rows[0]["span"] if rows else 0
        xs = [r["span"] - first for r in rows if r["shown"]]
        ax1.plot(xs, [r["expected_clicks"] / r["shown"] for r in rows if r["shown"]], marker="o", label=name)
        hot = run["summary"]["hot_show_rate_by_span"]
        ax2.plot([i for i, _ in hot], [rate for _, rate in hot], marker="o", label=name)
    if result["runs"]:
        rows = sorted(next(iter(result["runs"].values()))["rows"], key=lambda r: r["span"])
        first = rows[0]["span"] if rows else 0
        ax1.plot([r["span"] - first for r in rows if r["shown"]],
                 [r["oracle_expected_clicks"] / r["shown"] for r in rows if r["shown"]], "k--", label=f"best order ({next(iter(result['runs']))}'s candidates)")
        ax1.plot([r["span"] - first for r in rows if r["shown"]],
                 [r["random_expected_clicks"] / r["shown"] for r in rows if r["shown"]], "k:", label="random order (same)")
    ax1.set_xlabel(f"span of live traffic ({result['args']['span_seconds']} s)")
    ax1.set_ylabel("expected CTR of the ads shown")
    ax1.set_title("served CTR (true click probability of what was shown)")
    ax1.legend(fontsize=8)
    ax2.axvline(result["args"]["hot_after_spans"], color="grey", lw=0.8)
    ax2.set_xlabel("span of live traffic")
    ax2.set_ylabel("hot ad: shown / candidate")
    ax2.set_title("the hot ad, in served terms")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _f(x: Optional[float], fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def section_name(name: str) -> str:
    """The RESULTS.md section of results named `name` (`closed_loop`: `closed-loop`)."""
    return name.replace("_", "-")


def section(result: dict) -> str:
    a, m = result["args"], result["machine"]
    start, end = marks(section_name(a.get("name", "closed_loop")))
    title = "The closed loop in served terms (#21)"
    if a.get("name", "closed_loop") != "closed_loop":
        title += f": {', '.join(result['runs'])}, {a['span_seconds']} s spans, a {a['attribution_window_seconds']} s window"
    lines = [start, f"## {title}", "",
             f"`benchmarks/closed_loop.py`, {result['date']}, {m['nproc']} cores ({m['cpu_model']}), shared with other work. Each regime in a fresh process "
             f"and home: a real `driftline serve`, the simulated population ranking {a['requests_per_second']:g} "
             f"requests/s ({a['candidates']} candidates, top {a['shown']} shown), spans of {a['span_seconds']} s, "
             f"a {a['attribution_window_seconds']} s attribution window, {a['live_spans']} spans of live traffic "
             f"after the first model serves (the first and last, partial, left out of the totals), the hot ad "
             f"{a['hot_after_spans']} spans in, the server exploring "
             f"{', '.join(sorted({str(r.get('exploration_rate', '?')) for r in result['runs'].values()}))} of its rank "
             f"orders (`serve.exploration_rate`). Seed {a['seed']}. Command: `{result['command']}`.", "",
             "| regime | cycles | served CTR | expected CTR | best order | random order | share of best gain | "
             "hot ad shown/candidate | spans to hot ad shown >= 50 % | click freshness median s | failed requests |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        s = run["summary"]
        lines.append(f"| {name} | {s['cycles']} | {_f(s['served_ctr'])} | {_f(s['expected_ctr'])} | "
                     f"{_f(s['oracle_ctr'])} | {_f(s['random_ctr'])} | {_f(s['expected_share_of_oracle_gain'], '.2f')} | "
                     f"{s['hot_shown']}/{s['hot_candidates']} | "
                     f"{'never' if s['hot_spans_to_half_shown'] is None else s['hot_spans_to_half_shown']} | "
                     f"{_f(s['click_freshness_median_s'], '.1f')} | {s['failed']} of {s['requests']} |")
    lines += ["", f"Click-to-serving freshness target: span + window + 60 s = "
                  f"{a['span_seconds'] + a['attribution_window_seconds'] + 60} s.", ""]
    lines += [f"* {f}" for f in result["findings"]]
    lines += ["", f"![served CTR and the hot ad per regime](results/{a.get('name', 'closed_loop')}.png)", "", end]
    return "\n".join(lines)


def findings(result: dict) -> List[str]:
    runs = {name: run["summary"] for name, run in result["runs"].items()}
    out = []
    names = list(runs)
    if names and names[0] == "continuous":
        c = runs["continuous"]
        for other_name in names[1:]:
            other = runs[other_name]
            if c["expected_ctr"] and other["expected_ctr"]:
                out.append(f"Continuous against {other_name}: expected served CTR {c['expected_ctr']:.4f} against "
                           f"{other['expected_ctr']:.4f} ({(c['expected_ctr'] / other['expected_ctr'] - 1) * 100:+.1f} %); "
                           f"clicks per ad shown {_f(c['served_ctr'])} against {_f(other['served_ctr'])}.")
        fresh = c["click_freshness_median_s"]
        if fresh is not None:
            target = c["click_freshness_target_s"]
            out.append(f"Click-to-serving freshness, continuous: median {fresh:.1f} s against the target of {target} s: "
                       f"{'met' if fresh <= target else 'NOT met'}.")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--live-spans", type=int, default=12)
    p.add_argument("--span-seconds", type=int, default=20)
    p.add_argument("--history-minutes", type=int, default=3)
    p.add_argument("--requests-per-second", type=float, default=20.0)
    p.add_argument("--batch-every", type=int, default=4)
    p.add_argument("--hot-after-spans", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attribution-window-seconds", type=int, default=None,
                   help="the join's window (default: the population's, 10 s)")
    p.add_argument("--allowed-lateness-seconds", type=int, default=2,
                   help="the watermark's lag (2 s suits spans of seconds; the pipeline's default is 30 s)")
    p.add_argument("--regimes", default="continuous,batch,static",
                   help="which regimes to run, comma-separated: continuous, batch, static")
    p.add_argument("--name", default="closed_loop",
                   help="results under benchmarks/results/NAME.json/.png and the RESULTS.md section NAME")
    p.add_argument("--quick", action="store_true", help="write no results")
    p.add_argument("--regime", help=argparse.SUPPRESS)  # the child process: one regime
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from pipelines.population import PopulationConfig
    from pipelines.simulator import SimulatorConfig

    defaults = PopulationConfig(world=SimulatorConfig(), origin_ms=0)
    args.candidates, args.shown = defaults.candidates, defaults.shown
    if args.attribution_window_seconds is None:
        args.attribution_window_seconds = defaults.attribution_window_seconds
    if args.regime is not None:
        run = run_regime(args.home, int(args.regime), args)
        with open(args.out, "w") as f:
            json.dump(run, f)
        return 0
    result = {"date": datetime.date.today().isoformat(), "args": vars(args), "runs": {}, "machine": machine_info(),
              "command": "python benchmarks/closed_loop.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="driftline-closed-loop-") as work:
        for name, every in chosen_regimes(args).items():
            home, out = os.path.join(work, str(every)), os.path.join(work, f"{every}.json")
            log(f"{name}: starting (home {home})")
            cmd = [sys.executable, os.path.abspath(__file__), "--regime", str(every), "--home", home, "--out", out,
                   "--live-spans", str(args.live_spans), "--span-seconds", str(args.span_seconds),
                   "--history-minutes", str(args.history_minutes), "--requests-per-second",
                   str(args.requests_per_second), "--hot-after-spans", str(args.hot_after_spans),
                   "--seed", str(args.seed), "--attribution-window-seconds", str(args.attribution_window_seconds),
                   "--allowed-lateness-seconds", str(args.allowed_lateness_seconds)]
            subprocess.run(cmd, check=True, cwd=ROOT)
            with open(out) as f:
                run = json.load(f)
            run["summary"] = summarize(run, args)
            result["runs"][name] = run
            log(f"{name}: {json.dumps({k: v for k, v in run['summary'].items() if k != 'hot_show_rate_by_span'})}")
    result["findings"] = findings(result)
    for line in result["findings"]:
        log(line)
    if args.quick:
        return 0
    results_json = os.path.join(RESULTS_DIR, f"{args.name}.json")
    results_png = os.path.join(RESULTS_DIR, f"{args.name}.png")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(results_json, "w") as f:
        json.dump(result, f, indent=1)
    plot(result, results_png)
    replace_section(RESULTS_MD, section_name(args.name), section(result))
    log(f"wrote {results_json}, {results_png} and the RESULTS.md section {section_name(args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
