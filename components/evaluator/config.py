"""DriftlineEvaluator's settings: the gate's bounds.

Composed into DriftlineConfig by pipelines/config.py, which re-exports this name.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

from components.config_base import ConfigError
from components.event_schema import EventSchema
from components.evaluator.off_policy import ESTIMATORS


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """When a candidate is blessed: TFMA metrics on the newest span's eval split."""

    min_auc: float = 0.6
    # Calibration = mean prediction / mean label; 1.0 is perfect.
    min_calibration: float = 0.7
    max_calibration: float = 1.3
    # Log loss bound. None (the default) follows the eval split's label rate:
    # log loss <= max_log_loss_factor x the no-skill log loss (that of always
    # predicting the split's label rate), so it fits any positive rate. A number
    # is an absolute bound instead (and must suit the stream's positive rate).
    # The factor is a guardrail against garbage, not the quality check (that is
    # the paired test below): a model that ranks well but is overconfident on a
    # drifting span can sit above the no-skill log loss (the ad stream's
    # notebook run, 2026-12-05: 0.41-0.55 against 0.31-0.41), so 1.0 would
    # refuse it; 1.5 still refuses a model far worse than a constant.
    max_log_loss: Optional[float] = None
    max_log_loss_factor: float = 1.5
    # Against the baseline (the serving, latest blessed model), scored on the
    # same examples: the candidate is refused only when it is worse WITH
    # CONFIDENCE (one-sided, at `confidence`), by DeLong's test for the AUC
    # difference and a paired t-test for the log loss difference. The margins
    # are tolerated losses (non-inferiority): refused when the AUC is
    # confidently more than max_auc_drop below the baseline's, or the log loss
    # confidently more than max_log_loss_increase above it. Per slice, the same
    # AUC test at a Bonferroni-corrected confidence.
    confidence: float = 0.95
    max_auc_drop: float = 0.0
    max_log_loss_increase: float = 0.0
    # Data sanity: the eval span's label rate may be at most this many times
    # above or below what the baseline predicts on it. Flipped or broken
    # labels fool every relative metric (a candidate trained on them scores
    # well on them), not the serving model's calibration.
    max_label_shift: float = 2.5
    # Per-slice bound: every slice of this feature with enough examples must reach it.
    slice_feature: Optional[str] = "device"
    min_slice_auc: float = 0.55
    min_slice_examples: int = 200
    # Too little evidence: the AUC interval (lower to upper one-sided bound at
    # `confidence`) is wider than this. With a baseline it is the interval of
    # the AUC difference, else of the candidate's AUC. A tiny floor of
    # positives and negatives keeps the AUC and its variance defined.
    max_auc_interval_width: float = 0.1
    min_eval_positives: int = 10
    min_eval_negatives: int = 10
    # Thin spans: a verdict with too little evidence carries its eval splits to
    # the next cycle, whose candidate is scored on them as well as on the newest
    # span's, and does not train on them; at most this many carried splits (the
    # newest). 0: never carry. See components/warm_start_trainer/training_inputs.py.
    max_carried_eval_spans: int = 5
    # Deprecated (a fixed count is not evidence): use max_auc_interval_width.
    # When set it is still enforced as an extra floor, with a warning.
    min_eval_examples: Optional[int] = None
    # Data sanity: at most this share of the lines ingested for the cycle's
    # spans may be malformed (dead-lettered). The schema is declared once, not
    # inferred per span, so a producer that starts writing another shape shows
    # up here, and its span's model is kept out of serving.
    max_dead_letter_fraction: float = 0.05
    # The off-policy estimate (join mode, components/evaluator/off_policy.py): from the newest span's logged
    # impressions of the eval split (every scored candidate, with the exploring server's propensities), the
    # candidate's CTR per shown slot if it served, beside the served CTR, with bootstrap bounds at
    # `confidence`. `off_policy`: compute and record it (when the impressions carry propensities).
    # `off_policy_min_ratio`: gate on it: refuse when the lower bound of (estimate / served CTR), by
    # `off_policy_estimator`, is below this (e.g. 0.95: not confidently more than 5 % worse than what
    # serves); None (the default) records without gating. Fewer than `off_policy_min_explored_requests`
    # explored requests is too little exploration to judge: recorded, and not blocking.
    off_policy: bool = True
    off_policy_estimator: str = "snips"
    off_policy_min_ratio: Optional[float] = None
    off_policy_min_explored_requests: int = 100
    off_policy_bootstrap: int = 1000

    def validate(self, schema: EventSchema) -> None:
        if not 0.0 <= self.min_auc <= 1.0 or not 0.0 <= self.min_slice_auc <= 1.0:
            raise ConfigError("gate.min_auc and gate.min_slice_auc must be within [0, 1]")
        if not 0 < self.min_calibration <= 1.0 <= self.max_calibration:
            raise ConfigError("gate.min_calibration must be in (0, 1] and gate.max_calibration >= 1")
        if self.max_label_shift < 1.0:
            raise ConfigError(f"gate.max_label_shift is a fold change and must be >= 1, got {self.max_label_shift}")
        if (self.max_log_loss is not None and self.max_log_loss <= 0) or self.max_log_loss_factor <= 0:
            raise ConfigError("gate.max_log_loss must be > 0 (or None: relative to the label rate) and "
                              "gate.max_log_loss_factor > 0")
        if self.max_auc_drop < 0 or self.max_log_loss_increase < 0:
            raise ConfigError("gate.max_auc_drop and gate.max_log_loss_increase are tolerated losses: must be >= 0")
        if not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"gate.confidence is a one-sided confidence level in (0.5, 1), got {self.confidence}")
        if not self.max_auc_interval_width > 0:
            raise ConfigError(f"gate.max_auc_interval_width must be > 0, got {self.max_auc_interval_width}")
        if self.max_carried_eval_spans < 0:
            raise ConfigError(f"gate.max_carried_eval_spans must be >= 0 (0: never carry eval splits), got "
                              f"{self.max_carried_eval_spans}")
        if not 0.0 <= self.max_dead_letter_fraction <= 1.0:
            raise ConfigError(f"gate.max_dead_letter_fraction must be within [0, 1], got {self.max_dead_letter_fraction}")
        if self.min_eval_positives < 2 or self.min_eval_negatives < 2:
            raise ConfigError("gate.min_eval_positives and gate.min_eval_negatives must be >= 2: the AUC's "
                              "variance needs two of each class")
        if self.min_eval_examples is not None:
            if self.min_eval_examples < 1:
                raise ConfigError("gate.min_eval_examples must be >= 1 or None (deprecated: use "
                                  "gate.max_auc_interval_width)")
            warnings.warn("gate.min_eval_examples is deprecated: evidence is judged by the AUC interval's width "
                          "(gate.max_auc_interval_width); the fixed count is still enforced while it is set",
                          DeprecationWarning, stacklevel=2)
        if self.off_policy_estimator not in ESTIMATORS:
            raise ConfigError(f"gate.off_policy_estimator must be one of {list(ESTIMATORS)}, got "
                              f"{self.off_policy_estimator!r}")
        if self.off_policy_min_ratio is not None and not self.off_policy_min_ratio > 0:
            raise ConfigError(f"gate.off_policy_min_ratio is a share of the served CTR (e.g. 0.95) and must be > 0, "
                              f"or None to record the estimate without gating; got {self.off_policy_min_ratio}")
        if self.off_policy_min_ratio is not None and not self.off_policy:
            raise ConfigError("gate.off_policy_min_ratio gates on the off-policy estimate, which gate.off_policy: "
                              "false turns off: set gate.off_policy: true, or drop off_policy_min_ratio")
        if self.off_policy_min_explored_requests < 1:
            raise ConfigError(f"gate.off_policy_min_explored_requests must be >= 1, got "
                              f"{self.off_policy_min_explored_requests}")
        if self.off_policy_bootstrap < 100:
            raise ConfigError(f"gate.off_policy_bootstrap (bootstrap resamples) must be >= 100 for its bounds to "
                              f"mean anything, got {self.off_policy_bootstrap}")
        if self.slice_feature is not None and self.slice_feature not in schema.field_map:
            raise ConfigError(f"gate.slice_feature {self.slice_feature!r} is not a field of event schema "
                              f"{schema.name!r}; use one of {sorted(schema.field_map)} or None")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GateConfig":
        return cls(**d)
