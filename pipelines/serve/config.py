"""The `serve` section of DriftlineConfig: settings of `driftline serve` that belong to the pipeline.

Composed into DriftlineConfig by pipelines/config.py (and so into the YAML
file as `serve:`). What is per process (host, port, limits) stays a flag of
`driftline serve`.
"""
from __future__ import annotations

import dataclasses
import math

from components.config_base import ConfigError

DEFAULT_EXPLORATION_RATE = 0.02


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """driftline serve: shadow scoring, the ranking policy's exploration, champion/challenger routing."""

    # Off by default: a second model scoring every request costs CPU (off the request's path, in the
    # impressions thread, but on the same machine). `driftline serve --shadow` turns it on for one run.
    shadow: bool = False
    # How often ML Metadata is asked for a newer blessed candidate (besides after every swap).
    shadow_poll_seconds: float = 10.0
    # Epsilon of the ranking policy: a rank request's order is, with this probability, a uniformly random
    # permutation of its candidates instead of the score order, and every impression logs the probability
    # of its position (what an off-policy estimate of another model weights by). It costs served reward
    # (benchmarks/online_eval.py measures how much); 0 turns exploring off.
    exploration_rate: float = DEFAULT_EXPLORATION_RATE
    # How often ML Metadata is asked for the open champion/challenger comparison (its posteriors, a new or
    # ended challenger). Off the request's path.
    comparison_poll_seconds: float = 5.0

    def validate(self) -> "ServeConfig":
        if not self.shadow_poll_seconds > 0:
            raise ConfigError(f"serve.shadow_poll_seconds must be > 0, got {self.shadow_poll_seconds}")
        if not self.comparison_poll_seconds > 0:
            raise ConfigError(f"serve.comparison_poll_seconds must be > 0, got {self.comparison_poll_seconds}")
        check_exploration_rate(self.exploration_rate, "serve.exploration_rate")
        return self


def check_exploration_rate(rate: object, what: str) -> float:
    """`rate` as a float in [0, 1); a ConfigError naming `what` and the fix otherwise."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or \
            not 0 <= rate < 1:
        raise ConfigError(f"{what} must be a probability in [0, 1), got {rate!r}: e.g. "
                          f"{DEFAULT_EXPLORATION_RATE} (a random order for 2 % of rank requests), or 0 to rank by "
                          "score only")
    return float(rate)
