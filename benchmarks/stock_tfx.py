"""A stock TFX 1.16 periodic pipeline, run as a cron user runs it: the baseline of benchmarks/freshness.py.

Public TFX components only, one pipeline run per span, each in a fresh process::

    CsvExampleGen ({SPAN}) ─► StatisticsGen ─► SchemaGen ─► Transform ─► Trainer ─► Evaluator ─► Pusher
                                                            (module)    (module)   (baseline,
                                                                                    AUC threshold)

The events of each 10-minute span are exported to ``<csv_root>/span-<k>/events.csv``
(:func:`export_span_csv`); CsvExampleGen ingests span k alone (a static
``RangeConfig``), with its default 2:1 hash split into train and eval.
StatisticsGen and SchemaGen look at that span. The user module
(``benchmarks/stock_module/stock_ads_module.py``) holds the ``preprocessing_fn``
(frequency vocabularies for the ids) and the Keras ``run_fn``. Two regimes:

* **stateless**: Transform and Trainer get every span so far (a ``Resolver``
  with ``SpanRangeStrategy``, spans 1..k): a cold retrain on all history;
* **stateful**: Transform and Trainer get span k alone, and the Trainer's
  ``base_model`` is the latest blessed model (``LatestBlessedModelStrategy``).

In both, the Evaluator compares the candidate with the latest blessed model
on span k's eval split and blesses it when its AUC is at least 0.6 and at most
0.005 below the baseline's (driftline's default gate on AUC); the Pusher copies
a blessed model to ``<home>/serving/<timestamp>/``. Beam runs with TFX's
defaults (DirectRunner; TFX stages an sdist of itself for each Beam component,
as it does for any user who passes no packaging flags).

    .venv/bin/python benchmarks/stock_tfx.py cycle --regime stateless --span 3 \\
        --csv-root DIR --home DIR --hparams '{"cold_epochs": 3, ...}'

prints one JSON line (import and run seconds, peak RSS) when the run succeeds.
:func:`read_cycle` then reads what the run did from its ML Metadata.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_FILE = os.path.join(ROOT, "benchmarks", "stock_module", "stock_ads_module.py")
REGIMES = ("stateless", "stateful")
# The columns of the export, in the event schema's order; the CSV header names them.
CSV_COLUMNS = ("event_id", "event_time", "user_id", "ad_id", "ad_category", "device", "hour_of_day", "price",
               "clicked")
EXAMPLE_GEN_ID = "CsvExampleGen"
SPAN_RESOLVER_ID = "span_resolver"
LATEST_BLESSED_ID = "latest_blessed_model_resolver"
TRAINER_ID = "Trainer"
EVALUATOR_ID = "Evaluator"
PUSHER_ID = "Pusher"
# The gate on AUC: min_auc as driftline's default, and the fixed max_auc_drop driftline used before its
# paired test (#25); stock TFMA thresholds compare values, they do not test a difference.
MIN_AUC = 0.6
MAX_AUC_DROP = 0.005


def pipeline_name(regime: str) -> str:
    return f"stock_{regime}"


def span_csv_path(csv_root: str, span: int) -> str:
    return os.path.join(csv_root, f"span-{span}", "events.csv")


def _cell(value: Any) -> str:
    # repr keeps a float exact and always with a '.', so CsvExampleGen infers FLOAT for the column.
    return repr(float(value)) if isinstance(value, float) else str(value)


def export_span_csv(events: Iterable[Mapping[str, Any]], path: str) -> int:
    """Writes the events (parsed dicts of the ad-click schema) as one CSV file; returns the row count."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = 0
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for event in events:
            writer.writerow([_cell(event[c]) for c in CSV_COLUMNS])
            rows += 1
    os.replace(tmp, path)
    return rows


# -- the pipeline (a fresh process per cycle) ---------------------------------------------------

