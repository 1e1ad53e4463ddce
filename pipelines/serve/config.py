"""The `serve` section of DriftlineConfig: settings of `driftline serve` that belong to the pipeline.

Composed into DriftlineConfig by pipelines/config.py (and so into the YAML
file as `serve:`). What is per process (host, port, limits) stays a flag of
`driftline serve`.
"""
from __future__ import annotations

import dataclasses

from components.config_base import ConfigError


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """driftline serve: shadow scoring of the newest blessed model that is not serving."""

    # Off by default: a second model scoring every request costs CPU (off the request's path, in the
    # impressions thread, but on the same machine). `driftline serve --shadow` turns it on for one run.
    shadow: bool = False
    # How often ML Metadata is asked for a newer blessed candidate (besides after every swap).
    shadow_poll_seconds: float = 10.0

    def validate(self) -> "ServeConfig":
        if not self.shadow_poll_seconds > 0:
            raise ConfigError(f"serve.shadow_poll_seconds must be > 0, got {self.shadow_poll_seconds}")
        return self
