"""DriftlineEvaluator: the spec and the component class."""
from __future__ import annotations

import json
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.config_base import ConfigError
from components.evaluator import executor as executor_lib
from components.evaluator.config import GateConfig
from components.evaluator.executor import Executor
from components.event_schema import EventSchema
from components.streaming_example_gen.join_component import join_config_to_json
from components.streaming_example_gen.join_config import JoinConfig


class DriftlineEvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {
        executor_lib.GATE_CONFIG_KEY: ExecutionParameter(type=str),  # GateConfig.to_dict() as JSON
        executor_lib.LABEL_KEY_KEY: ExecutionParameter(type=str),
        executor_lib.EVAL_SPLIT_KEY: ExecutionParameter(type=str, optional=True),
        executor_lib.JOIN_CONFIG_KEY: ExecutionParameter(type=str, optional=True),  # join_config_to_json
    }
    INPUTS = {
        executor_lib.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor_lib.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor_lib.BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        executor_lib.CARRIED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        executor_lib.EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation),
        executor_lib.BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class DriftlineEvaluator(base_beam_component.BaseBeamComponent):
    """Scores the candidate and the baseline with TFMA on the newest span's eval split, and gates.

    `examples` may carry several spans; the one with the largest `span` is
    used, so both models are judged on identical data that is later than
    anything the candidate trained on (when the pipeline wires the spans so).
    `baseline_model` is the latest blessed model (or the model a rollback
    pinned, see `PinnedOrLatestBlessedModelStrategy`); without one (the first
    model) only the absolute bounds of `GateConfig` apply. `carried_examples`
    (optional) are earlier spans whose eval splits a verdict without enough
    evidence carried to this cycle (`resolvers.CarriedEvalSpansStrategy`):
    both models are scored on their eval splits and the newest span's, as one
    data set. `join` (join mode: JoinExampleGen's config) lets the gate read the impressions log and make
    the off-policy estimate of the candidate's CTR (`off_policy_run`, `GateConfig.off_policy*`). Outputs are stock
    TFX artifacts: `evaluation` (a `ModelEvaluation`, standard TFMA output
    that `tfma.load_eval_result` reads) and `blessing` (a `ModelBlessing` with
    the `BLESSED`/`NOT_BLESSED` marker and the properties stock
    `LatestBlessedModelStrategy` reads, plus `reason`, `verdict_json`, ...).

    Example::

        evaluator = DriftlineEvaluator(examples=example_gen.outputs["examples"],
                                       model=trainer.outputs["model"],
                                       baseline_model=latest_blessed.outputs["model"],
                                       gate=GateConfig(min_auc=0.65), label_key="clicked")
        pusher = Pusher(model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"], ...)
    """

    SPEC_CLASS = DriftlineEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel,
                 baseline_model: Optional[types.BaseChannel] = None, gate: Optional[GateConfig] = None,
                 label_key: Optional[str] = None, eval_split: str = executor_lib.DEFAULT_EVAL_SPLIT,
                 carried_examples: Optional[types.BaseChannel] = None, join: Optional[JoinConfig] = None):
        gate = gate or GateConfig()
        if not label_key:
            # No default: the label is the stream's, not the built-in ad stream's.
            raise ConfigError("DriftlineEvaluator needs label_key, the label field of the stream's event schema "
                              "(schema.label_field); DriftlineEvaluator.from_config(gate, schema, ...) passes it")
        spec = DriftlineEvaluatorSpec(
            gate_config=json.dumps(gate.to_dict(), sort_keys=True),
            label_key=label_key,
            eval_split=eval_split,
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            carried_examples=carried_examples,
            join_config=join_config_to_json(join) if join is not None else None,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        )
        super().__init__(spec=spec)

    @classmethod
    def from_config(cls, gate: GateConfig, schema: EventSchema, examples: types.BaseChannel,
                    model: types.BaseChannel, baseline_model: Optional[types.BaseChannel] = None,
                    carried_examples: Optional[types.BaseChannel] = None,
                    join: Optional[JoinConfig] = None) -> "DriftlineEvaluator":
        """The gate (validated against the event schema) and the schema's label field; `join` in join mode."""
        gate.validate(schema)
        return cls(examples=examples, model=model, baseline_model=baseline_model, gate=gate,
                   label_key=schema.label_field, carried_examples=carried_examples, join=join)
