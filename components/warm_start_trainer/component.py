"""WarmStartTrainer: the spec and the component class."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.event_schema import EventSchema
from components.warm_start_trainer import executor as executor_module
from components.warm_start_trainer.executor import Executor
from components.warm_start_trainer.config import TrainerConfig
from transforms.config import TransformConfig


class WarmStartTrainerSpec(types.ComponentSpec):
    PARAMETERS = {
        "trainer_config": ExecutionParameter(type=str),  # TrainerConfig JSON
        "event_schema": ExecutionParameter(type=str),  # EventSchema JSON
        "custom_config": ExecutionParameter(type=str),  # JSON handed to run_fn
        "transform_fingerprint": ExecutionParameter(type=str),
        # 1: replay only spans up to the base model's newest (see training_inputs.judged_only).
        executor_module.REPLAY_JUDGED_ONLY_KEY: ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "replay_examples": ChannelParameter(type=standard_artifacts.Examples, optional=True),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
        "base_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun),
    }


def run_fn_custom_config(schema: EventSchema, transform: TransformConfig) -> Dict[str, Any]:
    """What run_fn finds in fn_args.custom_config besides "model": the hashed features and numeric ones.

    Code that calls `cycle.train_cycle` outside the pipeline (benchmarks, the
    notebook) uses this too, so both train exactly what the component trains.
    """
    from transforms import stream

    # The JSON round trip is the one the component's exec property makes.
    return json.loads(json.dumps({"feature_buckets": stream.hash_buckets(schema, transform),
                                  "numeric_features": stream.numeric_features(schema, transform)},
                                 sort_keys=True))


class WarmStartTrainer(base_component.BaseComponent):
    """Trains this cycle's spans, continuing `base_model` when that is safe.

    `examples` are the new spans (the newest one's eval split is held out for
    the gate), `replay_examples` earlier spans to replay, `base_model` the
    latest blessed model, or the model a rollback pinned (resolve it with
    `resolvers.PinnedOrLatestBlessedModelStrategy`, or stock `LatestBlessedModelStrategy`).
    `replay_judged_only` is for a replay resolver that cannot leave out
    refused spans itself (on Vertex AI Pipelines). The
    `Model` records warm or cold and why, the base model's id, the spans and
    example counts, train wall/CPU seconds and the final loss.
    """

    SPEC_CLASS = WarmStartTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 schema: EventSchema, transform: TransformConfig, trainer: Optional[TrainerConfig] = None,
                 replay_examples: Optional[types.BaseChannel] = None,
                 base_model: Optional[types.BaseChannel] = None, replay_judged_only: bool = False):
        from transforms import stream

        trainer = trainer or TrainerConfig()
        trainer.validate()
        transform.validate(schema)
        spec = WarmStartTrainerSpec(
            trainer_config=json.dumps(trainer.to_dict(), sort_keys=True),
            event_schema=schema.to_json(),
            custom_config=json.dumps(run_fn_custom_config(schema, transform), sort_keys=True),
            transform_fingerprint=stream.transform_fingerprint(schema, transform),
            examples=examples, replay_examples=replay_examples, transform_graph=transform_graph,
            base_model=base_model, replay_judged_only=1 if replay_judged_only else None,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec)
