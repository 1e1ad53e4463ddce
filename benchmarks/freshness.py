"""Freshness, cycle time, cost and next-span quality: driftline continuous vs a stock TFX cron pipeline vs River.

One invocation runs, for each size (events per 10-minute span), on the same
simulated stream (``pipelines/simulator.py``, seed 0: the drifting ad-click
world, a hot ad from minute 60) and one after another so that they never share
the CPU:

* **driftline continuous**: ``pipelines.controller.run_continuous``, what
  ``driftline run --continuous`` runs, in one long-lived worker process. The
  stream is replayed span by span: before cycle 1 the log receives span 1 and
  enough of span 2 to move the watermark past span 1's end (allowed lateness
  included); after each cycle, in the controller's own loop, the next ten
  minutes. So every cycle has exactly one newly closed span, as on a live
  stream, and the controller finds it on its next look.
* **River** (``river==0.19.0``; one-hot ids, hour and device, standard-scaled
  price), learning every event once, one at a time, in log order, span after
  span, each span scored before it is learned (a worker process): logistic
  regression with plain SGD (the first peer), with AdaGrad at learning rates
  0.01-5.0 (past its peak), and a factorization machine with AdaGrad at 0.05-2.0; the best by mean next-span AUC is the
  peer, the others' figures are reported beside it.
* **stock TFX, stateless** and **stock TFX, stateful**: ``benchmarks/stock_tfx.py``,
  public TFX 1.16 components over a CSV export of the same events, a fresh
  process per cycle as cron starts one. Stateless retrains on all spans so far;
  stateful trains span k from the latest blessed model (``base_model``).

Cycle k handles span k (k = 1..N). Its model is scored on span k+1: every
valid event whose event time falls in span k+1 (later than anything any
regime trained on in cycle k), encoded as the same serialized ``tf.Example``\\ s
for both TFX regimes and driftline and fed to River as dicts; exact rank AUC
(``benchmarks/cost.py``). The headline scores the model **serving** after
cycle k (the newest pushed one: a rejected candidate leaves the previous model
serving); the candidate of cycle k is scored too. The simulator's true click
probability gives the ceiling. Steady state = cycles 2..N.

Measured per cycle:

* wall and CPU seconds. driftline: from the moment the span's closing events
  are in the log to the controller's report of the cycle (its ``due`` check,
  the TFX run, the report), ``time.process_time`` of the controller process
  (every thread: Beam runs in-process). ``driftline_cycle_s`` is the TFX run's
  wall time (``CycleReport.wall_seconds``, as benchmarks/cycle.py). Stock:
  the whole fresh process (imports, pipeline, exit) from outside, CPU by
  ``getrusage(RUSAGE_CHILDREN)`` deltas. River: ``learn_one`` over the span.
* a per-component breakdown from ML Metadata (execution create to last
  update), for driftline and both stock regimes.
* freshness, on a live stream's clock: a span's newest event is at its end, it
  closes ``allowed_lateness`` later, then the cycle runs. So freshness =
  allowed lateness + (the push − the moment the span's closing events landed in
  the log) for driftline, and allowed lateness + (the push − the cron process
  start) for stock, for a cycle whose model was blessed and pushed. A live
  controller also waits up to ``--poll-seconds`` (5 s by default) before it
  looks; the replay has no such wait, so the worst case adds it.
* non-training share (driftline): 1 − (StreamingExampleGen + WarmStartTrainer
  + Evaluator execution seconds) / cycle wall, from MLMD. The strict variant
  counts only the work inside them, as benchmarks/cycle.py does (the ingest
  Beam job, run_fn, the TFMA executor).
* controller RSS after each cycle.

    .venv/bin/python benchmarks/freshness.py                        # 8 spans at 10k, then at 100k
    .venv/bin/python benchmarks/freshness.py --sizes 10000 --stock-sizes 10000
    .venv/bin/python benchmarks/freshness.py --skip-stock --sizes 10000 100000 --memory-cycles 100 \
        --stock-from benchmarks/results/freshness.json   # driftline again; stock rows of the last run (same machine)
    .venv/bin/python benchmarks/freshness.py --quick                # smoke run; results under the work dir
    .venv/bin/python benchmarks/freshness.py --render-only          # section and plot again from the JSON

Writes benchmarks/results/freshness.json, benchmarks/results/freshness.png and
the ``freshness`` section of benchmarks/RESULTS.md (``--quick``: all three
under the work dir, the real ones untouched). Needs the ``bench`` extra
(``river``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.results_md import machine_info, marks, replace_section  # noqa: E402

HERE = os.path.join(ROOT, "benchmarks")
THIS = os.path.abspath(__file__)
SECTION = "freshness"
SPAN_MINUTES = 10
SPAN_MS = SPAN_MINUTES * 60_000
DEFAULT_SIZES = (10_000, 100_000)
DRIFTLINE, RIVER, STOCK_STATELESS, STOCK_STATEFUL = "driftline", "river", "stock_stateless", "stock_stateful"
REGIMES = (STOCK_STATELESS, STOCK_STATEFUL, RIVER, DRIFTLINE)
LABELS = {DRIFTLINE: "driftline continuous", RIVER: "River (best configuration)",
          STOCK_STATELESS: "stock TFX, stateless", STOCK_STATEFUL: "stock TFX, stateful"}
COLORS = {DRIFTLINE: "tab:blue", RIVER: "tab:green", STOCK_STATELESS: "tab:red", STOCK_STATEFUL: "tab:orange"}
# The issue's targets.
CYCLE_TARGET_S = 15.0
CYCLE_SPEEDUP_TARGET = 10.0
FRESHNESS_TARGET_S = 60.0
NONTRAINING_TARGET = 0.5
CPU_RATIO_TARGET = 5.0
CPU_PER_10K_TARGET_S = 1.0
MEMORY_CYCLES = 100
# RSS counts as flat when the second half of the steady cycles peaks at most this much above the first half.
RSS_FLAT_TOLERANCE = 0.05


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the stream ---------------------------------------------------------------------------------

def lead_minutes(allowed_lateness_s: int) -> int:
    """Whole minutes past a span's end that make its watermark pass: some event at least `lateness` later."""
    return math.ceil(allowed_lateness_s / 60) + 1


def replay_schedule(spans: int, allowed_lateness_s: int) -> List[int]:
    """Minutes of stream appended before each cycle; each one closes exactly one more span."""
    if not 0 <= allowed_lateness_s < (SPAN_MINUTES - 1) * 60:
        raise ValueError(f"allowed lateness must be within [0, {(SPAN_MINUTES - 1) * 60}) s for one span per cycle, "
                         f"got {allowed_lateness_s}")
    return [SPAN_MINUTES + lead_minutes(allowed_lateness_s)] + [SPAN_MINUTES] * (spans - 1)


