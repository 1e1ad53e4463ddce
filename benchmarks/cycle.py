"""Per-cycle wall time, freshness and orchestration overhead of the demo's continuous pipeline.

Runs what `make demo` runs (the built-in stream replayed one span at a time,
LocalDagRunner + DirectRunner + SQLite MLMD, one poisoned span), then reads
every execution's start and end from ML Metadata. A cycle's work is ingest
(the ExampleGen's Beam job), training (run_fn) and evaluation (the TFMA
executor); everything else in its wall time is orchestration overhead: TFX
launching and publishing, Beam start-up, MLMD, Transform's graph export,
resolvers.

    .venv/bin/python benchmarks/cycle.py [--cycles 8] [--events-per-minute 1000]

Writes benchmarks/results/cycle.json, benchmarks/results/cycle.png and the
`cycle` section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402
from pipelines.report import format_table, quiet_tensorflow  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def component_seconds(store, pipeline_name: str, run_context) -> dict:
    """Wall seconds of each node's execution in one run, from MLMD timestamps."""
    from pipelines.metadata import node_of_execution

    out = {}
    for execution in store.get_executions_by_context(run_context.id):
        node = node_of_execution(store, execution.id, pipeline_name)
        if node:
            out[node] = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--events-per-minute", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args(argv)
    quiet_tensorflow()
    from pipelines import pipeline as p
    from pipelines.demo import cycle_table, run_demo
    from pipelines.metadata import open_store, prop

    home = tempfile.mkdtemp(prefix="driftline-cycle-bench-")
    started = time.monotonic()
    rows = run_demo(home, cycles=args.cycles, events_per_minute=args.events_per_minute)
    total = time.monotonic() - started
    print(cycle_table(rows))

    store = open_store(os.path.join(home, "metadata.sqlite"))
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.id)
    models = {m.id: m for m in store.get_artifacts_by_type("Model")}
    per_cycle = []
    for row, run_ctx in zip(rows, runs):
        seconds = component_seconds(store, "driftline", run_ctx)
        r = row.report
        # Every span of one ingest run carries that run's ingest time.
        ingest = max([prop(a, "ingest_wall_seconds", 0.0) for a in store.get_artifacts_by_context(run_ctx.id)
                      if "/StreamingExampleGen/" in a.uri and prop(a, "span") in r.spans], default=0.0)
        train = prop(models[r.model_id], "train_wall_seconds", 0.0) if r.model_id in models else 0.0
        evaluate = seconds.get(p.EVALUATOR_ID, 0.0)
        work = ingest + train + evaluate
        per_cycle.append({
            "cycle": row.cycle, "spans": r.spans, "events": r.events, "start": r.start, "blessed": r.blessed,
            "pushed_version": r.pushed_version, "wall_s": r.wall_seconds, "freshness_s": row.freshness_s,
            "ingest_s": round(ingest, 2), "train_s": round(train, 2), "evaluate_s": round(evaluate, 2),
            "overhead_s": round(r.wall_seconds - work, 2),
            "overhead_share": round((r.wall_seconds - work) / r.wall_seconds, 3),
            "components_s": {k: round(v, 2) for k, v in sorted(seconds.items())},
        })
        print(f"cycle {row.cycle}: {json.dumps(per_cycle[-1]['components_s'])}", file=sys.stderr)
    steady = [c for c in per_cycle if c["cycle"] > 1]
    fresh = [c["freshness_s"] for c in per_cycle if c["freshness_s"] is not None]
    summary = {
        "cycles": args.cycles, "events_per_minute": args.events_per_minute,
        "median_cycle_s": statistics.median(c["wall_s"] for c in steady),
        "median_freshness_s": statistics.median(fresh) if fresh else None,
        "max_freshness_s": max(fresh) if fresh else None,
        "median_overhead_share": statistics.median(c["overhead_share"] for c in steady),
        "total_s": round(total, 1), "per_cycle": per_cycle,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
    }
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "cycle.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(per_cycle, os.path.join(HERE, "results", "cycle.png"))

    table = format_table(
        ("cycle", "events", "start", "gate", "pushed", "wall s", "fresh s", "ingest s", "train s", "evaluate s",
         "overhead s", "overhead"),
        [(c["cycle"], c["events"], c["start"] or "-",
          "-" if c["blessed"] is None else ("blessed" if c["blessed"] else "rejected"), c["pushed_version"] or "-",
          f"{c['wall_s']:.1f}", "-" if c["freshness_s"] is None else f"{c['freshness_s']:.0f}",
          f"{c['ingest_s']:.1f}", f"{c['train_s']:.1f}", f"{c['evaluate_s']:.1f}", f"{c['overhead_s']:.1f}",
          f"{100 * c['overhead_share']:.0f}%") for c in per_cycle])
    components = sorted({k for c in per_cycle for k in c["components_s"]})
    comp_table = format_table(["component"] + [f"median s (cycles 2-{args.cycles})"],
                              [(k, f"{statistics.median(c['components_s'].get(k, 0.0) for c in steady):.1f}")
                               for k in components])
    body = f"""## Continuous cycle: wall time, freshness, overhead

`{' '.join(['.venv/bin/python', 'benchmarks/cycle.py'] + (argv or sys.argv[1:]))}` on {summary['date']},
{summary['machine']['nproc']} cores ({summary['machine']['cpu_model']}). What `make demo` runs: the built-in stream
replayed one 10-minute span per cycle ({args.events_per_minute * 10:,} events a span; cycle 1 starts with three
spans), TFX LocalDagRunner, Beam DirectRunner, SQLite MLMD, a fresh process (imports counted in cycle 1 only as
part of the run, not in these cycle times). Cycle 5's span has every label flipped.

- median cycle wall time (cycles 2-{args.cycles}): **{summary['median_cycle_s']:.1f} s**
- median freshness: **{summary['median_freshness_s']:.0f} s**, worst {summary['max_freshness_s']:.0f} s
  (from the span's closing events landing in the log to its model serving; target: under 120 s per 10-minute span)
- median share of a cycle that is orchestration overhead rather than ingest, train and evaluate:
  **{100 * summary['median_overhead_share']:.0f} %**

```
{table}
```

Where a steady cycle's time goes, per TFX component (execution start to publish, from MLMD):

```
{comp_table}
```

![cycle time](results/cycle.png)
"""
    start, end = marks("cycle")
    replace_section(args.out, "cycle", f"{start}\n{body.rstrip()}\n{end}")
    print(f"wrote {args.out} and benchmarks/results/cycle.json", file=sys.stderr)
    shutil.rmtree(home, ignore_errors=True)
    return 0


def plot(per_cycle, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles = [c["cycle"] for c in per_cycle]
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = [0.0] * len(cycles)
    for key, label in (("ingest_s", "ingest"), ("train_s", "train"), ("evaluate_s", "evaluate (TFMA)"),
                       ("overhead_s", "orchestration overhead")):
        values = [max(c[key], 0.0) for c in per_cycle]
        ax.bar(cycles, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    fresh = [(c["cycle"], c["freshness_s"]) for c in per_cycle if c["freshness_s"] is not None]
    if fresh:
        ax.plot(*zip(*fresh), "k.-", label="freshness")
    ax.set_xlabel("cycle")
    ax.set_ylabel("seconds")
    ax.set_title("driftline cycle time by part, and freshness")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
