"""Learning: driftline's default model, cycle by cycle, against River's best per-span learner, on two streams.

For each of two streams, the built-in ad-click stream (``pipelines/simulator.py``)
and the music stream (``pipelines/music_simulator.py``, ``music_schema()``, a 55 %
positive rate), nine 10-minute spans are simulated and ingested by the real
StreamingExampleGen, and stock TFX Transform runs over them with driftline's
``preprocessing_fn`` (``benchmarks/cost.py``'s harness, through LocalDagRunner
with SQLite ML Metadata).

Then, for cycle k = 1..8, the real ``cycle.train_cycle`` (what the
WarmStartTrainer executor calls) runs the default ``run_fn`` on span k, warm
from cycle k-1's model (cold on cycle 1), with the previous span's eval split and
the replay window as in production, for each configuration of a grid (``GRID``:
the old deep-only model, the wide & deep model, and its knobs around the
defaults: wide learning rate and optimizer, epochs, batch, embedding size,
replay, a DeepFM interaction term). Each cycle's model is scored on span
k+1's eval split (later than anything it trained on): exact rank AUC. Every
candidate counts as served (no gate here: this measures what the model learns).
Beside the warm chains, **stateless full retrains** (``STATELESS``): cycle k
trains spans 1..k from scratch through the same run_fn, what a stock TFX
pipeline retraining on all history does, with driftline's model and reader
(not stock TFX's components: those are in ``benchmarks/freshness.py``).

River (``benchmarks/freshness.py``'s configurations: logistic regression with SGD,
with AdaGrad at 0.01-5.0, past its best rate, and a factorization machine, on
one-hot categorical fields and standard-scaled numeric ones) learns every event
of span k once, after its eval split has been scored: the same freshness. The
peer is the best River configuration on each stream.

The figure is the mean next-span AUC over cycles 2-8. The #25 targets: driftline
>= the best River configuration + 0.01 on both streams, and >= the stateless
retrains, and on the ad stream at 10k events per span >= 0.777 (a third of the
way from the 0.727 of the old model to the 0.877 of the simulator's true click
probability). The settings are chosen by the worst of the two streams' margins
over their best River peer; to keep that choice from flattering the figures,
choose on one simulator seed and report on another::

    .venv/bin/python benchmarks/learning.py --seed 0 --stateless --no-md \
        --out benchmarks/results/learning-selection.json          # the selection run
    .venv/bin/python benchmarks/learning.py --seed 1 \
        --chosen-from benchmarks/results/learning-selection.json  # the reported run, RESULTS.md

With several selection runs (seeds 0, 2, 3, 4: ``learning-selection.json`` and
``learning-selection-seed{2,3,4}.json``), ``--chosen-from`` takes them all and
chooses by ``choose_across_seeds`` (see ``SIGN_TEST_ALPHA``)::

    .venv/bin/python benchmarks/learning.py --seed 1 --render-only --chosen-from \
        benchmarks/results/learning-selection.json benchmarks/results/learning-selection-seed{2,3,4}.json \
        --thin-from benchmarks/results/learning-thin-seed{0,2,3,4}.json

A row must also hold up on thin spans (``THIN_TOLERANCE``): ``learning-thin-seed{0,2,3,4}.json`` are
runs at 1,000 events a span on the selection seeds, each made with::

    .venv/bin/python benchmarks/learning.py --seed 0 --events-per-span 1000 --no-md \
        --out benchmarks/results/learning-thin-seed0.json --grid <the default's row> <the rows to check> \
        --river fm_0.5 fm_1.0 lr_adagrad_1.0 --stateless

    .venv/bin/python benchmarks/learning.py                 # one seed, choosing on the cycles it reports
    .venv/bin/python benchmarks/learning.py --quick         # a smoke run (results under the work dir)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks import cost  # noqa: E402
from benchmarks import freshness as fb  # noqa: E402
from benchmarks.results_md import marks, replace_section  # noqa: E402

SECTION = "learning"
STREAMS = ("ads", "music")
TARGET_MARGIN = 0.01
AD_TARGET_AUC = 0.777  # 0.727 + (0.877 - 0.727) / 3
# The grid: name -> TrainerConfig overrides (the rest as TrainerConfig's defaults). The first is the old model.
# Every row measured before the penalties existed names them off (the shipped model has them on), so it
# means what it measured whatever ads_model's defaults are.
_DEEP = {"embedding_dim": 8, "hidden_units": [64, 32], "embedding_l2": 0.0}
_WIDE = dict(_DEEP, wide=True, crosses="all", wide_l2=0.0)
_FM = dict(_WIDE, fm=True)
GRID: Dict[str, Dict[str, Any]] = {
    "deep only (old)": {"model": dict(_DEEP, wide=False)},
    "wide, no crosses": {"model": dict(_WIDE, crosses=[])},
    "wide + all crosses": {"model": _WIDE},
    "wide + all crosses, wide lr 0.02": {"model": dict(_WIDE, wide_learning_rate=0.02)},
    "wide + all crosses, wide lr 0.08": {"model": dict(_WIDE, wide_learning_rate=0.08)},
    "wide + all crosses, wide lr 0.15": {"model": dict(_WIDE, wide_learning_rate=0.15)},
    "wide + all crosses, wide FTRL": {"model": dict(_WIDE, wide_optimizer="ftrl")},
    "wide + all crosses, warm 1 epoch": {"model": _WIDE, "warm_epochs": 1},
    "wide + all crosses, warm 3 epochs": {"model": _WIDE, "warm_epochs": 3},
    "wide + all crosses, warm 3 epochs at 0.003": {"model": _WIDE, "warm_epochs": 3, "warm_learning_rate": 0.003},
    "wide + all crosses, batch 64": {"model": _WIDE, "batch_size": 64},
    "wide + all crosses, dim 4": {"model": dict(_WIDE, embedding_dim=4)},
    "wide + all crosses, dim 16": {"model": dict(_WIDE, embedding_dim=16)},
    # How much history each warm cycle replays (the previous eval split is always trained in full).
    "wide + all crosses, replay 0.3": {"model": _WIDE, "replay_fraction": 0.3},
    "wide + all crosses, replay 1 span": {"model": _WIDE, "replay_spans": 1},
    "wide + all crosses, no replay": {"model": _WIDE, "replay_fraction": 0.0},
    # DeepFM: a dot product between every pair of the categorical embeddings, beside wide and deep.
    "wide + all crosses + FM": {"model": _FM},
    "wide + all crosses + FM, dim 16": {"model": dict(_FM, embedding_dim=16)},
    "wide + all crosses + FM, warm lr 0.01": {"model": _FM, "warm_learning_rate": 0.01},
    "wide + all crosses + FM, replay 1 span": {"model": _FM, "replay_spans": 1},
    "wide + all crosses + FM, no replay": {"model": _FM, "replay_fraction": 0.0},
    "wide + all crosses + FM, dim 16, no replay": {"model": dict(_FM, embedding_dim=16), "replay_fraction": 0.0},
    # Learning from counts: decayed examples and positives per id and per cross, kept in the model.
    "wide + all crosses + counts": {"model": dict(_WIDE, counts=True)},
    "wide + all crosses + counts, replay 1 span": {"model": dict(_WIDE, counts=True), "replay_spans": 1},
    "wide + all crosses + FM + counts, replay 1 span": {"model": dict(_FM, counts=True), "replay_spans": 1},
    "wide + all crosses + counts, replay 1 span, warm 1 epoch": {"model": dict(_WIDE, counts=True),
                                                                 "replay_spans": 1, "warm_epochs": 1},
    "wide + all crosses + counts, warm 1 epoch": {"model": dict(_WIDE, counts=True), "warm_epochs": 1},
    # Around the default: the warm rate, the wide rate, replay share, a third (slower) decay, the prior.
    "wide + all crosses + counts, warm 1 epoch at 0.01": {"model": dict(_WIDE, counts=True), "warm_epochs": 1,
                                                          "warm_learning_rate": 0.01},
    "wide + all crosses + counts, warm 1 epoch, wide lr 0.08": {"model": dict(_WIDE, counts=True, wide_learning_rate=0.08),
                                                                "warm_epochs": 1},
    "wide + all crosses + counts, warm 1 epoch, replay 0.3": {"model": dict(_WIDE, counts=True), "warm_epochs": 1,
                                                              "replay_fraction": 0.3},
    "wide + all crosses + counts (decays 0.5, 0.9, 0.99), warm 1 epoch": {
        "model": dict(_WIDE, counts=True, count_decays=[0.5, 0.9, 0.99]), "warm_epochs": 1},
    "wide + all crosses + counts (prior 8), warm 1 epoch": {"model": dict(_WIDE, counts=True, count_prior=8.0),
                                                            "warm_epochs": 1},
    # Toward 0.777 on ads: a wider MLP, larger embeddings, FM beside counts, an undecayed count (the
    # user x ad affinity does not drift), and less replay over the same 3-span window.
    "wide + all crosses + counts, warm 1 epoch, hidden 128-64": {
        "model": dict(_WIDE, counts=True, hidden_units=[128, 64]), "warm_epochs": 1},
    "wide + all crosses + counts, warm 1 epoch, dim 16": {"model": dict(_WIDE, counts=True, embedding_dim=16),
                                                          "warm_epochs": 1},
    "wide + all crosses + FM + counts, warm 1 epoch": {"model": dict(_FM, counts=True), "warm_epochs": 1},
    "wide + all crosses + counts (decays 0.5, 1.0), warm 1 epoch": {
        "model": dict(_WIDE, counts=True, count_decays=[0.5, 1.0]), "warm_epochs": 1},
    "wide + all crosses + counts, warm 1 epoch, replay 0.03": {"model": dict(_WIDE, counts=True), "warm_epochs": 1,
                                                               "replay_fraction": 0.03},
    "wide + all crosses + counts, warm 1 epoch, replay 0.05": {"model": dict(_WIDE, counts=True), "warm_epochs": 1,
                                                               "replay_fraction": 0.05},
    # A frequency-weighted L2 penalty on the wide weights (`wide_l2`), so the bias holds the base rate: without
    # it the soak's serving stalled at the first new hour of day (RESULTS.md, soak).
    **{f"wide + all crosses + counts, warm 1 epoch, wide l2 {l2}": {
        "model": dict(_WIDE, counts=True, wide_l2=l2), "warm_epochs": 1} for l2 in (0.03, 0.1, 0.3, 1.0)},
    # And on the embeddings (`embedding_l2`): a value always present also moved the MLP through its embedding.
    **{f"wide + all crosses + counts, warm 1 epoch, wide l2 {l2}, embedding l2 {e}": {
        "model": dict(_WIDE, counts=True, wide_l2=l2, embedding_l2=e), "warm_epochs": 1}
       for l2, e in ((0.1, 0.01), (0.1, 0.1), (0.03, 0.01))},
    # The penalties with the smaller replay share: the rule chose 0.03 before the penalties, and chose it again
    # with them (2026-12-06): the shipped default since.
    "wide + all crosses + counts, warm 1 epoch, wide l2 0.1, embedding l2 0.01, replay 0.03": {
        "model": dict(_WIDE, counts=True, wide_l2=0.1, embedding_l2=0.01), "warm_epochs": 1, "replay_fraction": 0.03},
}
# The row of what TrainerConfig ships; another row replaces it as the default only when its worst-case margin
# is better by MIN_GAIN: the mean of 7 cycles moves by about that between neighbouring settings, and every
# change of default costs users a cold start (a new architecture) or changes what replay_spans also sets
# (the ingest dedup horizon, the retention window).
# Since 2026-12-06 the default has the penalties (wide_l2 0.1, embedding_l2 0.01): shipped to fix the soak's
# stall at the first new hour of day (RESULTS.md, soak), not chosen by this rule for AUC (on the selection
# seeds better than the row before on 8 of 8 stream x seed pairs, by less than MIN_GAIN). With them, the
# replay share 0.03 was then chosen by this rule over 0.1 (8 of 8 pairs, and within THIN_TOLERANCE on thin spans).
DEFAULT_LABEL = "wide + all crosses + counts, warm 1 epoch, wide l2 0.1, embedding l2 0.01, replay 0.03"
MIN_GAIN = 0.005
# With several selection seeds (`--chosen-from` given more than one file), a change that costs users nothing
# (the same model, the same replay_spans: a replay share, warm epochs or rates) needs no MIN_GAIN: it replaces
# the default when it is better on every stream in the mean over the seeds, and in enough of the
# stream x seed pairs that a one-sided sign test rejects "no better" at SIGN_TEST_ALPHA (7 of 8 with four
# seeds and two streams). Any other change still needs MIN_GAIN on the mean worst-case margin.
SIGN_TEST_ALPHA = 0.05
# Thin spans (`--thin-from`: runs at 1,000 events a span, the size of the closed loop's live spans, on the
# selection seeds): the shipped default also serves streams whose spans hold a few hundred examples, where
# the 10,000-event rows cannot see what a setting does. A change passes only if its mean next-span AUC on
# each stream there, over those seeds, is at most THIN_TOLERANCE below the default's. Written before the
# first thin run: replay 0.03 gave the closed loop's thin spans refused candidates (2 of 4 runs) that 0.1 did not.
THIN_TOLERANCE = MIN_GAIN
# Every row names its replay window and warm epochs (and its model), so a row means the same whatever
# TrainerConfig's defaults are.
GRID = {label: {"replay_spans": 3, "replay_fraction": 0.1, "warm_epochs": 2, **settings}
        for label, settings in GRID.items()}
# Not eligible as the default: no warm replay at all gives up the guard against forgetting, which these two
# streams (drift, no recurring patterns) cannot reward; their rows are reported, not chosen.
NOT_DEFAULT = {label for label, settings in GRID.items() if settings.get("replay_fraction") == 0.0}
# Stateless retraining, what a stock TFX pipeline retraining on every span so far does: cycle k trains
# spans 1..k from scratch (cold epochs and learning rate), through the same run_fn. Not stock TFX (no
# CsvExampleGen, no frequency vocabularies): the same model retrained, named for what it is.
STATELESS: Dict[str, Dict[str, Any]] = {
    "stateless full retrain, deep only (the stock TFX module's model shape)": {"model": dict(_DEEP, wide=False)},
    "stateless full retrain, wide + all crosses": {"model": _WIDE},
}


def log(msg: str) -> None:
    print(f"[learning {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def stream_config(name: str, home: str):
    from pipelines.config import NumericTransform, SourceConfig, TransformConfig, default_config
    from pipelines.music_simulator import music_schema

    config = default_config(home, log_dir=os.path.join(home, "events")).replace(pipeline_name=f"learning-{name}")
    if name == "music":
        config = config.replace(
            source=SourceConfig(log_dir=os.path.join(home, "events"), schema=music_schema()),
            transform=TransformConfig(numeric={"duration_s": NumericTransform(mode="log_standardize", mean=5.4,
                                                                               std=0.35)}))
    return config.validate()


def simulate(name: str, log_dir: str, minutes: int, events_per_span: int, seed: int) -> Dict[str, Any]:
    per_minute = events_per_span // fb.SPAN_MINUTES
    if name == "music":
        from pipelines.music_simulator import MusicConfig, simulate_music

        sim = MusicConfig(seed=seed, minutes=minutes, plays_per_minute=per_minute)
        simulate_music(log_dir, sim)
    else:
        from pipelines.simulator import SimulatorConfig, simulate as simulate_ads

        sim = SimulatorConfig(seed=seed, minutes=minutes, events_per_minute=per_minute)
        simulate_ads(log_dir, sim)
    return dataclasses.asdict(sim)


def prepare(work: str, name: str, spans: int, events_per_span: int, seed: int) -> Dict[str, Any]:
    """Simulates spans+1 spans, ingests them with StreamingExampleGen, runs stock Transform (as cost.py)."""
    from tfx import v1 as tfx

    from components.streaming_example_gen import StreamingExampleGen
    from pipelines import pipeline as p
    from pipelines.local_runner import run
    from pipelines.metadata import ingested_spans, open_store
    from transforms import stream
    from transforms.schema import write_tfmd_schema

    home = os.path.join(work, name)
    facts_path = os.path.join(home, "_facts.json")
    # The schema's hash buckets too: the data are transformed with them.
    buckets = {f.name: f.hash_buckets for f in stream_config(name, home).source.schema.fields if f.hash_buckets}
    key = {"spans": spans, "events_per_span": events_per_span, "seed": seed, "version": 1, "buckets": buckets}
    if os.path.exists(facts_path):
        with open(facts_path) as f:
            facts = json.load(f)
        if facts.get("key") == key:
            log(f"{name}: reusing {home}")
            return facts
    shutil.rmtree(home, ignore_errors=True)
    config = stream_config(name, home)
    minutes = int((spans + 1) * fb.SPAN_MINUTES + config.window.allowed_lateness_seconds / 60.0 + 2)
    sim = simulate(name, config.source.log_dir, minutes, events_per_span, seed)
    schema = config.source.schema
    example_gen = StreamingExampleGen.from_config(config.source, config.window).with_id(p.STREAMING_EXAMPLE_GEN_ID)
    schema_gen = tfx.components.ImportSchemaGen(schema_file=write_tfmd_schema(schema, p.schema_file(config)))
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=p.PREPROCESSING_FN, custom_config=stream.custom_config(schema, config.transform),
        materialize=False).with_id(p.TRANSFORM_ID)
    log(f"{name}: {minutes} minutes simulated; StreamingExampleGen -> ImportSchemaGen -> Transform ...")
    t0 = time.monotonic()
    run(tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
        components=[example_gen, schema_gen, transform],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path),
        beam_pipeline_args=config.beam.args()), config)
    store = open_store(config.metadata_connection)
    records = ingested_spans(store, config.pipeline_name)[:spans + 1]
    if len(records) < spans + 1:
        raise SystemExit(f"{name}: StreamingExampleGen emitted {len(records)} spans, need {spans + 1}")
    graph = max(store.get_artifacts_by_type("TransformGraph"), key=lambda a: a.id).uri
    facts = {"key": key, "home": home, "simulator": sim, "transform_graph": graph,
             "spans": [{"span": r.span, "uri": r.uri, "events": r.event_count} for r in records]}
    with open(facts_path, "w") as f:
        json.dump(facts, f, indent=1)
    log(f"{name}: {len(records)} spans in {time.monotonic() - t0:.0f} s "
        f"({', '.join(str(r.event_count) for r in records)} events)")
    return facts


def make_setup(name: str, facts: Mapping[str, Any], work: str) -> cost.Setup:
    from components.warm_start_trainer.component import run_fn_custom_config
    from pipelines.scoring import decode, read_span
    from transforms import stream

    config = stream_config(name, facts["home"])
    schema, transform = config.source.schema, config.transform
    span_uris = [(s["span"], s["uri"]) for s in facts["spans"]]
    eval_sets = {}
    for k, (span, uri) in enumerate(span_uris, start=1):
        if k < 2:
            continue
        if name == "ads":
            eval_sets[k] = cost.load_eval_set(span, uri, schema.label_field, facts["simulator"])
        else:
            serialized = read_span(uri, ("eval",))
            labels = np.array([int(e[schema.label_field]) for e in decode(serialized, (schema.label_field,))])
            eval_sets[k] = cost.EvalSet(span, serialized, labels, float("nan"))
    return cost.Setup(schema, run_fn_custom_config(schema, transform), stream.transform_fingerprint(schema, transform),
                      facts["transform_graph"], span_uris, eval_sets, os.path.join(work, name, "models"))


def driftline_chain(setup: cost.Setup, trainer, label: str, cycles: int, stateless: bool = False) -> List[Dict[str, Any]]:
    """The warm chain of cycles 1..N with the real run_fn (or, `stateless`, a cold retrain on spans 1..k
    each cycle); each model scored on the next span's eval split."""
    rows: List[Dict[str, Any]] = []
    previous = None
    for k in range(1, cycles + 1):
        if stateless:
            props, uri = setup.train(trainer, cost.STATELESS, k, None, tag=f" {label}")
        else:
            props, uri = setup.train(trainer, label, k, cost._base_of(previous))
        previous = (k, props, uri)
        metrics = cost.score(uri, setup.eval_sets[k + 1])
        rows.append({"span": k, "start": props["start"], "examples": props["trained_examples"],
                     "train_cpu_s": round(props["train_cpu_seconds"], 2),
                     "train_wall_s": round(props["train_wall_seconds"], 2), "next_span_auc": round(metrics["auc"], 4),
                     "next_span_log_loss": round(metrics["log_loss"], 4)})
        # Scored, and (warm) already the next cycle's base: its files are no longer needed.
        done = k if stateless else k - 1
        if done >= 1:
            folder = setup.dirs(cost.STATELESS + f" {label}" if stateless else label, done)["model_uri"]
            shutil.rmtree(os.path.dirname(folder), ignore_errors=True)
    return rows


