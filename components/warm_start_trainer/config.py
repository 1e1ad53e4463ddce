"""WarmStartTrainer's settings: how each cycle trains.

Composed into DriftlineConfig by pipelines/config.py, which re-exports this name.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

from components.config_base import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """How each cycle trains. Warm cycles continue the base model; cold ones start fresh."""

    # Dotted path of the user module's run_fn (no module file: no wheel is built per cycle).
    run_fn: str = "pipelines.ads_model.run_fn"
    cold_epochs: int = 3
    # One pass over the new span at 0.005 (benchmarks/learning.py, with the count features below: they
    # carry each id's history, so a second pass over the span only fits its noise; without counts two
    # passes were best, benchmarks/cost.py).
    warm_epochs: int = 1
    cold_learning_rate: float = 0.01
    # Lower than cold: a warm start refines weights that are already good.
    warm_learning_rate: float = 0.005
    # "constant" or "cosine" decay over the cycle's steps.
    learning_rate_schedule: str = "constant"
    batch_size: int = 256
    # Replay window, against forgetting: the newest `replay_spans` earlier
    # spans, their train split sampled at `replay_fraction`. The previous
    # span's eval split is always trained in full: it was only evaluated on.
    # 0.03, chosen over 0.1 by benchmarks/learning.py's rule (RESULTS.md,
    # learning): with the model's penalties, better on both example streams'
    # 10,000-event spans on every one of four selection seeds, and within the
    # rule's tolerance on 1,000-event spans. Without the penalties, 0.03 had
    # given the closed loop's thin live spans (tests/test_closed_loop.py)
    # candidates refused for an AUC below the gate's minimum in 2 of 4 runs;
    # with them, none in 25 runs.
    replay_spans: int = 3
    replay_fraction: float = 0.03
    seed: int = 0
    # Passed to run_fn as fn_args.custom_config["model"]: the model's own knobs. The default model
    # (pipelines/ads_model.py) is wide & deep: a linear part over the hashed ids and every pair of them
    # crossed, AdaGrad at 0.05, beside the MLP; with count features (`counts`: decayed examples and
    # positives per id and per cross, kept in the model, learned from past spans only). {"wide": False}
    # is the deep-only model of before; {"fm": True} adds a DeepFM term. Chosen by benchmarks/learning.py
    # on two streams, settings chosen on simulator seed 0 and reported on seed 1 (benchmarks/RESULTS.md,
    # learning); its best row there also replays one span instead of three, which is not the default:
    # replay_spans also sets the ingest dedup horizon and the retention window.
    model: Dict[str, object] = dataclasses.field(default_factory=lambda: {
        "embedding_dim": 8, "hidden_units": [64, 32], "wide": True, "crosses": "all",
        "wide_learning_rate": 0.05, "counts": True})

    def validate(self) -> None:
        if "." not in self.run_fn:
            raise ConfigError(f"trainer.run_fn must be a dotted path like 'package.module.run_fn', got {self.run_fn!r}")
        for name in ("cold_epochs", "warm_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cold_learning_rate", "warm_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"trainer.{name} must be > 0, got {getattr(self, name)}")
        if self.learning_rate_schedule not in ("constant", "cosine"):
            raise ConfigError("trainer.learning_rate_schedule must be 'constant' or 'cosine', "
                              f"got {self.learning_rate_schedule!r}")
        if self.replay_spans < 0 or not 0.0 <= self.replay_fraction <= 1.0:
            raise ConfigError("trainer.replay_spans must be >= 0 and trainer.replay_fraction in [0, 1]")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainerConfig":
        return cls(**d)