def simulator_config(events_per_span: int, seed: int, minutes: float):
    from pipelines.simulator import SimulatorConfig

    if events_per_span % SPAN_MINUTES:
        raise ValueError(f"events per span must be a multiple of {SPAN_MINUTES}, got {events_per_span}")
    return SimulatorConfig(seed=seed, minutes=minutes, events_per_minute=events_per_span // SPAN_MINUTES)


def read_events(log_dir: str) -> List[Dict[str, Any]]:
    """Every valid event of a local event log, in log (arrival) order."""
    from components.event_log import SEGMENT_SUFFIX
    from components.event_schema import InvalidEvent, ad_click_schema

    schema = ad_click_schema()
    events = []
    for name in sorted(n for n in os.listdir(log_dir) if n.endswith(SEGMENT_SUFFIX)):
        with open(os.path.join(log_dir, name), "rb") as f:
            for line in f:
                try:
                    events.append(schema.parse(line))
                except InvalidEvent:
                    continue
    return events


def group_by_span(events: Iterable[Mapping[str, Any]], start_ms: int, span_ms: int = SPAN_MS) -> Dict[int, list]:
    """{k: events of span k}, span 1 starting at `start_ms`; each span keeps the events' order."""
    first = start_ms // span_ms
    out: Dict[int, list] = {}
    for e in events:
        out.setdefault(e["event_time"] // span_ms - first + 1, []).append(e)
    return out


def stream_difference(replayed: Iterable[Mapping[str, Any]], reference: Iterable[Mapping[str, Any]],
                      until_ms: int) -> int:
    """How many events differ between a replayed log and the reference stream's events before `until_ms`.

    Appending whole minutes continues the same world, so 0 is expected; only
    where late events sit in the log may differ.
    """
    key = lambda e: (e["event_id"], e["event_time"], e["user_id"], e["ad_id"], e["clicked"])  # noqa: E731
    a = {key(e) for e in replayed}
    b = {key(e) for e in reference if e["event_time"] < until_ms}
    return len(a ^ b)


# -- small statistics ---------------------------------------------------------------------------

def _values(rows: Sequence[Mapping[str, Any]], key: str, lo: int, hi: int) -> List[float]:
    return [r[key] for r in rows if lo <= r["span"] <= hi and r.get(key) is not None]


def median_over(rows, key, lo, hi) -> Optional[float]:
    v = _values(rows, key, lo, hi)
    return float(statistics.median(v)) if v else None


def mean_over(rows, key, lo, hi) -> Optional[float]:
    v = _values(rows, key, lo, hi)
    return float(sum(v) / len(v)) if v else None


def at_span(rows, key, span) -> Optional[float]:
    v = _values(rows, key, span, span)
    return v[0] if v else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b <= 0 else a / b


def _r(x: Optional[float], digits: int = 3) -> Optional[float]:
    return None if x is None else round(float(x), digits)


# -- workers (each its own process) -------------------------------------------------------------

def _run_worker(name: str, spec: Dict[str, Any], work: str) -> Dict[str, Any]:
    spec_path = os.path.join(work, f"{name}.spec.json")
    out_path = os.path.join(work, f"{name}.result.json")
    spec = dict(spec, out=out_path)
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, THIS, "--worker", name, "--spec", spec_path], env=_child_env(),
                          cwd=work)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"the {name} worker failed (exit {proc.returncode}); its spec: {spec_path}")
    with open(out_path) as f:
        result = json.load(f)
    result["process_wall_s"] = round(wall, 2)
    result["process_cpu_s"] = round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2)
    return result


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    # This checkout's code wins in every child, also under a shared editable install.
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def driftline_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The controller on a replayed stream: `run_continuous` appends the next span after each cycle's report."""
    import threading

    started = time.monotonic()
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    import psutil

    from pipelines import local_runner  # noqa: F401  (TFX: the controller's one-off start-up)
    from pipelines.config import default_config
    from pipelines.controller import run_continuous
    from pipelines.simulator import simulate

    startup_s = time.monotonic() - started
    home, log_dir = spec["home"], os.path.join(spec["home"], "events")
    kept_models = spec["home"].rstrip("/") + "_models"
    config = default_config(home, log_dir)
    config = config.replace(window=dataclasses.replace(
        config.window, allowed_lateness_seconds=spec["allowed_lateness_s"])).validate()
    schedule = replay_schedule(spec["spans"], spec["allowed_lateness_s"])
    sim = simulator_config(spec["events_per_span"], spec["seed"], schedule[0])
    process = psutil.Process()
    rows: List[Dict[str, Any]] = []
    mark: Dict[str, Any] = {}

    def append(i: int) -> None:
        summary = simulate(log_dir, dataclasses.replace(sim, minutes=schedule[i]), append=i > 0)
        mark.update(appended_at_ms=time.time_ns() // 1_000_000, wall=time.monotonic(), cpu=time.process_time(),
                    events_appended=summary.events_written)

    def emit(line: str) -> None:
        wall, cpu = time.monotonic(), time.process_time()
        report = json.loads(line)
        rss = process.memory_info().rss
        if spec.get("keep_models", True):
            keep_for_scoring(config, report.get("model_id"), kept_models)
        k = len(rows) + 1
        pushed = report.get("pushed_version") is not None
        replay_fresh = (report["pushed_at_ms"] - mark["appended_at_ms"]) / 1000.0 if pushed else None
        rows.append({
            "span": k, "run_id": report["run_id"], "emitted_spans": report["spans"], "events": report["events"],
            "events_appended": mark["events_appended"], "start": report.get("start"),
            "start_reason": report.get("start_reason"), "model_id": report.get("model_id"),
            "blessed": report.get("blessed"), "gate_reason": report.get("reason"), "pushed": pushed,
            "pushed_version": report.get("pushed_version"), "candidate_auc_gate": report.get("candidate_auc"),
            "wall_s": report["wall_seconds"], "controller_wall_s": round(wall - mark["wall"], 2),
            "cpu_s": round(cpu - mark["cpu"], 2),
            "freshness_replay_s": _r(replay_fresh, 2),
            "freshness_s": _r(spec["allowed_lateness_s"] + replay_fresh, 2) if pushed else None,
            "rss_mb": round(rss / 2 ** 20, 1),
            "peak_rss_mb": peak_rss_mb(),
        })
        r = rows[-1]
        print(f"[driftline] cycle {k}/{spec['spans']}: {r['start'] or 'no training'}, "
              f"{'pushed v' + str(r['pushed_version']) if pushed else 'not pushed (' + str(r['gate_reason']) + ')'}; "
              f"wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, fresh {r['freshness_s']} s, RSS {r['rss_mb']:.0f} MB",
              file=sys.stderr, flush=True)
        if k < spec["spans"]:
            append(k)

    append(0)
    run_continuous(config, poll_seconds=spec["poll_seconds"], max_cycles=spec["spans"], emit=emit,
                   say=lambda m: print(f"[driftline] {m}", file=sys.stderr, flush=True),
                   stop=threading.Event())
    _driftline_breakdown(config, rows, kept_models)
    return {"startup_s": round(startup_s, 2), "rows": rows}


def peak_rss_mb() -> float:
    """This process's peak resident memory, from VmHWM. Not ``ru_maxrss``: Linux keeps that across fork
    and exec, so a worker would report the benchmark parent's peak (2.3 GB after the 100k size's events)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def keep_for_scoring(config, model_id: Optional[int], kept_models: str) -> None:
    """Copies a cycle's model out of the home: the controller's retention deletes old models' payload
    (as `driftline run --continuous` does by default), and every cycle's model is scored after the run.
    Called after the cycle's report, outside its timing."""
    from components.warm_start_trainer.cycle import SERVING_DIR
    from pipelines import metadata as md

    if model_id is None:
        return
    (model,) = md.open_store(config.metadata_path).get_artifacts_by_id([model_id])
    shutil.copytree(os.path.join(model.uri, SERVING_DIR), os.path.join(kept_models, str(model_id), SERVING_DIR))


def _driftline_breakdown(config, rows: List[Dict[str, Any]], kept_models: str) -> None:
    """Per-component seconds and the serving model after each cycle, from ML Metadata."""
    from benchmarks.cycle import component_seconds
    from components.warm_start_trainer.cycle import SERVING_DIR
    from pipelines import metadata as md

    store = md.open_store(config.metadata_path)
    serving_dir = None
    for r in rows:
        run_ctx = store.get_context_by_type_and_name(md.PIPELINE_RUN_CONTEXT_TYPE, r["run_id"])
        seconds = component_seconds(store, config.pipeline_name, run_ctx)
        outputs = md.run_outputs(store, config.pipeline_name, run_ctx)
        examples = outputs.get(md.STREAMING_EXAMPLE_GEN_ID, {}).get("outputs", {}).get("examples", [])
        models = outputs.get(md.TRAINER_ID, {}).get("outputs", {}).get("model", [])
        ingest_work = max([md.prop(a, "ingest_wall_seconds", 0.0) for a in examples], default=0.0)
        train_work = md.prop(models[0], "train_wall_seconds", 0.0) if models else 0.0
        evaluate = seconds.get(md.EVALUATOR_ID, 0.0)
        work = sum(seconds.get(n, 0.0) for n in (md.STREAMING_EXAMPLE_GEN_ID, md.TRAINER_ID, md.EVALUATOR_ID))
        candidate = os.path.join(kept_models, str(models[0].id), SERVING_DIR) if models else None
        if r["pushed"] and candidate:
            serving_dir = candidate
        r.update({
            "components_s": {k: round(v, 2) for k, v in sorted(seconds.items())},
            "train_cpu_s": md.prop(models[0], "train_cpu_seconds") if models else None,
            "ingest_work_s": round(ingest_work, 2), "train_work_s": round(train_work, 2),
            "evaluate_s": round(evaluate, 2),
            "nontraining_share": _r(1.0 - work / r["wall_s"]) if r["wall_s"] else None,
            "nontraining_share_strict": _r(1.0 - (ingest_work + train_work + evaluate) / r["wall_s"])
            if r["wall_s"] else None,
            "candidate_dir": candidate, "serving_dir": serving_dir,
        })


