"""Continuous vs batch vs static training on one drifting stream.

The comparison behind ``notebooks/continuous_vs_batch.ipynb``. Three regimes
see the very same events:

* **continuous** (driftline): the real pipeline, one cycle per span, through
  TFX's LocalDagRunner, Beam's DirectRunner and SQLite ML Metadata, warm
  starting each cycle from the latest blessed model. After span *s* closes it
  serves the newest model the gate blessed.
* **batch** ("daily" retraining, compressed in time): every ``batch_every``
  spans, a model trained from scratch on all spans so far; it serves until
  the next retrain.
* **static**: a model trained once, on the first span, and served forever.

Batch and static train with driftline's own training function
(``cycle.train_cycle``, what WarmStartTrainer's executor calls), cold, with
the default ``TrainerConfig``, on the ``Examples`` that driftline ingested and
the transform graph it used: same data, same model code, same features. They
have no gate: they serve what they train, as a cron job does.

What is measured:

* **next-span AUC**: the model each regime serves once span *s-1* has closed,
  scored on all of span *s* (both splits), which no regime has trained on.
* **the hot-ad race**: the simulator launches a brand-new ad with a high click
  rate (``SimulatorConfig.hot_ad_minute``). For every model a regime serves,
  the hot ad is ranked among the ads of its category: each ad is put into the
  same fixed set of real requests (events of the last span, the ad swapped in)
  and ranked by its mean predicted click probability. The race time is the
  stream time from the hot ad's first appearance to the moment a serving model
  that learned from data since then and ranks it in the top ``top_k`` starts
  serving. (A model that never saw the ad can rank it high only by chance, or
  through an older ad hashed into the same bucket; all ranks are reported.)
* **CPU seconds**: training CPU (process time around run_fn, the same measure
  for all three) and, for driftline, the CPU of its whole cycles (ingest,
  transform, train, evaluate, push).

A model starts serving, in stream time, when its span closes (span end plus
the allowed lateness) plus the wall time it took to make: the whole cycle for
driftline, the training alone for batch and static (which flatters them:
their ingest and evaluation are not counted).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from pipelines.config import ConfigError, DriftlineConfig, default_config
from pipelines.simulator import MINUTE_MS, SimulatorConfig, hot_ad_id, hot_ad_start_ms, simulate

CONTINUOUS, BATCH, STATIC = "continuous", "batch", "static"
REGIMES = (CONTINUOUS, BATCH, STATIC)
REGIME_LABELS = {CONTINUOUS: "driftline continuous (warm start each span)",
                 BATCH: "batch: from scratch on all history every K spans",
                 STATIC: "static: trained once on the first span"}
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """The size of the comparison; the notebook's one knob set."""

    spans: int = 10
    events_per_minute: int = 1000
    # The batch regime retrains from scratch once every this many spans.
    batch_every: int = 4
    # When the hot ad appears, in minutes of stream time (span 2 of 10-minute spans by default).
    hot_ad_minute: float = 25.0
    # 50 ads per category: an ad the model knows nothing about lands in the top 10 only by chance.
    n_ads: int = 600
    # Real requests the hot ad is ranked in, taken from the last span.
    context_events: int = 200
    top_k: int = 10
    seed: int = 0

    def validate(self) -> "CompareConfig":
        if self.spans < 2:
            raise ConfigError(f"spans must be >= 2 (one to train, one to score), got {self.spans}")
        if self.batch_every < 1:
            raise ConfigError(f"batch_every must be >= 1, got {self.batch_every}")
        if self.events_per_minute < 100:
            raise ConfigError(f"events_per_minute must be >= 100: the gate needs evidence "
                              f"(gate.max_auc_interval_width), got {self.events_per_minute}")
        if self.context_events < 1 or self.top_k < 1:
            raise ConfigError("context_events and top_k must be >= 1")
        return self


@dataclasses.dataclass
class Training:
    """One model a regime trained."""

    regime: str
    at_span: int  # ordinal (0 = first span) of the newest span it learned from
    model_uri: str
    start: str  # "warm" or "cold"
    trained_examples: int
    train_cpu_seconds: float
    train_wall_seconds: float
    # Wall seconds from the span's close to this model being ready to serve.
    ready_after_seconds: float
    serving_from_ms: int  # stream time at which it starts serving (if it is served)
    served: bool = True
    cycle_cpu_seconds: Optional[float] = None  # driftline: the whole cycle
    model_id: Optional[int] = None  # driftline: the Model artifact id in ML Metadata


