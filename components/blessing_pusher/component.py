"""BlessingPusher: the spec and the component class."""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.blessing_pusher import executor as executor_module
from components.blessing_pusher.config import PusherConfig
from components.config_base import ConfigError


class BlessingPusherSpec(types.ComponentSpec):
    PARAMETERS = {
        executor_module.SERVING_DIR_KEY: ExecutionParameter(type=str),
        executor_module.KEEP_VERSIONS_KEY: ExecutionParameter(type=int),
        # 1: online evaluation; a blessed model is not pushed over a serving one (it is deployed as the challenger).
        executor_module.CHALLENGER_MODE_KEY: ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        executor_module.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor_module.MODEL_BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
        # A second gate (the LatencyValidator); when given it must also be blessed. An InfraBlessing,
        # not a ModelBlessing: LatestBlessedModelStrategy takes any ModelBlessing with blessed=1 for
        # the evaluator's, so a latency pass must never look like one.
        executor_module.INFRA_BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing,
                                                             optional=True),
    }
    OUTPUTS = {executor_module.PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel)}


class BlessingPusher(base_component.BaseComponent):
    """Pushes a `Model` into TF Serving's `<serving_dir>/<version>/` folder, only when blessed.

    The model is pushed as a new highest version by copy-then-atomic-rename
    (see `serving.push`) when `model_blessing` (and `infra_blessing`, if
    given: the LatencyValidator's `InfraBlessing`) carry `blessed == 1`;
    then only the newest `keep_versions` versions are kept. Otherwise serving is untouched and the run still
    succeeds: the `PushedModel` output says `pushed=0` with the blessing's
    reason.

    With `challenger_mode` (online evaluation, `online.enabled`), a blessed model is pushed only when
    nothing serves yet (the first model); over a serving champion it is not pushed: the `PushedModel` says
    `pushed=0`, `challenger=1` and why, and the controller deploys the model as the challenger beside the
    champion (pipelines/online.py records the comparison in ML Metadata).

    Output `pushed_model` custom properties: `pushed` (int 1/0),
    `pushed_destination` and `pushed_version` (str, as stock Pusher),
    `model_id` (int), `reason` (str), `pushed_at_ms` (int).

    Example::

        pusher = BlessingPusher(model=trainer.outputs["model"],
                                model_blessing=evaluator.outputs["blessing"],
                                serving_dir="serving/", keep_versions=5)
    """

    SPEC_CLASS = BlessingPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor_module.Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel, serving_dir: str,
                 keep_versions: int = PusherConfig.keep_versions,
                 infra_blessing: Optional[types.BaseChannel] = None, challenger_mode: bool = False):
        if not serving_dir:
            raise ConfigError("BlessingPusher needs a serving_dir")
        PusherConfig(serving_dir=serving_dir, keep_versions=keep_versions).validate()
        spec = BlessingPusherSpec(
            model=model,
            model_blessing=model_blessing,
            infra_blessing=infra_blessing,
            serving_dir=serving_dir,
            keep_versions=int(keep_versions),
            challenger_mode=int(bool(challenger_mode)),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        super().__init__(spec=spec)

    @classmethod
    def from_config(cls, pusher: PusherConfig, model: types.BaseChannel, model_blessing: types.BaseChannel,
                    infra_blessing: Optional[types.BaseChannel] = None,
                    serving_dir: Optional[str] = None, challenger_mode: bool = False) -> "BlessingPusher":
        """The pusher settings; `serving_dir` overrides `pusher.serving_dir` (DriftlineConfig.serving_dir
        resolves its default, <home>/serving)."""
        return cls(model=model, model_blessing=model_blessing, serving_dir=serving_dir or pusher.serving_dir,
                   keep_versions=pusher.keep_versions, infra_blessing=infra_blessing,
                   challenger_mode=challenger_mode)
