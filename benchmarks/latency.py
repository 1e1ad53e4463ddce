"""The LatencyValidator's load test on the default model, at length: request latency and throughput.

Requests of --candidates eval examples (default 1000, as in Caliper's search
ranking) replayed through the model's serving signature at every batch size,
for every number of concurrent clients, --seconds each; then the time of a
request split into parsing, the transform graph and the model (single-threaded
fastest calls). Everything is `components/latency_validator/loadtest.py`, the code
the validator runs in every cycle (which runs it for one second per batch size).

    .venv/bin/python benchmarks/latency.py [--home DIR] [--candidates 1000] \\
        [--batch-sizes 10 100 250 1000] [--concurrency 1 2 4] [--seconds 10] [--events-per-minute 1000]

Without --home, the default model is trained first: one cycle of the default
pipeline on three spans of the built-in stream (--events-per-minute) in a
temporary home, with the validator off in that cycle. With --home (e.g. a
`make demo` home), the newest model trained there is used. Either way the
model's transform graph and the eval split of the newest span it was trained
with are found through ML Metadata.

Writes benchmarks/results/latency.json and the `latency` section of
benchmarks/RESULTS.md (--out and --json elsewhere for a trial run).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402
from pipelines.report import format_table, quiet_tensorflow  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Contention:
    """CPU the rest of the machine used while a measurement ran: how contended its latencies are."""

    @staticmethod
    def _machine_busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def __enter__(self) -> "Contention":
        self._busy0, self._own0, self._t0 = self._machine_busy(), self._own(), time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self._t0
        own = self._own() - self._own0
        others = max(0.0, self._machine_busy() - self._busy0 - own)
        self.own_cpu_share = own / (wall * (os.cpu_count() or 1))
        self.others_cpu_share = others / (wall * (os.cpu_count() or 1))


# -- the model, its transform graph and eval data, from ML Metadata ---------------------------------


def trainer_inputs(store, model_id: int) -> Dict[str, List[Any]]:
    """{input key: [Artifact]} of the execution that produced `model_id`."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    [out] = [e for e in store.get_events_by_artifact_ids([model_id]) if e.type == pb.Event.OUTPUT]
    events = [e for e in store.get_events_by_execution_ids([out.execution_id]) if e.type == pb.Event.INPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    result: Dict[str, List[Any]] = {}
    for e in events:
        # An artifact given to two inputs is one event with both keys in its path.
        for key in {step.key for step in e.path.steps if step.HasField("key")}:
            result.setdefault(key, []).append(artifacts[e.artifact_id])
    return result


def model_under_test(home: str) -> Dict[str, Any]:
    """The newest Model of a home, with its serving SavedModel, transform graph and newest span's eval split."""
    from pipelines.metadata import open_store, prop

    path = os.path.join(home, "metadata.sqlite")
    if not os.path.isfile(path):
        raise SystemExit(f"no ML Metadata at {path}: run a pipeline in that home first (e.g. `make demo`)")
    store = open_store(path)
    models = store.get_artifacts_by_type("Model")
    if not models:
        raise SystemExit(f"no Model in {path}: nothing was trained there yet")
    model = max(models, key=lambda a: a.id)
    inputs = trainer_inputs(store, model.id)
    newest = max(inputs["examples"], key=lambda a: (prop(a, "span"), a.id))
    return {"model_id": model.id, "model_dir": os.path.join(model.uri, "Format-Serving"),
            "transform_graph": inputs["transform_graph"][0].uri, "span": prop(newest, "span"),
            "eval_pattern": os.path.join(newest.uri, "Split-eval", "*"), "eval_count": prop(newest, "eval_count"),
            "run_fn": prop(model, "run_fn"), "start": prop(model, "start")}


def train_default_model(home: str, events_per_minute: int) -> None:
    """One cycle of the default pipeline on three spans of the built-in stream, the validator off."""
    from pipelines.config import LatencyConfig, default_config
    from pipelines.local_runner import run_cycle
    from pipelines.simulator import SimulatorConfig, simulate

    config = default_config(home).replace(latency=LatencyConfig(enabled=False))
    simulate(config.source.log_dir, SimulatorConfig(minutes=32, events_per_minute=events_per_minute, seed=7))
    report = run_cycle(config)
    log(f"trained model {report.model_id} ({report.start}) on spans {report.spans} in {report.wall_seconds:.0f} s")


# -- the measurement ----------------------------------------------------------------------------


def measure(subject: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    from components.event_schema import ad_click_schema
    from components.latency_validator import loadtest
    from pipelines.config import LatencyConfig

    label = ad_click_schema().label_field
    examples = loadtest.eval_examples(subject["eval_pattern"], label, limit=args.candidates * args.distinct_requests)
    score = loadtest.load_serving_fn(subject["model_dir"])
    stage_fns = loadtest.transform_stage_fns(subject["transform_graph"], label)
    runs = []
    for clients in args.concurrency:
        config = LatencyConfig(candidates_per_request=args.candidates, batch_sizes=tuple(args.batch_sizes),
                               concurrency=clients, seconds_per_batch_size=args.seconds,
                               distinct_requests=args.distinct_requests)
        config.validate()
        log(f"{clients} client(s): batch sizes {list(args.batch_sizes)}, {args.seconds:g} s each")
        with Contention() as meter:
            profile = loadtest.run_profile(score, examples, config)
        verdict = loadtest.decide(profile, LatencyConfig().slo_p99_ms)
        runs.append({"concurrency": clients, "profile": profile.to_dict(), "verdict": verdict.reason,
                     "own_cpu_share": round(meter.own_cpu_share, 3),
                     "others_cpu_share": round(meter.others_cpu_share, 3)})
        for r in profile.by_batch_size:
            log(f"  batch {r.batch_size}: p50 {r.p50_ms:.2f} / p99 {r.p99_ms:.2f} ms, "
                f"{r.requests_per_second:.1f} requests/s ({r.requests} requests)")
    requests = loadtest.build_requests(examples, args.candidates, 1)
    with Contention() as meter:
        stages = loadtest.time_stages(score, stage_fns, requests[0], args.stage_repeats)
    return {"runs": runs, "stages": stages.to_dict(), "stages_others_cpu_share": round(meter.others_cpu_share, 3),
            "eval_examples": len(examples)}


# -- the report ---------------------------------------------------------------------------------


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def headline(report: Dict[str, Any], clients: int) -> Optional[Dict[str, Any]]:
    """The lowest-p99 batch size at `clients` concurrent clients (the validator's choice), or None."""
    run = next((r for r in report["measured"]["runs"] if r["concurrency"] == clients), None)
    if run is None or run["profile"]["best_batch_size"] is None:
        return None
    best = next(b for b in run["profile"]["by_batch_size"] if b["batch_size"] == run["profile"]["best_batch_size"])
    return {**best, "concurrency": clients, "others_cpu_share": run["others_cpu_share"]}


def render(report: Dict[str, Any], command: str) -> str:
    from pipelines.config import LatencyConfig

    m, s, c = report["machine"], report["measured"]["stages"], report["candidates"]
    rows = []
    for run in report["measured"]["runs"]:
        for b in run["profile"]["by_batch_size"]:
            rows.append((run["concurrency"], b["batch_size"], b["calls_per_request"], b["requests"], _ms(b["p50_ms"]),
                         _ms(b["p95_ms"]), _ms(b["p99_ms"]), _ms(b["max_ms"]), f"{b['requests_per_second']:.1f}",
                         f"{b['candidates_per_second']:.0f}", f"{run['others_cpu_share']:.0%}"))
    table = format_table(("clients", "batch", "calls/req", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms",
                          "requests/s", "candidates/s", "others' CPU"), rows)
    default = LatencyConfig()
    lines = []
    for clients in sorted({1, default.concurrency} & set(r["concurrency"] for r in report["measured"]["runs"])):
        h = headline(report, clients)
        if h is not None:
            lines.append(f"- {clients} client{'s' if clients != 1 else ''}: **p99 {h['p99_ms']:.1f} ms** "
                         f"(p50 {h['p50_ms']:.1f} ms) for {c} candidates at batch size {h['batch_size']}, "
                         f"{h['requests_per_second']:.0f} requests/s = {h['candidates_per_second']:,.0f} candidates/s")
    subject = report["subject"]
    return f"""## LatencyValidator: the default model under load

* Command: `{command}`
* Date: {report['date']}; {m['nproc']} cores ({m['cpu_model']}), TensorFlow {m['tensorflow']}
* Model {subject['model_id']}: `{subject['run_fn']}`, {subject['start']} start; {report['model_source']}
* Requests: **{c} candidates** each, tf.Examples of span {subject['span']}'s eval split without the label
  ({report['measured']['eval_examples']} distinct examples cut into {report['distinct_requests']} requests),
  replayed for {report['seconds']:g} s per batch size and client count

The model is served in process from its SavedModel through `serving_default`, by the validator's own code
(`components/latency_validator/loadtest.py`). A request's latency runs from its first call to the last call's
output; its calls (`calls/req` of `batch` candidates) run one after another. Network, gRPC and request
decoding of a real server are not included. *others' CPU*: the share of the machine that other processes used
meanwhile (well above 0 %: the latencies are contended).

The default model's p99 for {c} candidates on this machine (at the batch size with the lowest p99, as the
validator chooses):

{chr(10).join(lines) or '- (no run at 1 or the default client count)'}

The validator's default SLO is p99 <= {default.slo_p99_ms:g} ms (`LatencyConfig.slo_p99_ms`).

```
{table}
```

Where one request's time goes (the fastest of {s['repeats']} single-threaded calls of each stage on one
{c}-candidate request; the stages are timed apart, so the split is an estimate):

- parsing the tf.Examples: {s['parse_ms']:.2f} ms ({s['parse_share']:.0%})
- the transform graph: {max(0.0, s['parse_transform_ms'] - s['parse_ms']):.2f} ms ({s['transform_share']:.0%})
- the model's layers: {max(0.0, s['serving_ms'] - s['parse_transform_ms']):.2f} ms ({s['model_share']:.0%})
- the whole serving signature: {s['serving_ms']:.2f} ms
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="a pipeline home whose newest model to test (default: train one)")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 100, 250, 1000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=10.0, help="per batch size and client count")
    parser.add_argument("--distinct-requests", type=int, default=16)
    parser.add_argument("--stage-repeats", type=int, default=50)
    parser.add_argument("--events-per-minute", type=int, default=1000, help="for training, without --home")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--json", default=os.path.join(HERE, "results", "latency.json"))
    args = parser.parse_args(argv)
    quiet_tensorflow()
    import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

    home, temporary = args.home, args.home is None
    if temporary:
        home = tempfile.mkdtemp(prefix="driftline-latency-bench-")
        log(f"training the default model in {home}")
        train_default_model(home, args.events_per_minute)
    subject = model_under_test(home)
    log(f"model {subject['model_id']}: {subject['model_dir']}")
    measured = measure(subject, args)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(),
        "candidates": args.candidates, "batch_sizes": args.batch_sizes, "concurrency": args.concurrency,
        "seconds": args.seconds, "distinct_requests": args.distinct_requests,
        "model_source": (f"trained for this run: one default cycle on 3 spans at {args.events_per_minute:,} "
                         "events/minute" if temporary else f"the newest model of {args.home}"),
        "subject": {k: v for k, v in subject.items() if k not in ("model_dir", "transform_graph", "eval_pattern")},
        "measured": measured,
    }
    for clients in (1, 2):
        h = headline(report, clients)
        report[f"p99_ms_{clients}_client{'s' if clients != 1 else ''}"] = h["p99_ms"] if h else None
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    command = " ".join([".venv/bin/python", "benchmarks/latency.py"] + list(sys.argv[1:] if argv is None else argv))
    start, end = marks("latency")
    replace_section(args.out, "latency", f"{start}\n{render(report, command).rstrip()}\n{end}")
    print(render(report, command))
    log(f"wrote {args.out} and {args.json}")
    if temporary:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
