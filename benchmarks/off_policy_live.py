"""The gate's off-policy estimate on a real exploring server's log, against the CTR the model then realizes.

Two real models on one written history of the simulated population (pipelines/population.py): **A**, the
pipeline's first model (trained on the history), and **B**, trained by a second pipeline on the same history
with every label inverted (it ranks the ads the users click least first). A real `driftline serve` process
serves A with the epsilon-greedy ranking policy (`serve.exploration_rate` = --epsilon) while the population
ranks through it for --phase-seconds; then B is pushed (version 2) and serves the same way for as long.

From phase A's impressions log alone (its propensities, and the labels the join's rule gives: a click within
the attribution window), `components/evaluator/off_policy.py` estimates the CTR per shown slot of B's greedy
top k (SNIPS and DR, percentile bootstrap interval over requests, as the gate does); B's **realized** CTR is
then measured in phase B on its greedy (not explored) requests. The same the other way round (A's CTR
estimated from phase B's log, against A's realized greedy CTR in phase A), and each model on its own log.

The world drifts between the two phases (they are minutes apart), so the realized CTRs are not the same
moment's: the error reported includes that, as a gate's would.

    .venv/bin/python benchmarks/off_policy_live.py                 # ~10 min; writes RESULTS.md's section
    .venv/bin/python benchmarks/off_policy_live.py --no-write
    .venv/bin/python benchmarks/off_policy_live.py --section-from benchmarks/results/off_policy_live.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402
from pipelines.population import read_events, write_inverted_history  # noqa: E402

SECTION = "off_policy_live"
RESULTS_MD = os.path.join(ROOT, "benchmarks", "RESULTS.md")
RESULTS_JSON = os.path.join(ROOT, "benchmarks", "results", "off_policy_live.json")
SPAN_SECONDS = 20
HISTORY_MINUTES = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def labels_of(impressions: List[dict], outcomes: List[dict], window_ms: int) -> Dict[str, float]:
    """The join's label per impression id: 1 with a click within the attribution window, else 0."""
    times = {e["event_id"]: e["event_time"] for e in impressions}
    clicked = {o["impression_id"] for o in outcomes if o.get("outcome_type") == "click"
               and o["impression_id"] in times and 0 <= o["event_time"] - times[o["impression_id"]] <= window_ms}
    return {iid: float(iid in clicked) for iid in times}


def realized(lines: List[dict], labels: Dict[str, float], k: int) -> Dict[str, Any]:
    """A phase's measured CTR per shown slot: on its greedy (not explored) requests, and over all."""
    shown = [e for e in lines if e["position"] < k]
    greedy = [e for e in shown if not e.get("explored")]
    return {"greedy_ctr": sum(labels[e["event_id"]] for e in greedy) / len(greedy), "greedy_shown": len(greedy),
            "served_ctr": sum(labels[e["event_id"]] for e in shown) / len(shown), "shown": len(shown),
            "requests": len({e["request_id"] for e in lines}),
            "explored_requests": len({e["request_id"] for e in lines if e.get("explored")})}


def estimate_on(lines: List[dict], labels: Dict[str, float], model_path: str, k: int) -> Dict[str, Any]:
    """The gate's estimator (off_policy.py) of the model's greedy top-k CTR from `lines` (one phase's log)."""
    from components.evaluator import off_policy
    from components.evaluator.off_policy_run import RawModel

    model = RawModel(model_path)
    selection = off_policy.select_requests(lines, labels, "event_id", "event_time", k, "position",
                                           required_features=sorted(model.inputs))
    scores = model.predict(selection.lines)
    result = off_policy.estimate(selection.logged, scores, confidence=0.95, bootstrap=1000, seed=0,
                                 predicted=scores)
    return {"requests": result.requests, "explored_requests": result.explored_requests,
            "matched": result.matched, "agreement": result.agreement,
            **{name: {"point": i.estimate, "lower": i.lower, "upper": i.upper} for name, i in result.estimates.items()}}