RIVER_CATEGORICAL = ("user_id", "ad_id", "ad_category", "device", "hour_of_day")
RIVER_NUMERIC = ("price",)
# River's configurations, each learning every event of a span once, after scoring the span (the
# freshness driftline has): the one the benchmark used first (plain SGD at River's default 0.01),
# logistic regression with AdaGrad over a small learning-rate sweep, and a factorization machine
# (pairwise interactions of the one-hot ids, as the wide & deep model's crosses). The best one by
# mean next-span AUC is reported as the peer; the others' figures are kept beside it. Both sweeps go past
# their best rate, so the peak is inside them: logistic regression peaked at its top, 1.0, when that was
# the top, and the factorization machine at 0.5-1.0 (benchmarks/learning.py, both streams).
RIVER_LR_SGD = "lr_sgd_0.01"
RIVER_CONFIGS = (RIVER_LR_SGD, "lr_adagrad_0.01", "lr_adagrad_0.05", "lr_adagrad_0.1", "lr_adagrad_0.3", "lr_adagrad_1.0",
                 "lr_adagrad_2.0", "lr_adagrad_3.0", "lr_adagrad_5.0", "fm_0.05", "fm_0.2", "fm_0.5", "fm_1.0", "fm_2.0")


def river_features(event: Mapping[str, Any], categorical: Sequence[str] = RIVER_CATEGORICAL,
                   numeric: Sequence[str] = RIVER_NUMERIC) -> Dict[str, Any]:
    x: Dict[str, Any] = {k: str(event[k]) for k in categorical}
    for k in numeric:
        x[k] = float(event[k])
    return x


def river_model(config: str = RIVER_LR_SGD, categorical: Sequence[str] = RIVER_CATEGORICAL,
                numeric: Sequence[str] = RIVER_NUMERIC):
    from river import compose, facto, linear_model, optim, preprocessing

    kind, rate = config.rsplit("_", 1)
    lr = float(rate)
    # drop_zeros: otherwise every event carries a zero for every category seen so far, and learning slows
    # down as the vocabulary grows (13 CPU s per 10k events here instead of 1), with the same predictions.
    ids = compose.Select(*categorical) | preprocessing.OneHotEncoder(drop_zeros=True)
    features = compose.TransformerUnion(ids, compose.Select(*numeric) | preprocessing.StandardScaler()) \
        if numeric else ids
    if kind == "lr_sgd":
        learner = linear_model.LogisticRegression(optimizer=optim.SGD(lr))
    elif kind == "lr_adagrad":
        learner = linear_model.LogisticRegression(optimizer=optim.AdaGrad(lr))
    elif kind == "fm":
        learner = facto.FMClassifier(n_factors=8, weight_optimizer=optim.AdaGrad(lr),
                                     latent_optimizer=optim.AdaGrad(lr), seed=0)
    else:
        raise ValueError(f"unknown River configuration {config!r}; known: {RIVER_CONFIGS}")
    return features | learner


def river_peers(by_span: Mapping[int, Sequence[Mapping[str, Any]]], spans: int, label: str = "clicked",
                categorical: Sequence[str] = RIVER_CATEGORICAL, numeric: Sequence[str] = RIVER_NUMERIC,
                configs: Sequence[str] = RIVER_CONFIGS, tag: str = "river") -> Dict[str, List[Dict[str, Any]]]:
    """Prequential by span, per configuration: span k+1 is scored by the model that has learned spans
    1..k, then learned. {config: rows}, a row per span k with the AUC of its model on span k+1."""
    from pipelines.scoring import exact_auc, log_loss

    out: Dict[str, List[Dict[str, Any]]] = {}
    for config in configs:
        model = river_model(config, categorical, numeric)
        rows: List[Dict[str, Any]] = []
        for k in range(1, spans + 2):
            events = by_span.get(k, [])
            xs = [river_features(e, categorical, numeric) for e in events]
            if k >= 2:
                preds = [model.predict_proba_one(x).get(True, 0.0) for x in xs]
                labels = [int(e[label]) for e in events]
                rows[-1].update({"next_span_auc": exact_auc(labels, preds),
                                 "next_span_log_loss": log_loss(labels, preds), "next_span_examples": len(labels)})
            if k > spans:
                break
            t0, c0 = time.monotonic(), time.process_time()
            for x, e in zip(xs, events):
                model.learn_one(x, bool(e[label]))
            rows.append({"span": k, "events": len(events), "wall_s": round(time.monotonic() - t0, 3),
                         "cpu_s": round(time.process_time() - c0, 3)})
        out[config] = rows
        print(f"[{tag}] {config}: mean next-span AUC {best_mean_auc(rows):.4f}", file=sys.stderr, flush=True)
    return out


def best_mean_auc(rows: Sequence[Mapping[str, Any]], lo: int = 2, hi: int = 10 ** 9) -> float:
    """Mean next-span AUC of the cycles lo..hi (steady state: from cycle 2)."""
    values = [r["next_span_auc"] for r in rows if lo <= r["span"] <= hi and r.get("next_span_auc") is not None]
    return sum(values) / len(values) if values else float("nan")


def best_river(peers: Mapping[str, Sequence[Mapping[str, Any]]], lo: int = 2, hi: int = 10 ** 9) -> str:
    """The configuration with the highest mean next-span AUC over cycles lo..hi."""
    return max(peers, key=lambda c: best_mean_auc(peers[c], lo, hi))


def river_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Every River configuration over the stream; the best one's rows are the peer's."""
    by_span = group_by_span(read_events(spec["log_dir"]), spec["start_ms"])
    peers = river_peers(by_span, spec["spans"])
    best = best_river(peers)
    return {"rows": peers[best], "config": best,
            "configs": {c: {"next_span_auc": _r(best_mean_auc(rows), 4), "cpu_s": _r(median_over(rows, "cpu_s", 1,
                                                                                                   spec["spans"]))}
                        for c, rows in peers.items()}}


def score_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Scores every (SavedModel, span) job on that span's events; AUC as benchmarks/cost.py; plus the ceiling."""
    from pipelines.report import quiet_tensorflow

    quiet_tensorflow()
    import numpy as np
    import tensorflow as tf

    from pipelines.scoring import exact_auc, log_loss
    from components.event_schema import ad_click_schema
    from components.streaming_example_gen.example_codec import ExampleEncoder
    from pipelines.simulator import SimulatorConfig, click_probability

    by_span = group_by_span(read_events(spec["log_dir"]), spec["start_ms"])
    encoder = ExampleEncoder(ad_click_schema())
    sets: Dict[int, Any] = {}

    def eval_set(span: int):
        if span not in sets:
            events = by_span.get(span, [])
            sets[span] = ([encoder.encode(e) for e in events], np.array([int(e["clicked"]) for e in events]))
        return sets[span]

    sim = SimulatorConfig(**{k: v for k, v in spec["simulator"].items() if k in SimulatorConfig.__dataclass_fields__})
    oracle = {}
    for span in sorted({j["span"] for j in spec["jobs"]} | set(spec.get("oracle_spans", []))):
        _, labels = eval_set(span)
        oracle[str(span)] = exact_auc(labels, click_probability(sim, by_span.get(span, [])))
    scores: Dict[str, Dict[str, Any]] = {}
    by_model: Dict[str, List[int]] = {}
    for j in spec["jobs"]:
        by_model.setdefault(j["model_dir"], []).append(j["span"])
    for i, (model_dir, spans) in enumerate(sorted(by_model.items()), start=1):
        fn = tf.saved_model.load(model_dir).signatures["serving_default"]
        for span in sorted(set(spans)):
            serialized, labels = eval_set(span)
            preds = np.concatenate([fn(examples=tf.constant(serialized[b:b + 4096]))["probability"].numpy()[:, 0]
                                    for b in range(0, len(serialized), 4096)])
            scores[f"{model_dir}|{span}"] = {"auc": exact_auc(labels, preds), "log_loss": log_loss(labels, preds),
                                             "mean_prediction": float(preds.mean()), "examples": int(len(preds))}
        del fn
        print(f"[score] {i}/{len(by_model)} models", file=sys.stderr, flush=True)
    return {"scores": scores, "oracle_auc": oracle}


WORKERS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "driftline": driftline_worker, "river": river_worker, "score": score_worker}


