"""DriftlineEvaluator's settings: the gate's bounds.

Composed into DriftlineConfig by pipelines/config.py, which re-exports this name.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from components.config_base import ConfigError
from components.event_schema import EventSchema


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """When a candidate is blessed: TFMA metrics on the newest span's eval split."""

    min_auc: float = 0.6
    # Calibration = mean prediction / mean label; 1.0 is perfect.
    min_calibration: float = 0.7
    max_calibration: float = 1.3
    max_log_loss: float = 0.6
    # Against the baseline (the serving, latest blessed model): the candidate
    # may lose at most this much AUC.
    max_auc_drop: float = 0.005
    # Data sanity: the eval span's label rate may be at most this many times
    # above or below what the baseline predicts on it. Flipped or broken
    # labels fool every relative metric (a candidate trained on them scores
    # well on them), not the serving model's calibration.
    max_label_shift: float = 2.5
    # Per-slice bound: every slice of this feature with enough examples must reach it.
    slice_feature: Optional[str] = "device"
    min_slice_auc: float = 0.55
    min_slice_examples: int = 200
    # Too little data is not evidence: below these the candidate is not blessed.
    min_eval_examples: int = 500
    min_eval_positives: int = 30
    # Data sanity: at most this share of the lines ingested for the cycle's
    # spans may be malformed (dead-lettered). The schema is declared once, not
    # inferred per span, so a producer that starts writing another shape shows
    # up here, and its span's model is kept out of serving.
    max_dead_letter_fraction: float = 0.05

    def validate(self, schema: EventSchema) -> None:
        if not 0.0 <= self.min_auc <= 1.0 or not 0.0 <= self.min_slice_auc <= 1.0:
            raise ConfigError("gate.min_auc and gate.min_slice_auc must be within [0, 1]")
        if not 0 < self.min_calibration <= 1.0 <= self.max_calibration:
            raise ConfigError("gate.min_calibration must be in (0, 1] and gate.max_calibration >= 1")
        if self.max_label_shift < 1.0:
            raise ConfigError(f"gate.max_label_shift is a fold change and must be >= 1, got {self.max_label_shift}")
        if self.max_log_loss <= 0 or self.max_auc_drop < 0:
            raise ConfigError("gate.max_log_loss must be > 0 and gate.max_auc_drop >= 0")
        if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
            raise ConfigError(f"gate.max_dead_letter_fraction must be within [0, 1], got {self.max_dead_letter_fraction}")
        if self.min_eval_examples < 1 or self.min_eval_positives < 1:
            raise ConfigError("gate.min_eval_examples and gate.min_eval_positives must be >= 1: "
                              "a gate that accepts no evidence is no gate")
        if self.slice_feature is not None and self.slice_feature not in schema.field_map:
            raise ConfigError(f"gate.slice_feature {self.slice_feature!r} is not a field of event schema "
                              f"{schema.name!r}; use one of {sorted(schema.field_map)} or None")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GateConfig":
        return cls(**d)
