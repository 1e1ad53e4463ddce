"""DriftlineEvaluator: the spec and the component class."""
from __future__ import annotations

import json
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.event_schema import ad_click_schema
from components.evaluator import executor as executor_lib
from components.evaluator.executor import Executor
from components.evaluator.config import GateConfig
from pipelines.config import DriftlineConfig


class DriftlineEvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {
        executor_lib.GATE_CONFIG_KEY: ExecutionParameter(type=str),  # GateConfig.to_dict() as JSON
        executor_lib.LABEL_KEY_KEY: ExecutionParameter(type=str),
        executor_lib.EVAL_SPLIT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        executor_lib.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor_lib.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor_lib.BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
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
    model) only the absolute bounds of `GateConfig` apply. Outputs are stock
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
                 label_key: Optional[str] = None, eval_split: str = executor_lib.DEFAULT_EVAL_SPLIT):
        gate = gate or GateConfig()
        spec = DriftlineEvaluatorSpec(
            gate_config=json.dumps(gate.to_dict(), sort_keys=True),
            label_key=label_key or ad_click_schema().label_field,
            eval_split=eval_split,
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        )
        super().__init__(spec=spec)

    @classmethod
    def from_config(cls, config: DriftlineConfig, examples: types.BaseChannel, model: types.BaseChannel,
                    baseline_model: Optional[types.BaseChannel] = None) -> "DriftlineEvaluator":
        """The gate and label field of `config` (validated against its event schema)."""
        config.gate.validate(config.source.schema)
        return cls(examples=examples, model=model, baseline_model=baseline_model, gate=config.gate,
                   label_key=config.source.schema.label_field)
