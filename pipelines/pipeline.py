"""Pipeline composition from one `DriftlineConfig`.

One cycle::

    StreamingExampleGen ─► Transform (stock) ─► WarmStartTrainer ─► DriftlineEvaluator ─► BlessingPusher
          │ Examples(span)       │ TransformGraph     ▲ base_model          ▲ baseline_model
          │                      │                    │ replay_examples     │
          └──── ImportSchemaGen ─┘      latest_blessed_model_resolver ──────┘   replay_resolver

With `config.join` set, JoinExampleGen (impressions joined to their outcomes) takes
StreamingExampleGen's place under the same node id, and the rest of the graph reads
its spans unchanged (`local_example_gen`; local only).

Between the evaluator and the pusher sits the LatencyValidator (when
`config.latency.enabled`): it load-tests the candidate on the newest span's
eval split, and the pusher needs its `InfraBlessing` as well as the
evaluator's `ModelBlessing`.

Thin spans: `carried_eval_resolver` (`CarriedEvalSpansStrategy`) hands the
trainer and the evaluator the spans whose eval splits a verdict without
enough evidence carried to this cycle (scored, not trained on), and the
trainer those a decided verdict released (trained on); see
components/warm_start_trainer/training_inputs.py. Off with
`gate.max_carried_eval_spans: 0`.

The base model and the baseline are the same thing, the latest blessed
model, resolved from ML Metadata across runs; so is the replay window. In
online mode (`online.enabled`) they are the serving champion instead: a
blessed candidate is only a challenger until live traffic promotes it.
After `driftline rollback` they are the model rolled back to, pinned in ML
Metadata, until `driftline unpin` (`PinnedOrLatestBlessedModelStrategy`).

`target="vertex"` builds the same graph for Vertex AI Pipelines, which runs
no custom drivers, compiles only the stock LatestArtifactStrategy and
LatestBlessedModelStrategy resolvers, and takes one artifact per output:

* the base model and the baseline are the latest blessed model: a pin
  (a local `driftline rollback`) is not honoured there;

* StreamingExampleGen is driverless: its committed position comes from the
  newest `Examples` of the pipeline (`latest_examples_resolver`), and each
  run publishes one span;
* that same newest `Examples` is the replay window (one span, the previous),
  replayed only when the base model was judged on it (`replay_judged_only`);
* the TFMD schema is written at run time by EventSchemaGen instead of from a
  file ImportSchemaGen would need on GCS at compile time;
* no metadata connection (Vertex ML Metadata), Beam steps on Dataflow;
* no carried eval splits (`carried_eval_resolver`, a custom strategy): a
  verdict with too little evidence is not carried over; each cycle is
  judged on its newest span's eval split alone.
"""
from __future__ import annotations

import os
from typing import List

from tfx import v1 as tfx

from components.streaming_example_gen import StreamingExampleGen
from pipelines.config import DriftlineConfig
from pipelines.metadata import connection_config
from pipelines.metadata import (  # noqa: F401 (re-exported: the node ids of this pipeline)
    BASE_MODEL_RESOLVER_ID, EVALUATOR_ID, LATENCY_VALIDATOR_ID, PUSHER_ID, REPLAY_RESOLVER_ID, RESUME_RESOLVER_ID,
    STREAMING_EXAMPLE_GEN_ID, TRAINER_ID, TRANSFORM_ID)
PREPROCESSING_FN = "transforms.stream.preprocessing_fn"
LOCAL = "local"
VERTEX = "vertex"
TARGETS = (LOCAL, VERTEX)
# Vertex only: the newest Examples of the pipeline (committed position and replay window).
LATEST_EXAMPLES_RESOLVER_ID = "latest_examples_resolver"
SCHEMA_GEN_ID = "EventSchemaGen"
# Local only: the spans whose eval splits are carried to the gate, and released (thin spans).
CARRIED_EVAL_RESOLVER_ID = "carried_eval_resolver"


def _pipeline(config: DriftlineConfig, components: List, target: str = LOCAL) -> tfx.dsl.Pipeline:
    if target == VERTEX:
        return tfx.dsl.Pipeline(pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
                                components=components, beam_pipeline_args=config.vertex_beam_args())
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        metadata_connection_config=connection_config(config.metadata_connection),
        beam_pipeline_args=config.beam_args(),
    )


def dedup_horizon_runs(config: DriftlineConfig) -> int:
    """The window's dedup horizon in ingest runs; by default as many as the replay window has spans."""
    if config.window.dedup_horizon_runs is not None:
        return config.window.dedup_horizon_runs
    return max(config.trainer.replay_spans, 1)


