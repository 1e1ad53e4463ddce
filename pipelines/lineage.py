"""The lineage and status of a driftline pipeline, read from ML Metadata.

A small, plain API for your own code or a notebook. Everything comes from ML
Metadata (invariant 1: no side files), plus the serving folder for which
version is serving now and the controller's lock file for whether a
controller runs::

    from pipelines.config import default_config
    from pipelines import lineage

    config = default_config("demo_home")
    for m in lineage.models(config.metadata_connection, config.pipeline_name):   # oldest first
        print(m.model_id, m.start, m.blessed, m.candidate and m.candidate.auc, m.pushed_version)

    serving = lineage.serving(config.metadata_connection, config.serving_dir, config.pipeline_name)
    chain = lineage.chain(config.metadata_connection, config.pipeline_name, serving_dir=config.serving_dir)
    print(lineage.format_lineage(chain, serving))     # the serving model back to its last cold start

    st = lineage.status(config)
    print(lineage.format_status(st))
    print(lineage.to_json(st))                        # or lineage.to_json(chain)

Where each fact comes from:

* `Model` artifacts (WarmStartTrainer): warm or cold and why, the base model
  (`base_model_id`, -1 for a cold start: the lineage chain), spans trained,
  examples by role, the newest event time learned from, train seconds, loss.
* `ModelBlessing` artifacts (DriftlineEvaluator), matched on
  `current_model_id`: blessed and the reason, and `verdict_json`, which holds
  every metric of the candidate and of the baseline on identical eval data.
* `InfraBlessing` artifacts (LatencyValidator), matched on `model_id`: the
  load test's verdict, p50/p95/p99 latency, throughput, and the shares of
  parsing, transform graph and model.
* `PushedModel` artifacts (BlessingPusher, and `driftline.Rollback`
  executions), matched on `model_id`: the pushed version and when, and the
  rollbacks that served a model again (those carry `rollback_of`).
* `Examples` artifacts (StreamingExampleGen): spans, events, late and
  dead-lettered events.
* The trainer's input events: the `TransformGraph` a model was trained with
  (`transform_graph_uri`).
* The latest `pipeline_run` context: the last cycle's outcome.
* `driftline.CycleFailure` executions (pipelines/failures.py): the last
  failed cycle and the failures in a row; `driftline.SpanQuarantine` and
  `driftline.SpanReplay`: the spans quarantined after failing cycles.
* `driftline.Rollback` and `driftline.Unpin` executions: the pin that
  stands, the model a rollback pinned as base model and baseline
  (`components.blessing_pusher.rollback.current_pin`).

Retention (pipelines/retention.py) deletes old payloads but keeps every
record, marked DELETED: such artifacts are read like any other, and
`payload_deleted` on a model or span says that only the record is left.

Nothing here imports TensorFlow or TFX; ML Metadata is the only heavy import.

The code lives in four parts, re-exported here under the same names: the records
(pipelines/lineage_records.py), the queries (pipelines/lineage_queries.py), the controller lock
(pipelines/controller_lock.py), and the text and JSON forms (pipelines/status_text.py).
"""
from __future__ import annotations

from components.mlmd_vocabulary import (BLESSING_TYPE, INFRA_BLESSING_TYPE, MODEL_TYPE,  # noqa: F401
                                        PIPELINE_CONTEXT_TYPE, PIPELINE_RUN_CONTEXT_TYPE, PUSHED_MODEL_TYPE,
                                        TRANSFORM_GRAPH_TYPE)
# Names this module has always offered callers (e.g. lineage.current_pin, lineage.quarantined_spans in the CLI).
from components.blessing_pusher.rollback import Pin, current_pin  # noqa: F401
from pipelines.failures import (FailureRecord, QuarantinedSpan, consecutive_failures,  # noqa: F401
                                last_failure, quarantined_spans)
from pipelines.metadata import (EVALUATOR_ID, PUSHER_ID, RESUME_RESOLVER_ID,  # noqa: F401
                                STREAMING_EXAMPLE_GEN_ID, TRAINER_ID, ingested_spans, open_store, prop, run_outputs)
from pipelines.lineage_records import (  # noqa: F401
    LineageError,
    EvalMetrics,
    LatencyRecord,
    RollbackRecord,
    ModelRecord,
    ServingInfo,
    CycleOutcome,
    ControllerState,
    Status,
)
from pipelines.controller_lock import (  # noqa: F401
    CONTROLLER_LOCK_FILE,
    controller_lock_path,
    pid_alive,
    controller_state,
)
from pipelines.lineage_queries import (  # noqa: F401
    ROLLBACK_EXECUTION_TYPE,
    StoreOrPath,
    connect,
    models,
    transform_graph_uri,
    serving,
    chain,
    walk_chain,
    latest_pushed_model_id,
    serving_events,
    last_cycle,
    cycle_outcome,
    status,
)
from pipelines.status_text import (  # noqa: F401
    to_json,
    lineage_to_dict,
    _spans,
    format_ms,
    format_duration,
    format_status,
    quarantine_lines,
    gate_tests_text,
    off_policy_text,
    format_lineage,
)