# -- the stock pipeline, a fresh process per cycle ----------------------------------------------

def stock_hparams() -> Dict[str, Any]:
    """driftline's own training settings, so that the two train the same model the same way."""
    from pipelines.config import TrainerConfig

    t = TrainerConfig()
    return {"cold_epochs": t.cold_epochs, "warm_epochs": t.warm_epochs, "cold_learning_rate": t.cold_learning_rate,
            "warm_learning_rate": t.warm_learning_rate, "batch_size": t.batch_size,
            "embedding_dim": int(t.model["embedding_dim"]), "hidden_units": list(t.model["hidden_units"]),
            "seed": t.seed}


def run_stock(regime: str, spans: int, csv_root: str, home: str, allowed_lateness_s: int) -> Dict[str, Any]:
    from benchmarks import stock_tfx

    short = regime.split("_", 1)[1]
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home)
    hparams = json.dumps(stock_hparams(), sort_keys=True)
    rows: List[Dict[str, Any]] = []
    serving_dir = None
    for k in range(1, spans + 1):
        log_path = os.path.join(home, f"cycle-{k}.log")
        cmd = [sys.executable, os.path.join(HERE, "stock_tfx.py"), "cycle", "--regime", short, "--span", str(k),
               "--csv-root", csv_root, "--home", home, "--hparams", hparams]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started_ms, t0 = time.time_ns() // 1_000_000, time.monotonic()
        with open(log_path, "w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=_child_env(), cwd=home)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        row: Dict[str, Any] = {"span": k, "wall_s": round(wall, 2),
                               "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2),
                               "log": log_path}
        if proc.returncode != 0:
            row["error"] = f"exit {proc.returncode}; see {log_path}"
            log(f"{regime} cycle {k}/{spans}: FAILED ({row['error']})")
            rows.append(row)
            continue
        with open(log_path) as f:
            last = [line for line in f if line.startswith("{")]
        row.update(json.loads(last[-1]) if last else {})
        info = stock_tfx.read_cycle(home, short)
        row.update({k2: info[k2] for k2 in ("run_id", "components_s", "blessed", "pushed", "states")})
        row["candidate_dir"] = os.path.join(info["model_uri"], "Format-Serving") if info["model_uri"] else None
        if info["pushed"]:
            serving_dir = row["candidate_dir"]
            row["freshness_s"] = round(allowed_lateness_s + (info["pushed_at_ms"] - started_ms) / 1000.0, 2)
        row["serving_dir"] = serving_dir
        rows.append(row)
        log(f"{regime} cycle {k}/{spans}: wall {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s "
            f"(imports {row.get('import_s', '?')} s), {'pushed' if info['pushed'] else 'not pushed'}; "
            + ", ".join(f"{n} {s:.0f}" for n, s in row["components_s"].items() if s >= 1.0))
    return {"rows": rows}


# -- one size -----------------------------------------------------------------------------------

def run_size(size: int, args, work: str, with_stock: bool) -> Dict[str, Any]:
    from benchmarks import stock_tfx
    from pipelines.simulator import simulate

    n = args.spans
    size_dir = os.path.join(work, f"size-{size}")
    shutil.rmtree(size_dir, ignore_errors=True)
    os.makedirs(size_dir)
    lateness = args.allowed_lateness_seconds
    # Span N+1 scores cycle N; the reference log holds it whole, late events included.
    sim = simulator_config(size, args.seed, (n + 1) * SPAN_MINUTES + lead_minutes(lateness))
    ref_log = os.path.join(size_dir, "stream")
    t0 = time.monotonic()
    summary = simulate(ref_log, sim)
    by_span = group_by_span(read_events(ref_log), sim.start_ms)
    csv_root = os.path.join(size_dir, "csv")
    for k in range(1, n + 1):
        stock_tfx.export_span_csv(by_span.get(k, []), stock_tfx.span_csv_path(csv_root, k))
    log(f"size {size:,}: simulated {summary.events_written:,} events ({n + 1} spans + {lead_minutes(lateness)} min), "
        f"exported spans 1-{n} as CSV ({time.monotonic() - t0:.1f} s)")
    result: Dict[str, Any] = {
        "events_per_span": size, "spans": n, "simulator": dataclasses.asdict(sim),
        "span_events": {str(k): len(v) for k, v in sorted(by_span.items()) if k <= n + 1},
        "regimes": {}, "loadavg": {},
    }
    common = {"spans": n, "events_per_span": size, "seed": args.seed, "allowed_lateness_s": lateness,
              "start_ms": sim.start_ms, "log_dir": ref_log}

    result["loadavg"][DRIFTLINE] = round(os.getloadavg()[0], 2)
    log(f"size {size:,}: driftline continuous, {n} cycles in one controller process ...")
    driftline_home = os.path.join(size_dir, "driftline")
    result["regimes"][DRIFTLINE] = _run_worker("driftline", dict(common, home=driftline_home,
                                                                 poll_seconds=args.poll_seconds), size_dir)
    replayed_minutes = sum(replay_schedule(n, lateness))
    differ = stream_difference(read_events(os.path.join(driftline_home, "events")), read_events(ref_log),
                               sim.start_ms + replayed_minutes * 60_000)
    if differ:
        raise SystemExit(f"the stream replayed to driftline differs from the reference stream in {differ} events")
    log(f"size {size:,}: driftline's replayed log holds the reference stream's first {replayed_minutes} minutes")
    result["loadavg"][RIVER] = round(os.getloadavg()[0], 2)
    log(f"size {size:,}: River, {len(RIVER_CONFIGS)} configurations ...")
    result["regimes"][RIVER] = _run_worker("river", common, size_dir)
    reused = (reused_stock(args.stock_from, args.stock_from_report, size, result, lateness)
              if (args.stock_from and not with_stock) else None)
    if reused:
        result["regimes"].update(reused["regimes"])
        result["loadavg"].update(reused["loadavg"])
        result["stock_reused_from"] = reused["source"]
        log(f"size {size:,}: stock TFX rows reused from {args.stock_from} ({reused['source']['date']})")
    if with_stock:
        for regime in (STOCK_STATELESS, STOCK_STATEFUL):
            result["loadavg"][regime] = round(os.getloadavg()[0], 2)
            log(f"size {size:,}: {LABELS[regime]}, {n} cycles, a fresh process each ...")
            result["regimes"][regime] = run_stock(regime, n, csv_root, os.path.join(size_dir, regime), lateness)
            with open(os.path.join(size_dir, "regimes.partial.json"), "w") as f:
                json.dump(result, f, indent=1, default=str)  # for a post-mortem should a later step fail

    # Reused stock rows were scored by their own run, on this same stream.
    rescored = [DRIFTLINE] + ([] if reused else [STOCK_STATELESS, STOCK_STATEFUL])
    jobs = []
    for regime in rescored:
        for r in result["regimes"].get(regime, {}).get("rows", []):
            for key in ("serving_dir", "candidate_dir"):
                if r.get(key):
                    jobs.append({"model_dir": r[key], "span": r["span"] + 1})
    log(f"size {size:,}: scoring {len({j['model_dir'] for j in jobs})} models on the next span ...")
    scored = _run_worker("score", dict(common, jobs=jobs, simulator=dataclasses.asdict(sim),
                                       oracle_spans=list(range(2, n + 2))), size_dir)
    result["oracle_auc"] = {k: _r(v, 4) for k, v in scored["oracle_auc"].items()}
    for regime in rescored:
        for r in result["regimes"].get(regime, {}).get("rows", []):
            for key, out in (("serving_dir", "next_span_auc"), ("candidate_dir", "candidate_next_span_auc")):
                s = scored["scores"].get(f"{r.get(key)}|{r['span'] + 1}")
                r[out] = _r(s["auc"], 4) if s else None
                if out == "next_span_auc":
                    r["next_span_log_loss"] = _r(s["log_loss"], 4) if s else None
    for r in result["regimes"][RIVER]["rows"]:
        r["next_span_auc"] = _r(r.get("next_span_auc"), 4)
        r["candidate_next_span_auc"] = r["next_span_auc"]  # no gate: what River learned is what serves
    return result