def local_example_gen(config: DriftlineConfig):
    """The local pipeline's example gen: StreamingExampleGen, or JoinExampleGen when `config.join` is set.

    Both take the node id STREAMING_EXAMPLE_GEN_ID, so the controller, status, lineage, retention, recovery and
    rollback find the spans where they always do; the committed state on the artifacts tells the two apart
    (a join's refuses to be read as a stream's, and the other way round).
    """
    if config.join is not None:
        from components.streaming_example_gen.join_component import JoinExampleGen

        # The join needs at least one run's impression ids to tell a late outcome from an orphan.
        # Online evaluation: each span also counts each arm's impressions and successes (the comparison's evidence).
        return JoinExampleGen(config.join, config.window, chunk_bytes=config.source.chunk_bytes,
                              dedup_horizon_runs=max(dedup_horizon_runs(config), 1),
                              reward_field=config.online.reward_field if config.online.enabled else None,
                              ).with_id(STREAMING_EXAMPLE_GEN_ID)
    return StreamingExampleGen.from_config(
        config.source, config.window, dedup_horizon_runs=dedup_horizon_runs(config)).with_id(STREAMING_EXAMPLE_GEN_ID)


def create_ingest_pipeline(config: DriftlineConfig, with_statistics: bool = False) -> tfx.dsl.Pipeline:
    """StreamingExampleGen (JoinExampleGen in join mode) alone, or followed by stock StatisticsGen and SchemaGen.

    Stock StatisticsGen reads one `Examples` artifact, while a run may emit
    several spans; it is given the newest span of the run.
    """
    config.validate()
    example_gen = local_example_gen(config)
    components: List = [example_gen]
    if with_statistics:
        from tfx.dsl.input_resolution.canned_resolver_functions import latest_created

        newest_span = latest_created(example_gen.outputs["examples"], n=1)
        statistics_gen = tfx.components.StatisticsGen(examples=newest_span)
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
        components += [statistics_gen, schema_gen]
    return _pipeline(config, components)


def schema_file(config: DriftlineConfig) -> str:
    return os.path.join(config.home, "schema", "schema.pbtxt")