@dataclasses.dataclass
class Comparison:
    config: CompareConfig
    home: str
    span_ids: List[int]
    span_end_ms: List[int]
    trainings: List[Training]
    # regime -> the index in `trainings` of the model serving once span i closed, for each span i.
    serving: Dict[str, List[Optional[int]]]
    # rows: {"span": i, "regime": r, "auc": x, "examples": n}
    next_span_auc: List[Dict[str, Any]]
    # rows: {"regime", "training", "at_span", "serving_from_min", "rank", "ads_in_category"}
    hot_ad_ranks: List[Dict[str, Any]]
    hot_ad: Dict[str, Any]
    race: Dict[str, Optional[float]]  # regime -> minutes from appearance to a top-k serving model (None: never)
    cpu: Dict[str, Dict[str, float]]

    def mean_auc(self, regime: str, from_span: int = 1) -> float:
        values = [r["auc"] for r in self.next_span_auc if r["regime"] == regime and r["span"] >= from_span]
        return float(np.nanmean(values)) if values else float("nan")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# -- the continuous regime: the real pipeline --------------------------------------------------

def _driftline_config(home: str) -> DriftlineConfig:
    return default_config(home).validate()


def simulator_config(cfg: CompareConfig) -> SimulatorConfig:
    return SimulatorConfig(seed=cfg.seed, events_per_minute=cfg.events_per_minute, n_ads=cfg.n_ads,
                           hot_ad_minute=cfg.hot_ad_minute, minutes=10.0)


def run_continuous(home: str, cfg: CompareConfig, progress: Progress) -> Tuple[DriftlineConfig, List[Training],
                                                                                 List[Optional[int]]]:
    """One real driftline cycle per span, the stream replayed a span at a time.

    Returns the config, one Training per cycle that trained, and, per span,
    the index of the Training serving once it closed.
    """
    from pipelines import lineage
    from pipelines.local_runner import run_cycle
    import pipelines.pipeline  # noqa: F401 (imports TFX and our components before the first timed cycle)

    config = _driftline_config(home)
    sim = simulator_config(cfg)
    span_minutes = config.window.span_seconds / 60.0
    lateness_minutes = config.window.allowed_lateness_seconds / 60.0
    trainings: List[Training] = []
    serving: List[Optional[int]] = []
    current: Optional[int] = None
    for i in range(cfg.spans):
        # The first append closes span 0 (the watermark must pass its end); each later one closes one more.
        minutes = span_minutes + lateness_minutes + 1.0 if i == 0 else span_minutes
        simulate(config.source.log_dir, dataclasses.replace(sim, minutes=minutes), append=i > 0)
        cpu0 = time.process_time()
        report = run_cycle(config)
        cycle_cpu = time.process_time() - cpu0
        if len(report.spans) != 1:
            raise RuntimeError(f"cycle {i + 1} ingested spans {report.spans}; the replay expects exactly one "
                               "span per cycle (is the window config the default 10-minute span?)")
        if report.trained:
            record = {m.model_id: m for m in lineage.models(config.metadata_connection, config.pipeline_name)}[
                report.model_id]
            trainings.append(Training(
                regime=CONTINUOUS, at_span=i, model_uri=record.uri, start=record.start or "?",
                trained_examples=record.trained_examples or 0,
                train_cpu_seconds=record.train_cpu_seconds or 0.0,
                train_wall_seconds=record.train_wall_seconds or 0.0, ready_after_seconds=report.wall_seconds,
                serving_from_ms=0, served=report.pushed_version is not None, cycle_cpu_seconds=round(cycle_cpu, 2),
                model_id=report.model_id))
            if report.pushed_version is not None:
                current = len(trainings) - 1
        serving.append(current)
        verdict = "pushed" if report.pushed_version else ("refused: " + (report.reason or "?"))
        progress(f"continuous: span {i + 1}/{cfg.spans} (id {report.spans[0]}): {report.start or 'no training'}, "
                 f"{verdict}; cycle {report.wall_seconds:.0f} s wall, {cycle_cpu:.0f} s CPU")
    return config, trainings, serving