def create_pipeline(regime: str, span: int, csv_root: str, home: str, hparams: Mapping[str, Any],
                    module_file: str = MODULE_FILE):
    import tensorflow_model_analysis as tfma
    from tfx import v1 as tfx

    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    example_gen = tfx.components.CsvExampleGen(
        input_base=csv_root,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="single_split",
                                                                   pattern="span-{SPAN}/*.csv")]),
        range_config=tfx.proto.RangeConfig(static_range=tfx.proto.StaticRange(
            start_span_number=span, end_span_number=span))).with_id(EXAMPLE_GEN_ID)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    components: List = [example_gen, statistics_gen, schema_gen]
    if regime == "stateless":
        span_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
            config={"range_config": tfx.proto.RangeConfig(static_range=tfx.proto.StaticRange(
                start_span_number=1, end_span_number=span))},
            examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples,
                                     producer_component_id=EXAMPLE_GEN_ID, output_key="examples"),
        ).with_id(SPAN_RESOLVER_ID)
        # The resolver reads MLMD, not a channel of this run: it must run after this run's span is published.
        span_resolver.add_upstream_node(example_gen)
        components.append(span_resolver)
        train_examples = span_resolver.outputs["examples"]
    else:
        train_examples = example_gen.outputs["examples"]
    transform = tfx.components.Transform(examples=train_examples, schema=schema_gen.outputs["schema"],
                                         module_file=module_file)
    latest_blessed = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(LATEST_BLESSED_ID)
    trainer_kwargs = {"base_model": latest_blessed.outputs["model"]} if regime == "stateful" else {}
    trainer = tfx.components.Trainer(
        module_file=module_file, examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"], schema=schema_gen.outputs["schema"],
        custom_config=dict(hparams), **trainer_kwargs).with_id(TRAINER_ID)
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key="clicked",
                                    prediction_key="probability")],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": MIN_AUC}),
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -MAX_AUC_DROP}))),
        ])])
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=latest_blessed.outputs["model"], eval_config=eval_config).with_id(EVALUATOR_ID)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(home, "serving")))).with_id(PUSHER_ID)
    components += [transform, latest_blessed, trainer, evaluator, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name(regime), pipeline_root=os.path.join(home, "pipeline_root"),
        components=components,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(home, "metadata.sqlite")))


def cycle_main(argv: Optional[List[str]] = None) -> int:
    """One cron-fired cycle in this (fresh) process; prints a JSON line."""
    p = argparse.ArgumentParser(prog="stock_tfx.py cycle")
    p.add_argument("--regime", choices=REGIMES, required=True)
    p.add_argument("--span", type=int, required=True)
    p.add_argument("--csv-root", required=True)
    p.add_argument("--home", required=True)
    p.add_argument("--hparams", required=True, help="JSON: the Trainer's custom_config")
    args = p.parse_args(argv)
    started = time.monotonic()
    # TFX 1.16 trains Keras 2 models (tf_keras), as its templates do.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from absl import logging as absl_logging
    from tfx import v1 as tfx

    imported = time.monotonic()
    absl_logging.set_verbosity(absl_logging.WARNING)
    os.makedirs(args.home, exist_ok=True)
    pipeline = create_pipeline(args.regime, args.span, os.path.abspath(args.csv_root), os.path.abspath(args.home),
                               json.loads(args.hparams))
    tfx.orchestration.LocalDagRunner().run(pipeline)
    import resource

    print(json.dumps({"import_s": round(imported - started, 2), "run_s": round(time.monotonic() - imported, 2),
                      "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
          flush=True)
    return 0


# -- what a run did, from its ML Metadata --------------------------------------------------------

def read_cycle(home: str, regime: str) -> Dict[str, Any]:
    """The newest run of the regime's pipeline: component seconds, model, blessing and push, from MLMD."""
    from benchmarks.cycle import component_seconds
    from pipelines.metadata import latest_run_context, open_store, prop, run_outputs

    name = pipeline_name(regime)
    store = open_store(os.path.join(home, "metadata.sqlite"))
    run_ctx = latest_run_context(store)
    if run_ctx is None:
        raise RuntimeError(f"no pipeline run in {home}/metadata.sqlite")
    outputs = run_outputs(store, name, run_ctx)
    executions = {e.id: e for e in store.get_executions_by_context(run_ctx.id)}

    def first(node: str, key: str):
        items = outputs.get(node, {}).get("outputs", {}).get(key, [])
        return items[0] if items else None

    examples = first(EXAMPLE_GEN_ID, "examples")
    model = first(TRAINER_ID, "model")
    blessing = first(EVALUATOR_ID, "blessing")
    pushed = first(PUSHER_ID, "pushed_model")
    pusher_exec = executions.get(outputs.get(PUSHER_ID, {}).get("execution_id"))
    is_pushed = pushed is not None and prop(pushed, "pushed", 0) == 1
    return {
        "run_id": run_ctx.name,
        "states": {node: v["state"] for node, v in outputs.items()},
        "components_s": {k: round(v, 2) for k, v in sorted(component_seconds(store, name, run_ctx).items())},
        "span": prop(examples, "span") if examples is not None else None,
        "model_uri": model.uri if model is not None else None,
        "blessed": None if blessing is None else prop(blessing, "blessed", 0) == 1,
        "pushed": is_pushed,
        "pushed_destination": prop(pushed, "pushed_destination") if is_pushed else None,
        # The Pusher's execution ends right after the copy: the moment the model serves.
        "pushed_at_ms": pusher_exec.last_update_time_since_epoch if is_pushed and pusher_exec else None,
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "cycle":
        print(__doc__, file=sys.stderr)
        print("usage: stock_tfx.py cycle --regime {stateless,stateful} --span K --csv-root DIR --home DIR "
              "--hparams JSON", file=sys.stderr)
        return 2
    return cycle_main(argv[1:])


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    raise SystemExit(main())
