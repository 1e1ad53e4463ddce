"""BlessingPusher's settings: the serving folder and how many versions it keeps.

Composed into DriftlineConfig by pipelines/config.py, which re-exports this name.
"""
from __future__ import annotations

import dataclasses

from components.config_base import ConfigError


@dataclasses.dataclass(frozen=True)
class PusherConfig:
    """Where blessed models are served from (TF Serving's <dir>/<version>/ layout)."""

    serving_dir: str = ""  # default: <home>/serving
    keep_versions: int = 5

    def validate(self) -> None:
        if self.keep_versions < 1:
            raise ConfigError(f"pusher.keep_versions must be >= 1 (serving needs its current version), "
                              f"got {self.keep_versions}")