# -- batch and static: the same training function, cold ---------------------------------------

def _train_cold(config: DriftlineConfig, regime: str, at_span: int, spans: Sequence[Tuple[int, str]],
                transform_graph: str, out_dir: str) -> Training:
    from components.warm_start_trainer import cycle
    from components.warm_start_trainer.component import run_fn_custom_config
    from transforms import stream

    schema = config.source.schema
    model_uri = os.path.join(out_dir, regime, f"span-{at_span:03d}", "model")
    props = cycle.train_cycle(
        config=config.trainer, schema=schema, custom_config=run_fn_custom_config(schema, config.transform),
        transform_fingerprint=stream.transform_fingerprint(schema, config.transform),
        transform_graph_path=transform_graph, current=list(spans), earlier=[], base=None,
        model_uri=model_uri, model_run_uri=os.path.join(os.path.dirname(model_uri), "model_run"))
    return Training(regime=regime, at_span=at_span, model_uri=model_uri, start=props["start"],
                    trained_examples=props["trained_examples"], train_cpu_seconds=props["train_cpu_seconds"],
                    train_wall_seconds=props["train_wall_seconds"],
                    ready_after_seconds=props["train_wall_seconds"], serving_from_ms=0)


def run_batch_and_static(config: DriftlineConfig, cfg: CompareConfig, spans: Sequence[Tuple[int, str]],
                         transform_graph: str, progress: Progress) -> Tuple[List[Training], Dict[str, List[int]]]:
    """Trains the static model once and the batch models every `batch_every` spans; returns them and who serves when.

    The static model and the batch regime's first model are one and the same
    training (cold, on span 0, with the same settings), so it is trained once.
    """
    out_dir = os.path.join(config.home, "regimes")
    trainings: List[Training] = []
    serving: Dict[str, List[int]] = {BATCH: [], STATIC: []}
    for i in range(len(spans)):
        if i % cfg.batch_every == 0:
            t = _train_cold(config, BATCH, i, spans[:i + 1], transform_graph, out_dir)
            trainings.append(t)
            progress(f"batch: retrained from scratch on spans 1-{i + 1} ({t.trained_examples:,} examples): "
                     f"{t.train_cpu_seconds:.1f} s CPU")
            if i == 0:
                trainings.append(dataclasses.replace(t, regime=STATIC))
                static_index = len(trainings) - 1
        serving[BATCH].append(max(k for k, t in enumerate(trainings) if t.regime == BATCH))
        serving[STATIC].append(static_index)
    return trainings, serving


# -- scoring -----------------------------------------------------------------------------------

def rank_in_category(scores: Dict[str, float], ad: str) -> int:
    """1 + the number of ads scored strictly above `ad` (ties do not push it down)."""
    return 1 + sum(1 for other, s in scores.items() if other != ad and s > scores[ad])


def category_ad_scores(predict: Callable[[Sequence[bytes]], np.ndarray], contexts: Sequence[Dict[str, Any]],
                       ads: Sequence[str], category: str, ad_field: str = "ad_id",
                       category_field: str = "ad_category") -> Dict[str, float]:
    """Each ad's mean predicted probability over the same requests, the ad (and its category) swapped in."""
    from pipelines.scoring import encode

    rows = [{**c, ad_field: ad, category_field: category} for ad in ads for c in contexts]
    preds = predict(encode(rows)).reshape(len(ads), len(contexts))
    return {ad: float(p) for ad, p in zip(ads, preds.mean(axis=1))}


