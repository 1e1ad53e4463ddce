"""LatencyValidator: the spec and the component class."""
from __future__ import annotations

import json
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.config_base import ConfigError
from components.event_schema import EventSchema
from components.latency_validator import executor as executor_lib
from components.latency_validator.config import LatencyConfig


class LatencyValidatorSpec(types.ComponentSpec):
    PARAMETERS = {
        executor_lib.LATENCY_CONFIG_KEY: ExecutionParameter(type=str),  # LatencyConfig.to_dict() as JSON
        executor_lib.LABEL_KEY_KEY: ExecutionParameter(type=str, optional=True),
        executor_lib.EVAL_SPLIT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        executor_lib.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor_lib.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor_lib.TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph, optional=True),
        executor_lib.MODEL_BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
    }
    OUTPUTS = {executor_lib.BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing)}


class LatencyValidator(base_component.BaseComponent):
    """Load-tests the candidate `Model` on requests replayed from the newest span's eval split.

    Loads the model's serving SavedModel (`<uri>/Format-Serving`, signature
    `serving_default` over serialized tf.Examples) in process and replays
    requests of `candidates_per_request` eval examples (label removed) at
    every batch size of `LatencyConfig`, from `concurrency` client threads for
    `seconds_per_batch_size` each; with `transform_graph`, it also times
    parsing and the transform graph apart from the whole model (see
    `loadtest`). Blessed when no call failed and the p99 request latency at
    the best batch size is within `slo_p99_ms`.

    With `model_blessing` (the evaluator's verdict on the same model), a
    candidate the evaluator refused is not load-tested (`skip_unblessed`):
    it would not be pushed anyway; the blessing says so.

    Output `blessing`: a stock `InfraBlessing` (stock Pusher's `infra_blessing`
    reads it too) with the `INFRA_BLESSED`/`INFRA_NOT_BLESSED` marker file and
    custom properties `blessed` (int), `reason`, `model_id`, `eval_span`,
    `load_tested`, `slo_p99_ms`, `candidates_per_request`, `concurrency`,
    `batch_size`, `p50_ms`, `p95_ms`, `p99_ms`, `requests_per_second`,
    `candidates_per_second`, `parse_share`, `transform_share`, `model_share`,
    `profile_json` (every batch size), and `profile_uri`
    (`<uri>/latency_profile.json`, the same JSON).

    Example::

        latency = LatencyValidator(model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
                                   transform_graph=transform.outputs["transform_graph"],
                                   model_blessing=evaluator.outputs["blessing"],
                                   config=LatencyConfig(slo_p99_ms=50.0), label_key="clicked")
        pusher = BlessingPusher(model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
                                infra_blessing=latency.outputs["blessing"], serving_dir="serving/")
    """

    SPEC_CLASS = LatencyValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor_lib.Executor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
                 transform_graph: Optional[types.BaseChannel] = None,
                 model_blessing: Optional[types.BaseChannel] = None, config: Optional[LatencyConfig] = None,
                 label_key: Optional[str] = None, eval_split: str = executor_lib.DEFAULT_EVAL_SPLIT):
        config = config or LatencyConfig()
        config.validate()
        if not label_key:
            # No default: the label (removed from the requests) is the stream's, not the built-in ad stream's.
            raise ConfigError("LatencyValidator needs label_key, the label field of the stream's event schema "
                              "(schema.label_field); LatencyValidator.from_config(latency, schema, ...) passes it")
        spec = LatencyValidatorSpec(
            latency_config=json.dumps(config.to_dict(), sort_keys=True),
            label_key=label_key,
            eval_split=eval_split,
            model=model,
            examples=examples,
            transform_graph=transform_graph,
            model_blessing=model_blessing,
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
        )
        super().__init__(spec=spec)

    @classmethod
    def from_config(cls, latency: LatencyConfig, schema: EventSchema, model: types.BaseChannel,
                    examples: types.BaseChannel, transform_graph: Optional[types.BaseChannel] = None,
                    model_blessing: Optional[types.BaseChannel] = None) -> "LatencyValidator":
        """The latency settings, and the event schema's label field (removed from the requests)."""
        return cls(model=model, examples=examples, transform_graph=transform_graph, model_blessing=model_blessing,
                   config=latency, label_key=schema.label_field)