def river_chain(setup: cost.Setup, cycles: int, configs: Sequence[str] = fb.RIVER_CONFIGS
                ) -> Dict[str, List[Dict[str, Any]]]:
    """Every River configuration, learning span k (all its events) after span k's eval split was scored."""
    from pipelines.scoring import decode, read_span

    schema = setup.schema
    categorical = [f.name for f in schema.fields if f.feature == "categorical"]
    numeric = [f.name for f in schema.fields if f.feature == "numeric"]
    fields = categorical + numeric + [schema.label_field]
    # Each span learned in full (train and eval splits); span k+1's eval split scores cycle k, as for driftline.
    learn = {k: decode(read_span(uri, ("train", "eval")), fields)
             for k, (_, uri) in enumerate(setup.span_uris[:cycles], start=1)}
    scored = {k: decode(setup.eval_sets[k].serialized, fields) for k in range(2, cycles + 2)}
    return _river_peers_split(learn, scored, cycles, schema.label_field, categorical, numeric, configs)


def _river_peers_split(learn: Mapping[int, Sequence[Mapping[str, Any]]], score: Mapping[int, Sequence[Mapping[str, Any]]],
                       cycles: int, label: str, categorical, numeric,
                       configs: Sequence[str] = fb.RIVER_CONFIGS) -> Dict[str, List[Dict[str, Any]]]:
    from pipelines.scoring import exact_auc

    out: Dict[str, List[Dict[str, Any]]] = {}
    for config in configs:
        model = fb.river_model(config, categorical, numeric)
        rows: List[Dict[str, Any]] = []
        for k in range(1, cycles + 1):
            for e in learn[k]:
                model.learn_one(fb.river_features(e, categorical, numeric), bool(int(e[label])))
            test = score[k + 1]
            preds = [model.predict_proba_one(fb.river_features(e, categorical, numeric)).get(True, 0.0) for e in test]
            rows.append({"span": k, "next_span_auc": round(exact_auc([int(e[label]) for e in test], preds), 4)})
        out[config] = rows
        log(f"River {config}: mean next-span AUC (cycles 2-{cycles}) {fb.best_mean_auc(rows, 2, cycles):.4f}")
    return out