def create_pipeline(config: DriftlineConfig, resume: bool = False, target: str = LOCAL) -> tfx.dsl.Pipeline:
    """The continuous-training cycle: ingest closed spans, train, evaluate, maybe push.

    `resume=True` builds a resumed cycle (see pipelines/recovery.py): instead
    of ingesting, it trains on the spans an interrupted cycle published but
    no judged model trained on (`untrained_spans_resolver`); the rest of the
    graph is the same. `target`: "local" (LocalDagRunner, SQLite ML Metadata)
    or "vertex" (see the module doc).
    """
    from components.blessing_pusher import BlessingPusher
    from components.evaluator import DriftlineEvaluator
    from components.warm_start_trainer import WarmStartTrainer
    from components.warm_start_trainer.resolvers import (CarriedEvalSpansStrategy, LatestSpansStrategy,
                                                         PinnedOrLatestBlessedModelStrategy, UntrainedSpansStrategy)
    from transforms import stream
    from transforms.schema import write_tfmd_schema

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    vertex = target == VERTEX
    if vertex:
        if config.join is not None:
            from pipelines.config import ConfigError

            raise ConfigError("join is set: JoinExampleGen runs only on the local controller so far (its driver "
                              "reads the committed join state; Vertex runs no custom drivers); drop the join "
                              "section to compile for Vertex")
        config.validate_for_vertex()
    else:
        config.validate()
    schema = config.source.schema
    if resume and vertex:
        raise ValueError("resume=True is for the local controller's crash recovery; on Vertex every run is a "
                         "fresh pipeline run and an interrupted one is simply rerun")
    if resume:
        example_gen = tfx.dsl.Resolver(
            strategy_class=UntrainedSpansStrategy, config={"pipeline_name": config.pipeline_name},
            examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples)).with_id(RESUME_RESOLVER_ID)
    elif vertex:
        # Runs before anything of this run is published: it sees the previous run's newest span.
        latest_examples = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
            examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
        ).with_id(LATEST_EXAMPLES_RESOLVER_ID)
        example_gen = StreamingExampleGen.from_config(
            config.source, config.window, driverless=True,
            previous_examples=latest_examples.outputs["examples"]).with_id(STREAMING_EXAMPLE_GEN_ID)
    else:
        example_gen = local_example_gen(config)
    if vertex:
        from components.event_schema_gen import EventSchemaGen

        schema_gen = EventSchemaGen(schema=schema).with_id(SCHEMA_GEN_ID)
    else:
        # Derived from the declared event schema, the same every cycle: spans are
        # validated against it rather than each inferring its own.
        schema_gen = tfx.components.ImportSchemaGen(schema_file=write_tfmd_schema(schema, schema_file(config)))
    transform_kwargs = {}
    if config.transform.uses_analyzers:
        analyzer_cache = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
            cache=tfx.dsl.Channel(type=tfx.types.standard_artifacts.TransformCache),
        ).with_id("analyzer_cache_resolver")
        transform_kwargs["analyzer_cache"] = analyzer_cache.outputs["cache"]
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN, custom_config=stream.custom_config(schema, config.transform),
        # The trainer applies the transform graph on the fly: no copy of the data per cycle.
        materialize=False,
        # TFDV statistics of every span would be computed here each cycle; ingestion already
        # validated every event against the event schema (the rest went to the dead-letter output).
        disable_statistics=True, **transform_kwargs).with_id(TRANSFORM_ID)
    if vertex:
        # A custom strategy does not compile for Vertex: there the latest blessed model, pin or not.
        base_strategy = {"strategy_class": tfx.dsl.experimental.LatestBlessedModelStrategy}
    else:
        # The model a rollback pinned while the pin stands, else the latest blessed model.
        # Online evaluation: the serving champion, not a challenger the latest blessing may name.
        base_strategy = {"strategy_class": PinnedOrLatestBlessedModelStrategy,
                         "config": {"pipeline_name": config.pipeline_name, "champion": config.online.enabled}}
    latest_blessed = tfx.dsl.Resolver(
        **base_strategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(BASE_MODEL_RESOLVER_ID)
    if vertex:
        # A custom strategy does not compile for Vertex: the replay window is the previous span.
        replay_examples = latest_examples.outputs["examples"]
    else:
        replay = tfx.dsl.Resolver(
            strategy_class=LatestSpansStrategy,
            # One more than the window: the resolver may see a span of this cycle.
            config={"num_spans": config.trainer.replay_spans + 1},
            examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
        ).with_id(REPLAY_RESOLVER_ID)
        replay_examples = replay.outputs["examples"]
    carried = None
    if not vertex and config.gate.max_carried_eval_spans > 0:
        # Thin spans: eval splits a verdict without evidence carried to this cycle's gate, and those a
        # decided verdict released to training (training_inputs.carried_and_released).
        carried = tfx.dsl.Resolver(
            strategy_class=CarriedEvalSpansStrategy,
            config={"pipeline_name": config.pipeline_name, "max_spans": config.gate.max_carried_eval_spans},
            carried=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
            released=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples),
        ).with_id(CARRIED_EVAL_RESOLVER_ID)
    trainer = WarmStartTrainer(
        examples=example_gen.outputs["examples"], transform_graph=transform.outputs["transform_graph"],
        schema=schema, transform=config.transform, trainer=config.trainer,
        replay_examples=replay_examples, base_model=latest_blessed.outputs["model"],
        replay_judged_only=vertex,
        carried_eval_examples=carried.outputs["carried"] if carried is not None else None,
        released_eval_examples=carried.outputs["released"] if carried is not None else None).with_id(TRAINER_ID)
    evaluator = DriftlineEvaluator.from_config(
        config.gate, schema, examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=latest_blessed.outputs["model"],
        carried_examples=carried.outputs["carried"] if carried is not None else None,
        join=config.join).with_id(EVALUATOR_ID)  # join mode: the off-policy estimate reads its impressions
    latency = None
    if config.latency.enabled:
        from components.latency_validator import LatencyValidator

        latency = LatencyValidator.from_config(
            config.latency, schema, model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
            transform_graph=transform.outputs["transform_graph"],
            model_blessing=evaluator.outputs["blessing"]).with_id(LATENCY_VALIDATOR_ID)
    pusher = BlessingPusher.from_config(
        config.pusher, model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        infra_blessing=latency.outputs["blessing"] if latency is not None else None,
        serving_dir=config.serving_dir, challenger_mode=config.online.enabled).with_id(PUSHER_ID)
    if vertex:
        components = [latest_examples, example_gen, schema_gen, transform, latest_blessed, trainer, evaluator]
    else:
        components = [example_gen, schema_gen, transform, latest_blessed, replay]
        components += [carried] if carried is not None else []
        components += [trainer, evaluator]
    components += [latency, pusher] if latency is not None else [pusher]
    if config.transform.uses_analyzers:
        components.insert(components.index(transform), analyzer_cache)
    return _pipeline(config, components, target)