def stock_code_digest() -> str:
    """A hash of the stock pipeline's code: reused stock rows must come from this same code."""
    import hashlib

    digest = hashlib.sha256()
    paths = [os.path.join(HERE, "stock_tfx.py")]
    module_dir = os.path.join(HERE, "stock_module")
    paths += sorted(os.path.join(module_dir, f) for f in os.listdir(module_dir) if f.endswith(".py"))
    for path in paths:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def reused_stock(path: str, old: Mapping[str, Any], size: int, result: Mapping[str, Any],
                 lateness: int) -> Optional[Dict[str, Any]]:
    """The stock regimes of an earlier run's JSON at `size`, when it ran them on this very stream.

    Stock TFX takes 45 minutes at 10k events a span and does not change when
    driftline does, so a driftline-only rerun may carry the last stock
    measurement along. Only rows of the same stream (simulator settings,
    spans, allowed lateness), the same stock code and the same kind of
    machine are reused; anything else stops the run with what differs.
    """
    res = old.get("sizes", {}).get(str(size))
    if not res or not all(regime in res.get("regimes", {}) for regime in (STOCK_STATELESS, STOCK_STATEFUL)):
        return None
    machine = {k: v for k, v in machine_info().items() if k in ("nproc", "cpu_model", "mem_gib")}
    differs = [name for name, a, b in (
        ("simulator", res.get("simulator"), result["simulator"]), ("spans", res.get("spans"), result["spans"]),
        ("allowed lateness", old.get("allowed_lateness_s"), lateness),
        ("machine (CPU count, CPU model, memory)",
         {k: v for k, v in old.get("machine", {}).items() if k in machine}, machine)) if a != b]
    old_digest = old.get("stock_code_digest")
    if old_digest is not None and old_digest != stock_code_digest():
        differs.append("stock code (benchmarks/stock_tfx.py, benchmarks/stock_module)")
    if differs:
        raise SystemExit(f"--stock-from {path}: its stock run at {size:,} events differs in {', '.join(differs)}; "
                         f"rerun stock (--stock-sizes {size}) instead")
    source = {"path": path, "date": old.get("date"), "command": old.get("command"),
              "stock_code_digest": old_digest}
    if res.get("stock_reused_from"):
        source = res["stock_reused_from"]  # reused already: name the run that measured them
    return {"regimes": {r: res["regimes"][r] for r in (STOCK_STATELESS, STOCK_STATEFUL)},
            "loadavg": {r: v for r, v in res.get("loadavg", {}).items() if r in (STOCK_STATELESS, STOCK_STATEFUL)},
            "source": source}


def run_memory(size: int, cycles: int, args, work: str) -> Dict[str, Any]:
    """driftline alone for `cycles` cycles at `size` events a span: the controller's RSS after each one."""
    run_dir = os.path.join(work, f"memory-{size}")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    log(f"memory: driftline continuous, {cycles} cycles of {size:,} events in one controller process ...")
    spec = {"spans": cycles, "events_per_span": size, "seed": args.seed,
            "allowed_lateness_s": args.allowed_lateness_seconds, "home": os.path.join(run_dir, "driftline"),
            "poll_seconds": args.poll_seconds, "keep_models": False}
    data = _run_worker("driftline", spec, run_dir)
    keep = ("span", "wall_s", "cpu_s", "rss_mb", "peak_rss_mb", "pushed", "error")
    return {"events_per_span": size, "cycles": cycles, "startup_s": data.get("startup_s"),
            "rows": [{k: r.get(k) for k in keep} for r in data["rows"]]}


# -- summaries, targets -------------------------------------------------------------------------

def summarize_size(result: Mapping[str, Any]) -> Dict[str, Any]:
    n = result["spans"]
    lo = 2 if n >= 2 else 1
    out: Dict[str, Any] = {"steady_spans": [lo, n]}
    for regime, data in result["regimes"].items():
        rows = [r for r in data["rows"] if not r.get("error")]
        s = {
            "cycle_s": _r(median_over(rows, "wall_s", lo, n), 2),
            "cpu_s": _r(median_over(rows, "cpu_s", lo, n), 2),
            "cpu_s_at_last_span": _r(at_span(rows, "cpu_s", n), 2),
            "next_span_auc": _r(mean_over(rows, "next_span_auc", lo, n), 4),
            "candidate_next_span_auc": _r(mean_over(rows, "candidate_next_span_auc", lo, n), 4),
            "scored_spans": len(_values(rows, "next_span_auc", lo, n)),
            "failed_cycles": sum(1 for r in data["rows"] if r.get("error")),
        }
        if regime != RIVER:
            s["freshness_s"] = _r(median_over(rows, "freshness_s", lo, n), 2)
            fresh = _values(rows, "freshness_s", lo, n)
            s["freshness_worst_s"] = _r(max(fresh), 2) if fresh else None
            s["pushed_cycles"] = sum(1 for r in rows if r.get("pushed"))
            steady = [r["components_s"] for r in rows if lo <= r["span"] <= n and "components_s" in r]
            s["components_s"] = {c: _r(statistics.median([x.get(c, 0.0) for x in steady]), 2)
                                 for c in sorted({c for x in steady for c in x})}
        if regime == DRIFTLINE:
            s["controller_cycle_s"] = _r(median_over(rows, "controller_wall_s", lo, n), 2)
            s["nontraining_share"] = _r(median_over(rows, "nontraining_share", lo, n))
            s["nontraining_share_strict"] = _r(median_over(rows, "nontraining_share_strict", lo, n))
            s["startup_s"] = data.get("startup_s")
            s["memory"] = memory_summary(rows)
        out[regime] = s
    d, st = out.get(DRIFTLINE, {}), out.get(STOCK_STATELESS, {})
    out["cpu_ratio_last_span"] = _r(ratio(st.get("cpu_s_at_last_span"), d.get("cpu_s_at_last_span")), 2)
    out["cycle_speedup_vs_stateless"] = _r(ratio(st.get("cycle_s"), d.get("cycle_s")), 2)
    out["cycle_speedup_vs_stateful"] = _r(ratio(out.get(STOCK_STATEFUL, {}).get("cycle_s"), d.get("cycle_s")), 2)
    oracle = [v for k, v in result.get("oracle_auc", {}).items() if lo + 1 <= int(k) <= n + 1]
    out["oracle_next_span_auc"] = _r(sum(oracle) / len(oracle), 4) if oracle else None
    return out


