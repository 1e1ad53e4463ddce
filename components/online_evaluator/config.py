"""Online evaluation's settings (the `online` section of the config file).

Composed into DriftlineConfig by pipelines/config.py, which re-exports this name.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from components.config_base import ConfigError
from components.online_evaluator.decision import DecisionRule, Guardrails, Prior


@dataclasses.dataclass(frozen=True)
class OnlineEvalConfig:
    """How a challenger is judged on live traffic against the champion (components/online_evaluator)."""

    # On (needs the `join` section): a blessed candidate is not pushed over a serving champion but deployed as
    # the challenger beside it, and each cycle's joined outcomes update the comparison (pipelines/online.py).
    # The first model (nothing serving) is pushed as before. Off: every blessed candidate is pushed.
    enabled: bool = False

    # The reward: the joined impression's field counted as one success when > 0, per impression. The
    # default, the label the join sets from the click outcomes, makes the reward clicks per impression.
    reward_field: str = "clicked"
    # Promote when P(challenger better) >= threshold, retire when P(worse) >= threshold ...
    threshold: float = 0.95
    # ... once the comparison has this many impressions (both arms together).
    min_impressions: int = 1000
    # ... and a promotion needs this many impressions served by the challenger itself (not counting draws for
    # it that fell back to the champion).
    min_challenger_impressions: int = 100
    # Each arm's Beta prior on its reward rate.
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    # Guardrails on the challenger (None: not checked); a breach retires it.
    max_latency_p99_ms: Optional[float] = None
    # The error rate's default: a challenger that fails half of the requests drawn for it is broken, not noisy
    # (it is tried no more after a failure, so the rate goes to 1); set it lower to retire on fewer errors.
    max_error_rate: Optional[float] = 0.5
    max_calibration_error: Optional[float] = None
    # ... judged once the challenger has this many requests drawn for it (latency p99, error rate) and this
    # many successes among its shown impressions (calibration): components/online_evaluator/guardrails.py.
    guardrail_min_requests: int = 100
    min_calibration_successes: int = 50

    def validate(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"online.enabled must be true or false, got {self.enabled!r}")
        if not isinstance(self.reward_field, str) or not self.reward_field:
            raise ConfigError(f"online.reward_field must name a field of the joined impressions, got "
                              f"{self.reward_field!r}")
        try:
            self.rule()
        except ValueError as e:
            raise ConfigError(f"online: {e}") from None
        for name in ("prior_alpha", "prior_beta"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"online.{name} must be finite")

    def rule(self) -> DecisionRule:
        return DecisionRule(threshold=self.threshold, min_impressions=self.min_impressions,
                            min_challenger_impressions=self.min_challenger_impressions,
                            prior=Prior(self.prior_alpha, self.prior_beta),
                            guardrails=Guardrails(self.max_latency_p99_ms, self.max_error_rate,
                                                  self.max_calibration_error, self.guardrail_min_requests,
                                                  self.min_calibration_successes))