def run(epsilon: float, phase_seconds: float, requests_per_second: float) -> Dict[str, Any]:
    from components.blessing_pusher import serving
    from pipelines.closed_loop import _wait_healthy, closed_loop_config, start_server, stop_server
    from pipelines.config import LatencyConfig, MetadataConfig
    from pipelines.config_file import persist_config
    from pipelines.controller import run_cycles, single_instance
    from pipelines.metadata import open_store
    from pipelines.population import Population, PopulationConfig, write_history
    from pipelines.recovery import model_serving_dir
    from pipelines.serve.config import ServeConfig
    from pipelines.simulator import SimulatorConfig

    root = tempfile.mkdtemp(prefix="driftline-off-policy-live-")
    home, home_b = os.path.join(root, "home"), os.path.join(root, "inverted")
    origin_ms = (int(time.time() * 1000) // 60_000 - HISTORY_MINUTES) * 60_000
    population = PopulationConfig(world=SimulatorConfig(seed=0, events_per_minute=3000, hot_ad_minute=None),
                                  origin_ms=origin_ms, requests_per_second=requests_per_second, seed=0)
    config = closed_loop_config(home, population, SPAN_SECONDS).replace(
        latency=LatencyConfig(enabled=False), serve=ServeConfig(exploration_rate=epsilon)).validate()
    write_history(config.join.impressions.log_dir, config.join.outcomes.log_dir, population, HISTORY_MINUTES)
    persist_config(config)
    log("training model A on the history")
    with single_instance(home):
        [a] = run_cycles(config, 1)
    config_b = closed_loop_config(home_b, population, SPAN_SECONDS).replace(
        pipeline_name="inverted", latency=LatencyConfig(enabled=False),
        metadata=MetadataConfig(path=config.metadata_path)).validate()
    write_inverted_history(config_b.join.impressions.log_dir, config_b.join.outcomes.log_dir, population,
                           HISTORY_MINUTES)
    log("training model B on the inverted history")
    with single_instance(home_b):
        [b] = run_cycles(config_b, 1)
    store = open_store(config.metadata_connection)
    path = {name: model_serving_dir(store.get_artifacts_by_id([m.model_id])[0].uri) for name, m in (("A", a), ("B", b))}

    server, url, server_log = start_server(home)
    users = None
    try:
        _wait_healthy(url, server, server_log, timeout_s=180)
        users = Population(url, config.pipeline_name, config.join.outcomes.log_dir, population,
                           SPAN_SECONDS * 1000).start()
        log(f"phase A: model A serves, epsilon {epsilon}, {phase_seconds:.0f} s")
        time.sleep(phase_seconds)
        assert serving.push(path["B"], config.serving_dir).version == 2
        log(f"phase B: model B pushed (version 2), {phase_seconds:.0f} s")
        time.sleep(phase_seconds)
    finally:
        tally = users.stop() if users is not None else None
        stop_server(server)
    lines = [e for e in read_events(config.join.impressions.log_dir) if e.get("request_id") != "history"]
    labels = labels_of(lines, read_events(config.join.outcomes.log_dir), population.attribution_window_seconds * 1000)
    k = population.shown
    phase = {"A": [e for e in lines if e["model_version"] == 1], "B": [e for e in lines if e["model_version"] == 2]}
    result: Dict[str, Any] = {"epsilon": epsilon, "phase_seconds": phase_seconds, "k": k,
                              "candidates": population.candidates, "requests_per_second": requests_per_second,
                              "failed_requests": tally.failed if tally is not None else None,
                              "realized": {m: realized(phase[m], labels, k) for m in ("A", "B")}, "estimates": {}}
    for target in ("A", "B"):
        for logged in ("A", "B"):
            log(f"estimating model {target}'s CTR from phase {logged}'s log")
            result["estimates"][f"{target}_from_{logged}"] = estimate_on(phase[logged], labels, path[target], k)
    return result


def section(r: Dict[str, Any], when: str, machine: Dict[str, Any]) -> str:
    start, end = marks(SECTION)
    rows = []
    for key, e in r["estimates"].items():
        target, logged = key.split("_from_")
        truth = r["realized"][target]["greedy_ctr"]
        for name in ("snips", "dr"):
            if name in e and None not in (e[name]["point"], e[name]["lower"], e[name]["upper"]):
                i = e[name]
                rows.append(f"| {target} | {logged} | {name.upper()} | {i['point']:.4f} [{i['lower']:.4f}, "
                            f"{i['upper']:.4f}] | {truth:.4f} | {i['point'] - truth:+.4f} | "
                            f"{'yes' if i['lower'] <= truth <= i['upper'] else 'no'} | {e['matched']} |")
    real = r["realized"]
    return "\n".join([
        start, "## Off-policy estimate on a real exploring server (`benchmarks/off_policy_live.py`)", "",
        f"Run {when} on {machine.get('nproc', '?')} shared cores. A real `driftline serve` with "
        f"`serve.exploration_rate` {r['epsilon']} (top {r['k']} of {r['candidates']} shown, "
        f"{r['requests_per_second']:g} requests/s): model A (trained on the history) served {r['phase_seconds']:.0f} s, "
        f"then model B (trained on inverted labels) {r['phase_seconds']:.0f} s. Each model's greedy top-{r['k']} CTR "
        "per shown slot estimated by the gate's estimator (off_policy.py; 95 % one-sided bootstrap bounds) from one "
        "phase's log, against the greedy CTR the model realized in its own phase (the world drifts between the "
        "phases: that is in the error).", "",
        f"Realized: A greedy {real['A']['greedy_ctr']:.4f} over {real['A']['greedy_shown']} shown "
        f"(served, exploration included, {real['A']['served_ctr']:.4f}; {real['A']['explored_requests']} of "
        f"{real['A']['requests']} requests explored); B greedy {real['B']['greedy_ctr']:.4f} over "
        f"{real['B']['greedy_shown']} shown (served {real['B']['served_ctr']:.4f}; {real['B']['explored_requests']} of "
        f"{real['B']['requests']} explored). Failed requests: {r['failed_requests']}.", "",
        "`covered`: the realized CTR lies between the two bounds (each one-sided 95 %: a 90 % interval). "
        "`matched slots`: shown slots where the estimated model's top k and the log's shown set agree (a model on "
        "its own log matches its greedy requests; another model only the explored requests that happened to "
        "show its picks). DR uses the model's own predicted click probability as its reward model and is not "
        "clipped to [0, 1].", "",
        "| model | from phase's log | estimator | estimate [bounds] | realized | error | covered | matched slots |",
        "|---|---|---|---|---|---|---|---|", *rows, "", end])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epsilon", type=float, default=0.2)
    p.add_argument("--phase-seconds", type=float, default=120.0)
    p.add_argument("--requests-per-second", type=float, default=15.0)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--section-from", metavar="JSON", help="only rewrite RESULTS.md's section from a saved result")
    args = p.parse_args(argv)
    if args.section_from:
        with open(args.section_from) as f:
            saved = json.load(f)
        replace_section(RESULTS_MD, SECTION, section(saved, saved["when"], saved["machine"]))
        return 0
    started = time.monotonic()
    r = run(args.epsilon, args.phase_seconds, args.requests_per_second)
    r["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(r, indent=2, sort_keys=True))
    if not args.no_write:
        r["when"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        r["machine"] = machine_info()
        os.makedirs(os.path.dirname(RESULTS_JSON), exist_ok=True)
        with open(RESULTS_JSON, "w") as f:
            json.dump(r, f, indent=2, sort_keys=True)
        replace_section(RESULTS_MD, SECTION, section(r, r["when"], r["machine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