def memory_summary(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Controller RSS over the steady cycles: the slope, and whether the second half peaks above the first."""
    steady = [r for r in rows if r["span"] >= 2 and r.get("rss_mb") is not None]
    out: Dict[str, Any] = {"cycles": len(rows), "rss_mb_first": rows[0]["rss_mb"] if rows else None,
                           "rss_mb_last": rows[-1]["rss_mb"] if rows else None,
                           "peak_rss_mb": max((r["peak_rss_mb"] for r in rows), default=None)}
    if len(steady) >= 3:
        xs = [r["span"] for r in steady]
        ys = [r["rss_mb"] for r in steady]
        out["rss_slope_mb_per_cycle"] = _r(_slope(xs, ys), 2)
        half = len(steady) // 2
        first, second = max(ys[:half]), max(ys[half:])
        out["steady_first_half_peak_mb"], out["steady_second_half_peak_mb"] = first, second
        out["flat"] = second <= first * (1 + RSS_FLAT_TOLERANCE)
        if len(steady) - half >= 3:
            out["rss_slope_second_half_mb_per_cycle"] = _r(_slope(xs[half:], ys[half:]), 3)
    return out


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def headline(sizes: Mapping[str, Mapping[str, Any]], primary: int,
             memory_run: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The keys the issue names, from the primary size, plus the cost of extra events across sizes."""
    p = sizes[str(primary)]["summary"]
    g = lambda regime, key: p.get(regime, {}).get(key)  # noqa: E731
    out = {
        "primary_events_per_span": primary, "spans": sizes[str(primary)]["spans"],
        "stock_stateless_cycle_s": g(STOCK_STATELESS, "cycle_s"),
        "stock_stateful_cycle_s": g(STOCK_STATEFUL, "cycle_s"),
        "driftline_cycle_s": g(DRIFTLINE, "cycle_s"),
        "driftline_controller_cycle_s": g(DRIFTLINE, "controller_cycle_s"),
        "driftline_freshness_s": g(DRIFTLINE, "freshness_s"),
        "stock_stateless_freshness_s": g(STOCK_STATELESS, "freshness_s"),
        "stock_stateful_freshness_s": g(STOCK_STATEFUL, "freshness_s"),
        "driftline_freshness_worst_s": g(DRIFTLINE, "freshness_worst_s"),
        "driftline_nontraining_share": g(DRIFTLINE, "nontraining_share"),
        "driftline_nontraining_share_strict": g(DRIFTLINE, "nontraining_share_strict"),
        "cpu_ratio_span8": p.get("cpu_ratio_last_span"),
        "cpu_ratio_at_span": sizes[str(primary)]["spans"],
        "cycle_speedup_vs_stock_stateless": p.get("cycle_speedup_vs_stateless"),
        "cycle_speedup_vs_stock_stateful": p.get("cycle_speedup_vs_stateful"),
        "next_span_auc_stock_stateless": g(STOCK_STATELESS, "next_span_auc"),
        "next_span_auc_stock_stateful": g(STOCK_STATEFUL, "next_span_auc"),
        "next_span_auc_river": g(RIVER, "next_span_auc"),
        "next_span_auc_driftline": g(DRIFTLINE, "next_span_auc"),
        "next_span_auc_oracle": p.get("oracle_next_span_auc"),
        "river_cpu_s_per_span": g(RIVER, "cpu_s"),
        # Which River configuration is the peer, and the first peer's (plain SGD) figure for reference.
        "river_config": sizes[str(primary)].get("regimes", {}).get(RIVER, {}).get("config"),
        "next_span_auc_river_lr_sgd": sizes[str(primary)].get("regimes", {}).get(RIVER, {}).get(
            "configs", {}).get(RIVER_LR_SGD, {}).get("next_span_auc"),
        "driftline_memory": (dict(memory_run["memory"], events_per_span=memory_run["events_per_span"],
                                  from_memory_run=True) if memory_run else g(DRIFTLINE, "memory")),
    }
    # Extra events' cost: the driftline cycle's median CPU at the largest size against the primary one.
    keys = sorted(int(k) for k in sizes)
    big = keys[-1]
    if big != primary:
        a = sizes[str(primary)]["summary"].get(DRIFTLINE, {}).get("cpu_s")
        b = sizes[str(big)]["summary"].get(DRIFTLINE, {}).get("cpu_s")
        aw = sizes[str(primary)]["summary"].get(DRIFTLINE, {}).get("cycle_s")
        bw = sizes[str(big)]["summary"].get(DRIFTLINE, {}).get("cycle_s")
        per = (big - primary) / 10_000
        out["driftline_cpu_per_extra_10k_events_s"] = _r((b - a) / per, 3) if a is not None and b is not None else None
        out["driftline_wall_per_extra_10k_events_s"] = (_r((bw - aw) / per, 3) if aw is not None and bw is not None
                                                        else None)
        out["extra_events_between"] = [primary, big]
    return out


def evaluate_targets(h: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Each target of the issue: value, goal, met (None where this run could not measure it)."""

    def row(name, value, goal, met, note=""):
        return {"target": name, "value": value, "goal": goal, "met": met, "note": note}

    def le(v, t):
        return None if v is None else bool(v <= t)

    def ge(v, t):
        return None if v is None else bool(v >= t)

    size_note = "" if h["primary_events_per_span"] == 10_000 else \
        f"measured at {h['primary_events_per_span']:,} events per span, not 10,000"
    mem = h.get("driftline_memory") or {}
    mem_note = f"over {mem.get('cycles')} cycles"
    if mem.get("from_memory_run"):
        mem_note += f" of {mem['events_per_span']:,} events in one controller (--memory-cycles)"
    if (mem.get("cycles") or 0) < MEMORY_CYCLES:
        mem_note += f"; the issue asks for {MEMORY_CYCLES} (--memory-cycles {MEMORY_CYCLES})"
    rows = [
        row("driftline cycle wall time", h["driftline_cycle_s"], f"<= {CYCLE_TARGET_S:g} s",
            le(h["driftline_cycle_s"], CYCLE_TARGET_S), size_note),
        row("stock stateless cycle / driftline cycle", h["cycle_speedup_vs_stock_stateless"],
            f">= {CYCLE_SPEEDUP_TARGET:g}x", ge(h["cycle_speedup_vs_stock_stateless"], CYCLE_SPEEDUP_TARGET)),
        row("driftline freshness (median, allowed lateness included)", h["driftline_freshness_s"],
            f"<= {FRESHNESS_TARGET_S:g} s", le(h["driftline_freshness_s"], FRESHNESS_TARGET_S)),
        row("share of a driftline cycle that is not ingest, training or evaluation",
            h["driftline_nontraining_share"], f"<= {NONTRAINING_TARGET:.0%}",
            le(h["driftline_nontraining_share"], NONTRAINING_TARGET)),
        row(f"stock stateless cycle CPU / driftline cycle CPU at span {h['cpu_ratio_at_span']}", h["cpu_ratio_span8"],
            f">= {CPU_RATIO_TARGET:g}x", ge(h["cpu_ratio_span8"], CPU_RATIO_TARGET)),
        row("driftline cycle CPU per extra 10k events", h.get("driftline_cpu_per_extra_10k_events_s"),
            f"<= {CPU_PER_10K_TARGET_S:g} s", le(h.get("driftline_cpu_per_extra_10k_events_s"), CPU_PER_10K_TARGET_S),
            "" if "extra_events_between" in h else "needs a second, larger size (--sizes 10000 100000)"),
        row("controller RSS flat", mem.get("rss_slope_mb_per_cycle"), "flat (MB per cycle)", mem.get("flat"),
            mem_note),
        row("mean next-span AUC, driftline minus stock stateless",
            None if h["next_span_auc_driftline"] is None or h["next_span_auc_stock_stateless"] is None
            else round(h["next_span_auc_driftline"] - h["next_span_auc_stock_stateless"], 4), ">= 0",
            None if h["next_span_auc_driftline"] is None or h["next_span_auc_stock_stateless"] is None
            else bool(h["next_span_auc_driftline"] >= h["next_span_auc_stock_stateless"])),
    ]
    return rows


# -- outputs ------------------------------------------------------------------------------------

def plot(report: Mapping[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    sizes = sorted(report["sizes"], key=int)
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 4.2 * len(sizes)), squeeze=False)
    for (ax1, ax2), size in zip(axes, sizes):
        res = report["sizes"][size]
        for regime in REGIMES:
            data = res["regimes"].get(regime)
            if not data:
                continue
            rows = [r for r in data["rows"] if not r.get("error")]
            label = LABELS[regime] + (" (learn time)" if regime == RIVER else "")
            ax1.plot([r["span"] for r in rows], [max(r["wall_s"], 1e-3) for r in rows], "o-", color=COLORS[regime],
                     label=label)
            scored = [r for r in rows if r.get("next_span_auc") is not None]
            ax2.plot([r["span"] for r in scored], [r["next_span_auc"] for r in scored], "o-", color=COLORS[regime],
                     label=LABELS[regime])
        oracle = sorted((int(k) - 1, v) for k, v in res.get("oracle_auc", {}).items())
        if oracle:
            ax2.plot(*zip(*oracle), "--", color="gray", label="ceiling (true click probability)")
        ax1.set_yscale("log")
        ax1.set_xlabel("span (cycle k)")
        ax1.set_ylabel("cycle wall seconds (log)")
        ax1.set_title(f"Cycle time, {int(size):,} events per span")
        ax2.set_xlabel("span k (model after cycle k, scored on span k+1)")
        ax2.set_ylabel("next-span AUC (serving model)")
        ax2.set_title(f"Next-span AUC, {int(size):,} events per span")
        for ax in (ax1, ax2):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_png_path(png_path: str) -> str:
    root, ext = os.path.splitext(png_path)
    return f"{root}-memory{ext}"


def plot_memory(run: Mapping[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in run["rows"] if r.get("rss_mb") is not None]
    fig, ax1 = plt.subplots(figsize=(10, 4))
    ax1.plot([r["span"] for r in rows], [r["rss_mb"] for r in rows], "-", color=COLORS[DRIFTLINE], label="RSS")
    ax1.set_xlabel("cycle")
    ax1.set_ylabel("controller RSS after the cycle (MB)")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.plot([r["span"] for r in rows], [r["wall_s"] for r in rows], ".", color="gray", alpha=0.6,
             label="cycle wall s")
    ax2.set_ylabel("cycle wall seconds")
    ax2.set_ylim(bottom=0)
    ax1.set_title(f"driftline controller: {run['cycles']} cycles of {run['events_per_span']:,} events")
    ax1.grid(alpha=0.3)
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if v is None else f"{format(v, spec)}{suffix}"


def _met(flag: Optional[bool]) -> str:
    return "not measured" if flag is None else ("**met**" if flag else "**not met**")


def render_section(report: Mapping[str, Any], png_rel: str) -> str:
    start, end = marks(SECTION)
    h, m = report["headline"], report["machine"]
    lines = [
        start,
        "## Freshness: driftline continuous vs stock TFX cron vs River",
        "",
        "The same simulated stream (the drifting ad-click world, seed "
        f"{report['seed']}) at each size, regimes run one after another on this machine: **driftline continuous** "
        "(`pipelines.controller.run_continuous`, what `driftline run --continuous` runs, one controller process, "
        "the stream replayed one span per cycle), **stock TFX 1.16** (`benchmarks/stock_tfx.py`: CsvExampleGen → "
        "StatisticsGen → SchemaGen → Transform → Trainer → Evaluator with a baseline and an AUC threshold → Pusher, "
        "public components and a user module file, a fresh process per cycle as cron runs it; *stateless* retrains "
        "on all spans so far, *stateful* trains the newest span from the latest blessed model, whose embedding "
        "rows now stand for other ids wherever the span's frequency vocabulary reordered them), and **River** "
        "online logistic regression learning every event once, in log order (its wall and CPU seconds: learning "
        "the span's events). driftline and stock TFX train the same model shape with driftline's default "
        "training settings.",
        "",
        "Cycle k handles span k; its serving model (the newest pushed one) is scored on every event of span k+1, "
        "identical examples for all, exact rank AUC. Steady state: cycles 2..N. Freshness: allowed lateness "
        f"({report['allowed_lateness_s']} s: a span closes that long after its newest event) + the time from the "
        "span's closing events landing in the log (driftline) or the cron start (stock) to the push; a live "
        f"controller may add up to its poll interval ({report['poll_seconds']:g} s). Non-training share: 1 − "
        "(StreamingExampleGen + WarmStartTrainer + Evaluator execution seconds) / cycle wall, from ML Metadata; "
        "the strict variant counts only the work inside them (ingest Beam job, run_fn, TFMA).",
        "",
        f"* Date: {report['date']}",
        f"* Machine: {m['nproc']} CPU ({m['cpu_model']}), {m['mem_gib']} GiB; Python {m['python']}, TensorFlow "
        f"{m['tensorflow']}, Beam {m['apache_beam']}, TFX {m['tfx']}, River {report.get('river_version', '?')}",
        f"* Command: `{report['command']}` ({report['benchmark_wall_s'] / 60:.0f} min)",
        "",
        f"### Targets ({h['primary_events_per_span']:,} events per span, {h['spans']} spans)",
        "",
        "| target | measured | goal | |",
        "|---|---:|---:|---|",
    ]
    for t in report["targets"]:
        v = t["value"]
        shown = "-" if v is None else (f"{v:.0%}" if "share" in t["target"] else f"{v:g}")
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']} | {shown} | {t['goal']} | {_met(t['met'])}{note} |")
    lines += [
        "",
        f"Medians over cycles 2-{h['spans']}: stock stateless **{_f(h['stock_stateless_cycle_s'])} s**, "
        f"stock stateful **{_f(h['stock_stateful_cycle_s'])} s**, driftline **{_f(h['driftline_cycle_s'])} s** "
        f"a cycle ({_f(h['driftline_controller_cycle_s'])} s with the controller's look at the log); driftline "
        f"freshness **{_f(h['driftline_freshness_s'], '.0f')} s** (worst {_f(h['driftline_freshness_worst_s'], '.0f')}"
        f" s); non-training share {_f(h['driftline_nontraining_share'], '.0%')} "
        f"(strict {_f(h['driftline_nontraining_share_strict'], '.0%')}). Mean next-span AUC: stock stateless "
        f"{_f(h['next_span_auc_stock_stateless'], '.4f')}, stock stateful "
        f"{_f(h['next_span_auc_stock_stateful'], '.4f')}, River {_f(h['next_span_auc_river'], '.4f')}, driftline **{_f(h['next_span_auc_driftline'], '.4f')}** "
        f"(ceiling {_f(h['next_span_auc_oracle'], '.4f')}).",
        "",
    ]
    for size in sorted(report["sizes"], key=int):
        res = report["sizes"][size]
        s = res["summary"]
        lines += [f"### {int(size):,} events per span", "",
                  "| span | regime | wall s | CPU s | freshness s | pushed | next-span AUC | candidate AUC |",
                  "|---:|---|---:|---:|---:|---|---:|---:|"]
        for k in range(1, res["spans"] + 1):
            for regime in REGIMES:
                data = res["regimes"].get(regime)
                if not data:
                    continue
                r = next((x for x in data["rows"] if x["span"] == k), None)
                if r is None:
                    continue
                if r.get("error"):
                    lines.append(f"| {k} | {LABELS[regime]} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | | failed: "
                                 f"{r['error']} | | |")
                    continue
                pushed = "-" if regime == RIVER else ("yes" if r.get("pushed") else "no")
                lines.append(f"| {k} | {LABELS[regime]} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                             f"{_f(r.get('freshness_s'), '.0f')} | {pushed} | {_f(r.get('next_span_auc'), '.4f')} | "
                             f"{_f(r.get('candidate_next_span_auc'), '.4f')} |")
        comps = {regime: s[regime].get("components_s", {}) for regime in (STOCK_STATELESS, STOCK_STATEFUL, DRIFTLINE)
                 if regime in s}
        if comps:
            names = sorted({c for v in comps.values() for c in v})
            startup = s.get(DRIFTLINE, {}).get("startup_s")
            lines += ["", f"Where a steady cycle's time goes (median execution seconds over cycles 2-{res['spans']}, "
                          "from ML Metadata). A stock cycle's wall time also holds its process start and imports; "
                          "the driftline controller imported once"
                          + (f", in {startup:.0f} s" if startup is not None else "") + ":", "",
                      "| component | " + " | ".join(LABELS[r] for r in comps) + " |",
                      "|---|" + "---:|" * len(comps)]
            for c in names:
                lines.append(f"| {c} | " + " | ".join(_f(comps[r].get(c), ".1f") for r in comps) + " |")
        src = res.get("stock_reused_from")
        if src:
            lines += ["", f"The stock TFX rows at this size are reused from the run of {src.get('date')} "
                          f"(`{src.get('command')}`): the same stream (simulator settings, spans, allowed lateness)"
                          + (" and the same stock code" if src.get("stock_code_digest") else
                             "; that run predates the stock code hash, and the stock code has not changed since "
                             "(git log benchmarks/stock_tfx.py benchmarks/stock_module)")
                          + ". Only driftline and River ran again."]
        mem = s.get(DRIFTLINE, {}).get("memory", {})
        if mem:
            lines += ["", f"Controller RSS: {mem.get('rss_mb_first')} MB after cycle 1, {mem.get('rss_mb_last')} MB "
                          f"after cycle {mem.get('cycles')}, slope {_f(mem.get('rss_slope_mb_per_cycle'), '.1f')} MB "
                          f"per steady cycle, peak {mem.get('peak_rss_mb')} MB."]
        lines.append("")
    lines += [f"![cycle time and next-span AUC]({png_rel})", ""]
    run = report.get("memory_run")
    if run:
        mem, rows = run["memory"], run["rows"]
        at = {r["span"]: r["rss_mb"] for r in rows}
        marks_at = [k for k in (1, 10, 25, 50, 75, run["cycles"]) if k in at]
        walls = [r["wall_s"] for r in rows if r["span"] >= 2 and r.get("wall_s") is not None]
        half = len(walls) // 2
        lines += [f"### Memory: {run['cycles']} cycles of {run['events_per_span']:,} events in one controller", "",
                  "The controller alone (`--memory-cycles`), one span per cycle, retention on, its RSS after each "
                  "cycle. Flat: the second half of the steady cycles peaks at most "
                  f"{RSS_FLAT_TOLERANCE:.0%} above the first half.", "",
                  "| after cycle | " + " | ".join(str(k) for k in marks_at) + " |",
                  "|---|" + "---:|" * len(marks_at),
                  "| RSS MB | " + " | ".join(f"{at[k]:.0f}" for k in marks_at) + " |", "",
                  f"Peak of cycles 2-{1 + half}: {_f(mem.get('steady_first_half_peak_mb'), '.0f')} MB; of cycles "
                  f"{2 + half}-{run['cycles']}: {_f(mem.get('steady_second_half_peak_mb'), '.0f')} MB "
                  f"({_met(mem.get('flat'))}). Slope over the second half: "
                  f"{_f(mem.get('rss_slope_second_half_mb_per_cycle'), '.2f')} MB a cycle (over all steady cycles "
                  f"{_f(mem.get('rss_slope_mb_per_cycle'), '.2f')}). Median cycle: "
                  f"{_f(statistics.median(walls[:half]) if half else None)} s in the first half, "
                  f"{_f(statistics.median(walls[half:]) if walls[half:] else None)} s in the second; "
                  f"{sum(1 for r in rows if r.get('pushed'))} of {len(rows)} cycles pushed.", "",
                  f"![controller RSS over {run['cycles']} cycles]({memory_png_path(png_rel)})", ""]
    if report.get("notes"):
        lines += [report["notes"].rstrip(), ""]
    lines.append(end)
    return "\n".join(lines)


def write_outputs(report: Dict[str, Any], json_path: str, png_path: str, out_md: str) -> None:
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    plot(report, png_path)
    if report.get("memory_run"):
        plot_memory(report["memory_run"], memory_png_path(png_path))
    png_rel = os.path.relpath(png_path, os.path.dirname(os.path.abspath(out_md)))
    replace_section(out_md, SECTION, render_section(report, png_rel))


def build_report(sizes: Dict[str, Any], args, command: str, started: float,
                 memory_run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from importlib.metadata import version

    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command, "machine": machine_info(), "river_version": version("river"),
        "seed": args.seed, "allowed_lateness_s": args.allowed_lateness_seconds, "poll_seconds": args.poll_seconds,
        "benchmark_wall_s": round(time.monotonic() - started, 1), "primary_events_per_span": args.sizes[0],
        "sizes": sizes, "notes": args.notes, "stock_code_digest": stock_code_digest(),
    }
    if memory_run:
        report["memory_run"] = memory_run
    return summarize_report(report)


def summarize_report(report: Dict[str, Any]) -> Dict[str, Any]:
    """(Re)computes every summary, the headline keys and the targets from the per-cycle rows."""
    for res in report["sizes"].values():
        res["summary"] = summarize_size(res)
    if report.get("memory_run"):
        report["memory_run"]["memory"] = memory_summary(report["memory_run"]["rows"])
    h = headline(report["sizes"], report["primary_events_per_span"], report.get("memory_run"))
    report.update(h)
    report["headline"], report["targets"] = h, evaluate_targets(h)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spans", type=int, default=8, help="cycles N (N+1 spans are simulated; default 8)")
    p.add_argument("--events-per-span", type=int, default=None, help="one size (shorthand for --sizes N)")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help=f"events per span, the first is the headline (default {' '.join(map(str, DEFAULT_SIZES))})")
    p.add_argument("--stock-sizes", type=int, nargs="*", default=None,
                   help="sizes at which the stock pipelines run (default: every size)")
    p.add_argument("--skip-stock", action="store_true", help="no stock TFX pipelines")
    p.add_argument("--allowed-lateness-seconds", type=int, default=None,
                   help="driftline's watermark delay (default: WindowConfig's)")
    p.add_argument("--poll-seconds", type=float, default=5.0, help="the controller's poll interval (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 spans of 5,000 events; results under the work dir, RESULTS.md untouched")
    p.add_argument("--work-dir", default=None, help="default <tmp>/driftline-bench/freshness[-quick]")
    p.add_argument("--out", default=None, help="RESULTS.md to update (default benchmarks/RESULTS.md)")
    p.add_argument("--json", default=None, help="default benchmarks/results/freshness.json")
    p.add_argument("--png", default=None, help="default benchmarks/results/freshness.png")
    p.add_argument("--memory-cycles", type=int, default=0,
                   help=f"then run the controller alone this many cycles at the first size for its RSS "
                        f"(the issue's check: {MEMORY_CYCLES})")
    p.add_argument("--stock-from", default=None,
                   help="a freshness JSON whose stock rows to reuse at sizes where stock is not run "
                        "(same stream and stock code only)")
    p.add_argument("--notes", default="", help="extra text for the RESULTS section")
    p.add_argument("--render-only", action="store_true", help="the section and the plot again from the JSON")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        with open(args.spec) as f:
            spec = json.load(f)
        result = WORKERS[args.worker](spec)
        with open(spec["out"], "w") as f:
            json.dump(result, f, indent=1, default=str)
        return 0

    if args.quick:
        # 5,000 events: the smallest span whose eval split (1,000 events) has the evidence driftline's gate
        # asks for, so the smoke run pushes models and measures freshness.
        if "--spans" not in argv:
            args.spans = 3
        if args.sizes is None and args.events_per_span is None:
            args.sizes = [5_000]
    if args.sizes is None:
        args.sizes = [args.events_per_span] if args.events_per_span else list(DEFAULT_SIZES)
    if args.memory_cycles and args.memory_cycles < 3:
        raise SystemExit("--memory-cycles must be >= 3 (RSS is judged over the steady cycles 2..N)")
    args.stock_from_report = None
    if args.stock_from:
        if not os.path.exists(args.stock_from):
            raise SystemExit(f"--stock-from {args.stock_from}: no such file")
        with open(args.stock_from) as f:  # read now: this run may write over that very file
            args.stock_from_report = json.load(f)
    if args.spans < 2:
        raise SystemExit("--spans must be >= 2 (cycle 1 is the cold start; the steady state starts at cycle 2)")
    if args.allowed_lateness_seconds is None:
        from pipelines.config import WindowConfig

        args.allowed_lateness_seconds = WindowConfig().allowed_lateness_seconds
    for size in args.sizes:
        if size <= 0 or size % SPAN_MINUTES:
            raise SystemExit(f"--sizes: events per span must be a positive multiple of {SPAN_MINUTES}, got {size}")
    replay_schedule(args.spans, args.allowed_lateness_seconds)  # fails early on a lateness that cannot work
    stock_sizes = set() if args.skip_stock else set(args.stock_sizes if args.stock_sizes is not None else args.sizes)

    work = args.work_dir or os.path.join(tempfile.gettempdir(), "driftline-bench",
                                         "freshness-quick" if args.quick else "freshness")
    results_dir = os.path.join(work, "results") if args.quick else os.path.join(HERE, "results")
    out_md = args.out or (os.path.join(results_dir, "RESULTS.md") if args.quick else os.path.join(HERE, "RESULTS.md"))
    json_path = args.json or os.path.join(results_dir, "freshness.json")
    png_path = args.png or os.path.join(results_dir, "freshness.png")
    if args.render_only:
        with open(json_path) as f:
            report = json.load(f)
        report.setdefault("primary_events_per_span", report["headline"]["primary_events_per_span"])
        write_outputs(summarize_report(report), json_path, png_path, out_md)
        log(f"re-rendered {out_md} and {png_path} from {json_path}")
        return 0
    try:
        import river  # noqa: F401
    except ImportError:
        raise SystemExit("River is not installed: install the bench extra "
                         "(uv pip install -c constraints.txt -e '.[bench]')") from None

    command = ".venv/bin/python benchmarks/freshness.py " + " ".join(shlex.quote(a) for a in argv)
    os.makedirs(work, exist_ok=True)
    started = time.monotonic()
    log(f"freshness benchmark: {args.spans} spans at {', '.join(f'{s:,}' for s in args.sizes)} events per span; "
        f"stock at {sorted(stock_sizes) or 'none'}; work dir {work}")
    sizes: Dict[str, Any] = {}
    for size in args.sizes:
        sizes[str(size)] = run_size(size, args, work, size in stock_sizes)
        # Written after every size: a long run that dies later keeps what it measured.
        report = build_report(sizes, args, command.strip(), started)
        write_outputs(report, json_path, png_path, out_md)
    if args.memory_cycles:
        memory_run = run_memory(args.sizes[0], args.memory_cycles, args, work)
        report = build_report(sizes, args, command.strip(), started, memory_run)
        write_outputs(report, json_path, png_path, out_md)
    for t in report["targets"]:
        log(f"target: {t['target']}: {t['value']} (goal {t['goal']}): "
            f"{'not measured' if t['met'] is None else ('met' if t['met'] else 'NOT met')}")
    log(f"wrote {out_md}, {json_path}, {png_path} ({(time.monotonic() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