def run_stream(name: str, args, work: str) -> Dict[str, Any]:
    facts = prepare(work, name, args.spans, args.events_per_span, args.seed)
    setup = make_setup(name, facts, work)
    result: Dict[str, Any] = {"events_per_span": args.events_per_span, "spans": args.spans, "driftline": {},
                              "stateless": {}, "river": {}}
    log(f"{name}: River, {len(args.river)} configurations ...")
    result["river"] = river_chain(setup, args.spans, args.river)
    if name == "ads":
        result["oracle_auc"] = round(float(np.mean([setup.eval_sets[k + 1].oracle_auc
                                                    for k in range(2, args.spans + 1)])), 4)
    for label in list(args.grid) + list(args.stateless):
        stateless = label in STATELESS
        settings = STATELESS[label] if stateless else GRID[label]
        trainer = cost.trainer_config([f"{k}={json.dumps(v)}" for k, v in settings.items()])
        log(f"{name}: driftline '{label}' ...")
        t0 = time.monotonic()
        rows = driftline_chain(setup, trainer, label, args.spans, stateless=stateless)
        result["stateless" if stateless else "driftline"][label] = rows
        log(f"{name}: driftline '{label}': mean next-span AUC {fb.best_mean_auc(rows, 2, args.spans):.4f} "
            f"({time.monotonic() - t0:.0f} s; per cycle {[r['next_span_auc'] for r in rows]})")
    return result