def _minutes(ms: int) -> float:
    return round(ms / MINUTE_MS, 2)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """TensorFlow, Beam and absl log hundreds of INFO/WARNING lines per cycle: inside, only errors show.

    TFX's executors re-apply their own verbosity to these loggers mid-cycle,
    so their levels are pinned for the duration (as `demo.component_progress` does).
    """
    loggers = [logging.getLogger(name) for name in ("tensorflow", "apache_beam", "absl")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
        lg.setLevel = lambda level: None
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.__dict__.pop("setLevel", None)
            lg.setLevel(level)


def compare(home: str, cfg: CompareConfig = CompareConfig(), progress: Progress = print) -> Comparison:
    """Runs the three regimes on one simulated stream under `home` (a new folder) and scores them."""
    with quiet_logs():
        return _compare(home, cfg, progress)


def _compare(home: str, cfg: CompareConfig, progress: Progress) -> Comparison:
    from pipelines.metadata import ingested_spans, open_store
    from pipelines.scoring import ServingModel, decode, exact_auc, read_span

    cfg.validate()
    if os.path.exists(home) and os.listdir(home):
        raise ConfigError(f"{home!r} is not empty: the comparison needs a fresh folder (its stream starts at "
                          "span 0); pass a new path or delete this one")
    config, cont_trainings, cont_serving = run_continuous(home, cfg, progress)
    store = open_store(config.metadata_connection)
    records = ingested_spans(store, config.pipeline_name)
    spans = [(r.span, r.uri) for r in records]
    graphs = store.get_artifacts_by_type("TransformGraph")
    # Hashing transforms have no analyzers: every cycle's graph is the same; take the newest.
    transform_graph = max(graphs, key=lambda a: a.id).uri
    other_trainings, other_serving = run_batch_and_static(config, cfg, spans, transform_graph, progress)
    offset = len(cont_trainings)
    trainings = cont_trainings + other_trainings
    serving: Dict[str, List[Optional[int]]] = {
        CONTINUOUS: cont_serving,
        BATCH: [k + offset for k in other_serving[BATCH]],
        STATIC: [k + offset for k in other_serving[STATIC]],
    }
    lateness_ms = config.window.allowed_lateness_ms
    for t in trainings:
        t.serving_from_ms = records[t.at_span].span_end_ms + lateness_ms + int(t.ready_after_seconds * 1000)

    progress("scoring every regime's serving model on the next span ...")
    label = config.source.schema.label_field
    models: Dict[str, ServingModel] = {}

    def model(k: int) -> ServingModel:
        uri = trainings[k].model_uri
        if uri not in models:
            models[uri] = ServingModel(uri)
        return models[uri]

    next_span_auc: List[Dict[str, Any]] = []
    for i in range(1, len(spans)):
        serialized = read_span(spans[i][1], ("train", "eval"))
        labels = np.array([e[label] for e in decode(serialized, (label,))])
        for regime in REGIMES:
            k = serving[regime][i - 1]
            if k is None:
                continue
            preds = model(k).predict(serialized)
            next_span_auc.append({"span": i, "regime": regime, "auc": round(exact_auc(labels, preds), 4),
                                  "examples": len(labels)})

    progress("the hot-ad race: ranking the hot ad in its category for every served model ...")
    sim = simulator_config(cfg)
    hot, hot_start = hot_ad_id(sim), hot_ad_start_ms(sim)
    ad_categories: Dict[str, str] = {}
    for _, uri in spans:
        for e in decode(read_span(uri, ("train", "eval")), ("ad_id", "ad_category")):
            ad_categories[e["ad_id"]] = e["ad_category"]
    if hot not in ad_categories:
        raise RuntimeError(f"the hot ad {hot} never appeared in {len(spans)} spans: hot_ad_minute "
                           f"({cfg.hot_ad_minute}) must fall inside the simulated stream")
    category = ad_categories[hot]
    ads = sorted(a for a, c in ad_categories.items() if c == category)
    fields = [f.name for f in config.source.schema.fields if f.name != label]
    last = decode(read_span(spans[-1][1], ("train", "eval")), fields)
    rng = np.random.default_rng(cfg.seed)
    contexts = [last[j] for j in sorted(rng.choice(len(last), size=min(cfg.context_events, len(last)),
                                                   replace=False))]
    hot_ad_ranks: List[Dict[str, Any]] = []
    race: Dict[str, Optional[float]] = {}
    for regime in REGIMES:
        served = sorted({k for k in serving[regime] if k is not None}, key=lambda k: trainings[k].serving_from_ms)
        race[regime] = None
        for k in served:
            t = trainings[k]
            rank = rank_in_category(category_ad_scores(model(k).predict, contexts, ads, category), hot)
            since = t.serving_from_ms - hot_start
            saw_hot_ad = records[t.at_span].span_end_ms > hot_start
            hot_ad_ranks.append({"regime": regime, "training": k, "at_span": t.at_span,
                                 "serving_from_min": _minutes(since), "rank": rank, "ads_in_category": len(ads),
                                 "trained_on_hot_ad": saw_hot_ad})
            # A model that never saw the ad ranks it by what its hash bucket and category carry: chance, or
            # an older ad sharing the bucket. That is not surfacing it, so only models that learned from
            # data since its appearance count.
            if race[regime] is None and saw_hot_ad and rank <= cfg.top_k:
                race[regime] = _minutes(since)

    cpu: Dict[str, Dict[str, float]] = {}
    for regime in REGIMES:
        made = [t for t in trainings if t.regime == regime]
        cpu[regime] = {"trainings": len(made),
                       "train_cpu_seconds": round(sum(t.train_cpu_seconds for t in made), 2),
                       "train_cpu_seconds_per_span": round(sum(t.train_cpu_seconds for t in made) / len(spans), 2)}
        if regime == CONTINUOUS:
            cpu[regime]["cycle_cpu_seconds"] = round(sum(t.cycle_cpu_seconds or 0.0 for t in made), 2)
    return Comparison(
        config=cfg, home=home, span_ids=[s for s, _ in spans], span_end_ms=[r.span_end_ms for r in records],
        trainings=trainings, serving=serving, next_span_auc=next_span_auc, hot_ad_ranks=hot_ad_ranks,
        hot_ad={"ad_id": hot, "category": category, "ads_in_category": len(ads), "appears_at_min": cfg.hot_ad_minute,
                "top_k": cfg.top_k, "context_events": len(contexts)},
        race=race, cpu=cpu)


# -- plots -------------------------------------------------------------------------------------

def plot(result: Comparison, path: Optional[str] = None):
    """Next-span AUC per regime, the hot ad's rank over stream time, and training CPU: one figure."""
    import matplotlib
    if path:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {CONTINUOUS: "tab:blue", BATCH: "tab:orange", STATIC: "tab:gray"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for regime in REGIMES:
        rows = [r for r in result.next_span_auc if r["regime"] == regime]
        ax.plot([r["span"] + 1 for r in rows], [r["auc"] for r in rows], "o-", color=colors[regime],
                label=REGIME_LABELS[regime])
    ax.set_xlabel("span scored (the model serving before it closed)")
    ax.set_ylabel("AUC on the next span")
    ax.set_title("Next-span AUC")
    ax.legend(fontsize=8)

    ax = axes[1]
    for regime in REGIMES:
        rows = sorted((r for r in result.hot_ad_ranks if r["regime"] == regime), key=lambda r: r["serving_from_min"])
        if rows:
            ax.step([r["serving_from_min"] for r in rows], [r["rank"] for r in rows], where="post",
                    marker="o", color=colors[regime], label=regime)
    ax.axhline(result.hot_ad["top_k"] + 0.5, color="green", linestyle="--", linewidth=1,
               label=f"top {result.hot_ad['top_k']}")
    ax.axvline(0, color="black", linewidth=1)
    ax.invert_yaxis()
    ax.set_xlabel("minutes since the hot ad appeared (when each model starts serving)")
    ax.set_ylabel(f"hot ad's rank among {result.hot_ad['ads_in_category']} ads of its category")
    ax.set_title("Which model surfaces the trending ad first")
    ax.legend(fontsize=8)

    ax = axes[2]
    values = [result.cpu[r]["train_cpu_seconds"] for r in REGIMES]
    ax.bar(REGIMES, values, color=[colors[r] for r in REGIMES])
    if "cycle_cpu_seconds" in result.cpu[CONTINUOUS]:
        ax.bar([CONTINUOUS], [result.cpu[CONTINUOUS]["cycle_cpu_seconds"]], fill=False, hatch="//",
               edgecolor=colors[CONTINUOUS], label="driftline: whole cycles")
        ax.legend(fontsize=8)
    ax.set_ylabel("CPU seconds over the whole stream")
    ax.set_title("Training CPU per regime")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
    return fig
