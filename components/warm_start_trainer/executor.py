"""WarmStartTrainer executor: a thin `Do()` around `cycle.train_cycle`."""
from __future__ import annotations

import json
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils

from components import lease, mlmd_vocabulary as vocab
from components.event_schema import EventSchema
from components.warm_start_trainer import cycle, training_inputs, warm_start
from components.warm_start_trainer.config import TrainerConfig


REPLAY_JUDGED_ONLY_KEY = "replay_judged_only"


def _spans(artifacts: List[types.Artifact]):
    return [(a.span, a.uri) for a in artifacts]


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        base_artifacts = input_dict.get("base_model") or []
        base = None
        if base_artifacts:
            b = max(base_artifacts, key=lambda a: a.id)
            newest = b.get_int_custom_property("newest_span") if b.has_custom_property("newest_span") else None
            base = cycle.BaseModel(b.id, b.uri, {k: b.get_string_custom_property(k)
                                                 for k in warm_start.FINGERPRINT_KEYS}, newest)
        model = artifact_utils.get_single_instance(output_dict["model"])
        model_run = artifact_utils.get_single_instance(output_dict["model_run"])
        current = input_dict["examples"]
        earlier = _spans(input_dict.get("replay_examples") or [])
        if exec_properties.get(REPLAY_JUDGED_ONLY_KEY):
            earlier = training_inputs.judged_only(earlier, base.newest_span if base else None)
        props = cycle.train_cycle(
            config=TrainerConfig.from_dict(json.loads(exec_properties["trainer_config"])),
            schema=EventSchema.from_json(exec_properties["event_schema"]),
            custom_config=json.loads(exec_properties["custom_config"]),
            transform_fingerprint=exec_properties["transform_fingerprint"],
            transform_graph_path=artifact_utils.get_single_uri(input_dict["transform_graph"]),
            current=_spans(current), earlier=earlier,
            carried=_spans(input_dict.get("carried_eval_examples") or []),
            released=_spans(input_dict.get("released_eval_examples") or []),
            base=base, model_uri=model.uri, model_run_uri=model_run.uri)
        newest = max(current, key=lambda a: a.span)
        props[vocab.MAX_EVENT_TIME_MS_PROPERTY] = newest.get_int_custom_property(vocab.MAX_EVENT_TIME_MS_PROPERTY)
        props["newest_examples_id"] = newest.id
        vocab.set_custom_properties(model, props)
        # Under a controller's lease: a model trained by a holder that lost it is not published.
        lease.fence(f"the model trained on spans {props['trained_spans']}")
        logging.info("WarmStartTrainer: %s; trained spans %s, %s examples, %.1f s", props["start_reason"],
                     props["trained_spans"], props["trained_examples"], props["train_wall_seconds"])