def _mean_cpu(rows: Sequence[Mapping[str, Any]], lo: int, hi: int) -> float:
    """Mean train CPU seconds of cycles lo..hi (what `train_cycle` records around run_fn)."""
    values = [r["train_cpu_s"] for r in rows if lo <= r["span"] <= hi]
    return round(float(np.mean(values)), 2) if values else float("nan")


def summarize(results: Mapping[str, Any], spans: int, grid: Sequence[str],
              chosen: Optional[str] = None, chosen_source: Optional[str] = None) -> Dict[str, Any]:
    """Per stream: every row's mean next-span AUC (cycles 2..N) and train CPU s per cycle; the chosen
    settings (given, from a selection run on another seed, or else the best worst-case margin here) and
    the #25 targets for them."""
    out: Dict[str, Any] = {"per_stream": {}}
    for name, r in results.items():
        river = {c: round(fb.best_mean_auc(rows, 2, spans), 4) for c, rows in r["river"].items()}
        drift = {c: round(fb.best_mean_auc(rows, 2, spans), 4) for c, rows in r["driftline"].items()}
        stateless = {c: round(fb.best_mean_auc(rows, 2, spans), 4) for c, rows in r.get("stateless", {}).items()}
        cpu = {c: _mean_cpu(rows, 2, spans) for part in ("driftline", "stateless")
               for c, rows in r.get(part, {}).items()}
        cpu_last = {c: _mean_cpu(rows, spans, spans) for part in ("driftline", "stateless")
                    for c, rows in r.get(part, {}).items()}
        best_river = max(river, key=river.get)
        out["per_stream"][name] = {"river": river, "driftline": drift, "stateless": stateless,
                                   "train_cpu_s": cpu, "train_cpu_s_last": cpu_last, "best_river": best_river,
                                   "best_river_auc": river[best_river], "oracle_auc": r.get("oracle_auc")}

    # Each stream's margin over its best River peer; the settings chosen by the worst of the two.
    def margin(label):
        return min(s["driftline"].get(label, -1) - s["best_river_auc"] for s in out["per_stream"].values())
    candidates = [g for g in grid if g not in NOT_DEFAULT and all(g in s["driftline"] for s in out["per_stream"].values())]
    out["margins"] = {g: round(margin(g), 4) for g in grid if all(g in s["driftline"] for s in out["per_stream"].values())}
    out["best_here"] = max(candidates, key=margin)
    if chosen is None:
        chosen = out["best_here"]
        if DEFAULT_LABEL in candidates and margin(chosen) - margin(DEFAULT_LABEL) < MIN_GAIN:
            chosen = DEFAULT_LABEL
    out["chosen"] = chosen
    out["chosen_source"] = chosen_source
    chosen = out["chosen"]
    out["targets"] = []
    # The targets of the chosen settings, and of what TrainerConfig ships when that is not the same.
    for label in [chosen] + ([DEFAULT_LABEL] if chosen != DEFAULT_LABEL and DEFAULT_LABEL in candidates else []):
        tag = f"{label}, shipped default" if label == DEFAULT_LABEL and chosen != DEFAULT_LABEL else label
        for name, s in out["per_stream"].items():
            need = s["best_river_auc"] + TARGET_MARGIN
            out["targets"].append({"target": f"{name}: driftline ({tag}) >= best River ({s['best_river']}) + 0.01",
                                   "value": s["driftline"][label], "need": round(need, 4),
                                   "met": s["driftline"][label] >= need})
            for other, value in s["stateless"].items():
                out["targets"].append({"target": f"{name}: driftline ({tag}) >= {other}",
                                       "value": s["driftline"][label], "need": value,
                                       "met": s["driftline"][label] >= value})
            if name == "ads":
                per_span = results[name].get("events_per_span", 10_000)
                what = ("ads at 10k/span" if per_span == 10_000 else
                        f"ads at {per_span:,}/span (the issue's target is at 10k/span)")
                out["targets"].append({"target": f"{what}: driftline ({tag}) >= 0.777",
                                       "value": s["driftline"][label], "need": AD_TARGET_AUC,
                                       "met": s["driftline"][label] >= AD_TARGET_AUC})
    return out


