"""What a user's `run_fn(fn_args)` receives, and what it may return.

The field names follow stock TFX's `FnArgs` where they mean the same thing
(`train_files`, `serving_model_dir`, `transform_graph_path`, `base_model`,
`custom_config`, ...), so a stock run_fn needs few changes. The additions say
how to train this cycle: warm or cold, at which learning rate, and which
replay inputs to sample.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional


@dataclasses.dataclass(frozen=True)
class TrainingInput:
    """One source of training examples: a file pattern, sampled at `fraction`."""

    file_pattern: str
    span: int
    split: str
    fraction: float = 1.0
    # Why it is trained on: "new" (this cycle's spans), "previous_eval" (the
    # split the previous cycle was evaluated on), "released_eval" (a split that
    # was carried to earlier gates for evidence, see training_inputs), or
    # "replay". The Model's `eval_inputs` use the same record for what the gate
    # scores on: "carried_eval" and "newest_eval".
    role: str = "new"


@dataclasses.dataclass
class WarmStartFnArgs:
    training_inputs: List[TrainingInput]
    eval_files: List[str]
    transform_graph_path: str
    serving_model_dir: str
    model_dir: str
    model_run_dir: str
    # The base model's artifact folder when this cycle warm-starts, else None.
    base_model: Optional[str]
    warm_start: bool
    start_reason: str
    epochs: int
    learning_rate: float
    learning_rate_schedule: str
    batch_size: int
    seed: int
    label_key: str
    id_key: str
    custom_config: Dict[str, Any]

    @property
    def train_files(self) -> List[str]:
        return [i.file_pattern for i in self.training_inputs]

    @property
    def transform_output(self) -> str:  # stock FnArgs' deprecated alias
        return self.transform_graph_path


@dataclasses.dataclass
class TrainResult:
    """What run_fn reports back; recorded on the Model artifact.

    A run_fn may also return None; the cycle's own decision is recorded then.
    `warm_start` can end up False even when the cycle asked for a warm start:
    the base weights may still fail to load (a shape mismatch), and then the
    run_fn cold-starts and says why.
    """

    warm_start: bool
    start_reason: str
    final_loss: float
    steps: int
    examples: int
    examples_by_role: Dict[str, int] = dataclasses.field(default_factory=dict)
    # The positive labels among them, per role (`data.positives_by_role`): what the gate's label-shift check
    # reads the recent spans' label rate from. Empty: not reported (the check then uses the serving model).
    positives_by_role: Dict[str, int] = dataclasses.field(default_factory=dict)
