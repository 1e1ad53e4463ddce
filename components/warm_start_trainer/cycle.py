"""One training cycle as a plain function: decide warm or cold, call run_fn, describe the result.

The executor turns artifacts into these arguments and the returned
properties back into custom properties on the `Model`; tests call this directly.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from components import mlmd_vocabulary as vocab
from components.event_schema import EventSchema
from components.warm_start_trainer import training_inputs as plan
from components.warm_start_trainer import warm_start
from components.streaming_example_gen.windowing import EVAL
from components.warm_start_trainer.fn_args import TrainingInput, TrainResult, WarmStartFnArgs
from components.warm_start_trainer.config import TrainerConfig

SERVING_DIR = "Format-Serving"  # stock TFX's serving model folder inside a Model artifact


@dataclasses.dataclass(frozen=True)
class BaseModel:
    artifact_id: int
    uri: str
    fingerprints: Dict[str, str]
    # The span whose eval split judged the base model; None if unknown.
    newest_span: Optional[int] = None


def import_run_fn(dotted_path: str) -> Callable[[WarmStartFnArgs], Optional[TrainResult]]:
    module_name, _, fn_name = dotted_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"trainer.run_fn {dotted_path!r}: cannot import module {module_name!r} ({e}). "
                         "It must be importable in the pipeline's environment (install your package).") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"trainer.run_fn {dotted_path!r}: module {module_name!r} has no function {fn_name!r}")
    return fn


def feature_set(schema: EventSchema) -> Dict[str, str]:
    return {f.name: f"{f.type}:{f.feature}" for f in schema.feature_fields()}


def train_cycle(*, config: TrainerConfig, schema: EventSchema, custom_config: Mapping[str, Any],
                transform_fingerprint: str, transform_graph_path: str,
                current: Sequence[Tuple[int, str]], earlier: Sequence[Tuple[int, str]],
                base: Optional[BaseModel], model_uri: str, model_run_uri: str,
                carried: Sequence[Tuple[int, str]] = (), released: Sequence[Tuple[int, str]] = ()
                ) -> Dict[str, Any]:
    """Trains one cycle and returns the custom properties for its `Model` artifact.

    `carried` / `released`: spans whose eval splits are held out for the gate / trained on in full
    (`training_inputs.carried_and_released`).
    """
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(transform_graph_path)
    transformed_spec = {k: repr(v) for k, v in tft_output.transformed_feature_spec().items()}
    current_fp = warm_start.fingerprints(
        feature_set=feature_set(schema), transform=transform_fingerprint, transformed_feature_spec=transformed_spec,
        run_fn=config.run_fn, model_config=config.model, feature_buckets=custom_config.get("feature_buckets", {}))
    warm, reason = warm_start.decide_start(base.artifact_id if base else None,
                                           base.fingerprints if base else {}, current_fp)
    inputs = plan.plan_training_inputs(current, earlier, config.replay_spans, config.replay_fraction, warm,
                                       previous_eval_span=base.newest_span if base else None,
                                       carried=carried, released=released)
    newest_span = max(s for s, _ in current)
    carried = sorted((s, u) for s, u in dict(carried).items() if s < newest_span)
    eval_inputs = [TrainingInput(plan.split_pattern(u, EVAL), s, EVAL, role="carried_eval") for s, u in carried]
    eval_inputs.append(TrainingInput(plan.split_pattern(dict(current)[newest_span], EVAL), newest_span, EVAL,
                                     role="newest_eval"))
    fn_args = WarmStartFnArgs(
        training_inputs=inputs, eval_files=plan.eval_files(current, carried),
        transform_graph_path=transform_graph_path,
        serving_model_dir=os.path.join(model_uri, SERVING_DIR), model_dir=model_uri, model_run_dir=model_run_uri,
        base_model=base.uri if (base and warm) else None, warm_start=warm, start_reason=reason,
        epochs=config.warm_epochs if warm else config.cold_epochs,
        learning_rate=config.warm_learning_rate if warm else config.cold_learning_rate,
        learning_rate_schedule=config.learning_rate_schedule, batch_size=config.batch_size, seed=config.seed,
        label_key=schema.label_field, id_key=schema.id_field,
        custom_config={**custom_config, "model": config.model,
                       warm_start.ARCHITECTURE: current_fp[warm_start.ARCHITECTURE]})
    run_fn = import_run_fn(config.run_fn)
    wall0, cpu0 = time.monotonic(), time.process_time()
    result = run_fn(fn_args)
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    if result is None:  # a run_fn that reports nothing: record the cycle's own decision
        result = TrainResult(warm_start=warm, start_reason=reason, final_loss=float("nan"), steps=-1, examples=-1)
    props: Dict[str, Any] = {
        "start": "warm" if result.warm_start else "cold",
        "start_reason": result.start_reason,
        "base_model_id": base.artifact_id if (base and result.warm_start) else -1,
        "candidate_base_model_id": base.artifact_id if base else -1,
        "newest_span": max(s for s, _ in current),
        "trained_spans": json.dumps(sorted({i.span for i in inputs})),
        "training_inputs": json.dumps([dataclasses.asdict(i) for i in inputs]),
        # What the gate scores this model on: the carried eval splits (never trained on) and the newest's.
        vocab.EVAL_INPUTS_PROPERTY: json.dumps([dataclasses.asdict(i) for i in eval_inputs]),
        vocab.CARRIED_EVAL_SPANS_PROPERTY: json.dumps([s for s, _ in carried]),
        "trained_examples": result.examples,
        vocab.TRAINED_EXAMPLES_BY_ROLE_PROPERTY: json.dumps(result.examples_by_role, sort_keys=True),
        vocab.TRAINED_POSITIVES_BY_ROLE_PROPERTY: json.dumps(result.positives_by_role, sort_keys=True),
        "train_wall_seconds": round(wall, 3),
        "train_cpu_seconds": round(cpu, 3),
        "final_loss": result.final_loss,
        "train_steps": result.steps,
        "epochs": fn_args.epochs,
        "learning_rate": fn_args.learning_rate,
        "run_fn": config.run_fn,
    }
    props.update(current_fp)
    _write_run_record(model_run_uri, props)
    return props


def _write_run_record(model_run_uri: str, props: Mapping[str, Any]) -> None:
    """The ModelRun artifact holds the cycle's record as JSON, next to anything run_fn wrote there."""
    import tensorflow as tf

    tf.io.gfile.makedirs(model_run_uri)
    with tf.io.gfile.GFile(os.path.join(model_run_uri, "train_record.json"), "w") as f:
        json.dump(dict(props), f, sort_keys=True, indent=1, default=str)