def costless_change(label: str, default: str = DEFAULT_LABEL) -> bool:
    """Whether shipping `label` instead of `default` leaves the model and the replay window as they are."""
    a, b = GRID[label], GRID[default]
    return a["model"] == b["model"] and a["replay_spans"] == b["replay_spans"]


def sign_test_p(wins: int, n: int) -> float:
    """One-sided sign test: P(at least `wins` of `n` fair coin flips)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def choose_across_seeds(selections: Sequence[Mapping[str, Any]],
                        thin: Sequence[Mapping[str, Any]] = ()) -> Dict[str, Any]:
    """The settings chosen on several selection runs (other seeds than the reported one), and the
    evidence for every eligible row against the shipped default (see SIGN_TEST_ALPHA); with `thin`
    runs, a row must also hold up on thin spans (THIN_TOLERANCE), and one they lack is not eligible."""
    summaries = [summarize(sel["results"], sel["spans"], sel["grid"]) for sel in selections]
    thin_summaries = [summarize(run["results"], run["spans"], run["grid"]) for run in thin]
    labels = [g for g in GRID if g not in NOT_DEFAULT
              and all(g in summ["margins"] for summ in [*summaries, *thin_summaries])]
    if DEFAULT_LABEL not in labels:
        raise SystemExit(f"--chosen-from: the shipped default {DEFAULT_LABEL!r} is not in every selection run")
    evidence: Dict[str, Any] = {}
    for label in labels:
        if label == DEFAULT_LABEL:
            continue
        pairs = [{"seed": sel["seed"], "stream": stream,
                  "gain": round(st["driftline"][label] - st["driftline"][DEFAULT_LABEL], 4)}
                 for sel, summ in zip(selections, summaries) for stream, st in summ["per_stream"].items()]
        wins = sum(p["gain"] > 0 for p in pairs)
        stream_gain = {stream: round(float(np.mean([p["gain"] for p in pairs if p["stream"] == stream])), 4)
                       for stream in dict.fromkeys(p["stream"] for p in pairs)}
        margin_gain = float(np.mean([summ["margins"][label] - summ["margins"][DEFAULT_LABEL] for summ in summaries]))
        p_value = sign_test_p(wins, len(pairs))
        costless = costless_change(label)
        passes = (p_value <= SIGN_TEST_ALPHA and min(stream_gain.values()) > 0) if costless else margin_gain >= MIN_GAIN
        evidence[label] = {"pairs": pairs, "wins": wins, "n": len(pairs), "sign_test_p": round(p_value, 4),
                           "mean_gain_per_stream": stream_gain, "mean_margin_gain": round(margin_gain, 4),
                           "costless": costless, "passes": passes}
        if thin:
            thin_pairs = [(stream, st["driftline"][label] - st["driftline"][DEFAULT_LABEL])
                          for summ in thin_summaries for stream, st in summ["per_stream"].items()]
            thin_gain = {stream: round(float(np.mean([g for x, g in thin_pairs if x == stream])), 4)
                         for stream in dict.fromkeys(x for x, _ in thin_pairs)}
            holds = min(thin_gain.values()) >= -THIN_TOLERANCE
            evidence[label].update(thin_gain_per_stream=thin_gain, thin_holds=holds, passes=passes and holds)
    passing = [g for g, e in evidence.items() if e["passes"]]
    chosen = max(passing, key=lambda g: evidence[g]["mean_margin_gain"]) if passing else DEFAULT_LABEL
    return {"chosen": chosen, "evidence": evidence, "seeds": [sel["seed"] for sel in selections],
            "thin": [{"seed": run["seed"], "events_per_span": run["events_per_span"]} for run in thin]}


def render(report: Mapping[str, Any]) -> str:
    s = report["summary"]
    n = report["spans"]
    start, end = marks(SECTION)
    lines = [start, f"## Learning: the default model against River's best per-span learner ({report['date']})", "",
             f"`benchmarks/learning.py`: {n} cycles, {report['events_per_span']:,} events per span, "
             f"{len(s['per_stream'])} stream(s), simulator seed {report.get('seed', 0)}; mean next-span AUC over cycles 2-{n} (every "
             "candidate served, no gate). River learns each span once, after it is scored: the same freshness. "
             f"Train CPU s: what `train_cycle` records around run_fn (read, transform, train, export), mean over "
             f"cycles 2-{n} and at cycle {n}; the machine was shared, so compare them as ratios.", ""]
    streams = list(s["per_stream"])
    head = " | ".join(f"{x} AUC | {x} train CPU s/cycle (at {n})" for x in streams)
    lines.append("| | " + head + " |")
    lines.append("|---|" + "---|---|" * len(streams))

    def cells(part, label):
        out = []
        for x in streams:
            ps = s["per_stream"][x]
            value = ps[part].get(label, float("nan"))
            cpu = ps.get("train_cpu_s", {}).get(label)
            last = ps.get("train_cpu_s_last", {}).get(label)
            out.append(f"{value:.4f} | " + (f"{cpu:.1f} ({last:.1f})" if cpu is not None else "-"))
        return " | ".join(out)

    for label in report["grid"]:
        bold = "**" if label == s["chosen"] else ""
        mark = " †" if label in NOT_DEFAULT else ""
        lines.append(f"| driftline: {bold}{label}{bold}{mark} | " + cells("driftline", label) + " |")
    for label in report.get("stateless", []):
        lines.append(f"| {label} | " + cells("stateless", label) + " |")
    for config in s["per_stream"][streams[0]]["river"]:
        lines.append(f"| River {config} | " + " | ".join(f"{s['per_stream'][x]['river'][config]:.4f} | -"
                                                         for x in streams) + " |")
    if s["per_stream"].get("ads", {}).get("oracle_auc"):
        lines.append("| true click probability (ads) | " + " | ".join(
            f"{s['per_stream'][x]['oracle_auc']:.4f} | -" if s['per_stream'][x].get('oracle_auc') else "- | -"
            for x in streams) + " |")
    how = (f"chosen on {s['chosen_source']}, not on the cycles above" if s.get("chosen_source")
           else "chosen on the same cycles reported above (a small grid, so a small optimism)")
    rule = ("the rule below the next table" if s.get("selection_across_seeds") else
            f"the best worst-case margin over both streams' best River peer, unless it beats the shipped default "
            f"'{DEFAULT_LABEL}' by less than {MIN_GAIN}")
    lines += ["", f"Settings ({rule}; {how}): "
              f"**{s['chosen']}**; the best on this run's cycles: {s['best_here']}. † not eligible as the "
              "default: no warm replay gives up the guard against forgetting, which these drifting streams "
              "cannot reward.", ""]
    across = s.get("selection_across_seeds")
    if across:
        seeds = ", ".join(str(x) for x in across["seeds"])
        lines += [f"Each eligible row against the shipped default on the selection seeds ({seeds}; not the seed "
                  f"above): its gain in mean next-span AUC per stream and seed. A change that leaves the model "
                  f"and replay_spans as they are is chosen when it is better on every stream in the mean and "
                  f"a one-sided sign test over the pairs gives p <= {SIGN_TEST_ALPHA}; any other needs "
                  f"{MIN_GAIN} on the mean worst-case margin."]
        thin = across.get("thin") or []
        if thin:
            lines[-1] += (f" On thin spans ({thin[0]['events_per_span']:,} events, seeds "
                          f"{', '.join(str(t['seed']) for t in thin)}) its mean per stream must be at most "
                          f"{THIN_TOLERANCE} below the default's (THIN_TOLERANCE).")
        lines += ["", "| row | gains (stream/seed) | better in | sign test p | mean gain per stream | "
                  "mean worst-case margin gain | model and window kept | thin spans: mean gain | passes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, e in sorted(across["evidence"].items(), key=lambda kv: -kv[1]["mean_margin_gain"]):
            gains = ", ".join(f"{p['stream']}/{p['seed']} {p['gain']:+.4f}" for p in e["pairs"])
            per = ", ".join(f"{k} {v:+.4f}" for k, v in e["mean_gain_per_stream"].items())
            thin_per = (", ".join(f"{k} {v:+.4f}" for k, v in e["thin_gain_per_stream"].items())
                        if "thin_gain_per_stream" in e else "-")
            lines.append(f"| {label} | {gains} | {e['wins']}/{e['n']} | {e['sign_test_p']:.3f} | {per} | "
                         f"{e['mean_margin_gain']:+.4f} | {'yes' if e['costless'] else 'no'} | {thin_per} | "
                         f"{'**yes**' if e['passes'] else 'no'} |")
        lines.append("")
    lines += ["| target | value | needed | met |", "|---|---|---|---|"]
    for t in s["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.4f} | {t['need']:.4f} | {'yes' if t['met'] else '**no**'} |")
    notes = report.get("notes")
    if notes:
        lines += ["", notes]
    lines.append(end)
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=8)
    ap.add_argument("--events-per-span", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    ap.add_argument("--grid", nargs="+", default=list(GRID), choices=list(GRID))
    ap.add_argument("--stateless", nargs="*", default=list(STATELESS), choices=list(STATELESS),
                    help="stateless full retrains to run beside the warm grid (none: --stateless with no names)")
    ap.add_argument("--river", nargs="+", default=list(fb.RIVER_CONFIGS), choices=list(fb.RIVER_CONFIGS),
                    help="River configurations (default: all; the best is the peer)")
    ap.add_argument("--chosen-from", nargs="+", help="the learning.json of a selection run on another seed (or of "
                    "several, on several seeds: see SIGN_TEST_ALPHA): its chosen settings are the ones whose "
                    "targets this run reports")
    ap.add_argument("--thin-from", nargs="+", default=[],
                    help="with several --chosen-from: runs at 1,000 events a span on the selection seeds, which "
                         "a change must also hold up on (see THIN_TOLERANCE)")
    ap.add_argument("--notes", default="", help="a paragraph of caveats for RESULTS.md")
    ap.add_argument("--out", help="the JSON to write (default benchmarks/results/learning.json)")
    ap.add_argument("--no-md", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--work-dir", default="/tmp/driftline-learning")
    ap.add_argument("--quick", action="store_true", help="3 cycles of 2k events, results under the work dir")
    ap.add_argument("--render-only", action="store_true",
                    help="summarize the stored results again (this code's rule) and render; no cycles run")
    args = ap.parse_args(argv)
    if args.quick:
        args.spans, args.events_per_span = 3, 2000
    out_dir = args.work_dir if args.quick else os.path.join(ROOT, "benchmarks", "results")
    json_path = args.out or os.path.join(out_dir, "learning.json")
    md_path = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    chosen = source = across = None
    if args.chosen_from:  # read first: a wrong file fails before an hour of cycles
        selections = []
        for path in args.chosen_from:
            with open(path) as f:
                selections.append(json.load(f))
        # Chosen again from their results, by this code's rule.
        if len(selections) == 1:
            chosen = summarize(selections[0]["results"], selections[0]["spans"], selections[0]["grid"])["chosen"]
        else:
            thin = []
            for path in args.thin_from:
                with open(path) as f:
                    thin.append(json.load(f))
            across = choose_across_seeds(selections, thin)
            chosen = across["chosen"]
        source = (f"simulator seed{'s' if len(selections) > 1 else ''} "
                  f"{', '.join(str(sel['seed']) for sel in selections)} "
                  f"({', '.join(os.path.basename(p) for p in args.chosen_from)})")
        if chosen not in args.grid:
            raise SystemExit(f"--chosen-from: its chosen settings {chosen!r} are not in --grid")
    if args.render_only:
        with open(json_path) as f:
            report = json.load(f)
        report["summary"] = summarize(report["results"], report["spans"], report["grid"], chosen, source)
    else:
        os.makedirs(args.work_dir, exist_ok=True)
        results = {}
        for name in args.streams:
            results[name] = run_stream(name, args, args.work_dir)
        report = {"date": datetime.date.today().isoformat(), "spans": args.spans,
                  "events_per_span": args.events_per_span, "seed": args.seed, "grid": args.grid,
                  "grid_settings": {g: GRID[g] for g in args.grid}, "stateless": args.stateless,
                  "stateless_settings": {g: STATELESS[g] for g in args.stateless}, "results": results}
        report["summary"] = summarize(results, args.spans, args.grid, chosen, source)
    if across is not None:
        report["summary"]["selection_across_seeds"] = across
    if args.notes:
        report["notes"] = args.notes
    # Written in --render-only too: its summary was recomputed from the stored results by this code's rule.
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    section = render(report)
    print(section)
    if not (args.quick or args.no_md):
        replace_section(md_path, SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
