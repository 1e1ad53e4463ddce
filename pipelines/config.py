"""The one configuration object of driftline.

Every default lives here. Components take these dataclasses (or the plain
values in them) so that a setting has exactly one home; the CLI and
`create_pipeline(config)` build them, and nothing else invents values.
This module imports nothing heavy, so it is cheap to load anywhere.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

from components.event_schema import EventSchema, ad_click_schema


class ConfigError(ValueError):
    """A misconfiguration; the message names the setting and the fix."""


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """How events are cut into event-time spans."""

    span_seconds: int = 600
    # The watermark trails the newest event time by this much, so a span is
    # emitted only once events this late can no longer fall into it. Later
    # ones are not dropped: they go into the next emitted span as late events.
    allowed_lateness_seconds: int = 60
    # The last part of each span, in event time, becomes the eval split, so
    # evaluation data is always later than the training data of that span.
    eval_fraction: float = 0.2

    def validate(self) -> None:
        if self.span_seconds < 1:
            raise ConfigError(f"window.span_seconds must be >= 1, got {self.span_seconds}")
        if self.allowed_lateness_seconds < 0:
            raise ConfigError(f"window.allowed_lateness_seconds must be >= 0, got {self.allowed_lateness_seconds}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"window.eval_fraction must be strictly between 0 and 1, got {self.eval_fraction}")

    @property
    def span_ms(self) -> int:
        return self.span_seconds * 1000

    @property
    def allowed_lateness_ms(self) -> int:
        return self.allowed_lateness_seconds * 1000


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Where events come from and what they look like."""

    log_dir: str = ""
    schema: EventSchema = dataclasses.field(default_factory=ad_click_schema)
    # Unit of parallel reading; also bounds the memory one Beam worker needs.
    chunk_bytes: int = 8 << 20

    def validate(self) -> None:
        if not self.log_dir:
            raise ConfigError("source.log_dir is empty: set it to the event log folder "
                              "(for the built-in stream, the folder given to 'driftline simulate --log')")
        if self.chunk_bytes < 4096:
            raise ConfigError(f"source.chunk_bytes must be >= 4096, got {self.chunk_bytes}")
        self.schema.validate()


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """Arguments for the Beam steps. Locally: DirectRunner on every core."""

    runner: str = "DirectRunner"
    direct_num_workers: int = 0  # 0: one per core
    extra_args: tuple = ()

    def args(self) -> List[str]:
        if self.runner == "DirectRunner":
            # in_memory keeps one process: on 2 cores the multi_processing
            # start-up costs more than the parallelism gives back at span sizes.
            base = ["--runner=DirectRunner", f"--direct_num_workers={self.direct_num_workers}",
                    "--direct_running_mode=in_memory"]
        else:
            base = [f"--runner={self.runner}"]
        return base + list(self.extra_args)


@dataclasses.dataclass(frozen=True)
class DriftlineConfig:
    """Everything a driftline pipeline needs, in one place."""

    pipeline_name: str = "driftline"
    home: str = "driftline_home"
    source: SourceConfig = dataclasses.field(default_factory=SourceConfig)
    window: WindowConfig = dataclasses.field(default_factory=WindowConfig)
    beam: BeamConfig = dataclasses.field(default_factory=BeamConfig)

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.home, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.home, "metadata.sqlite")

    def validate(self) -> "DriftlineConfig":
        if not self.pipeline_name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"pipeline_name {self.pipeline_name!r} may hold only letters, digits, '-' and '_'")
        if not self.home:
            raise ConfigError("home is empty: set it to a folder for ML Metadata and artifacts")
        self.source.validate()
        self.window.validate()
        return self

    def replace(self, **changes) -> "DriftlineConfig":
        return dataclasses.replace(self, **changes)


def default_config(home: str, log_dir: Optional[str] = None) -> DriftlineConfig:
    """The configuration `make demo` uses: the built-in stream under `home`."""
    return DriftlineConfig(home=home, source=SourceConfig(log_dir=log_dir or os.path.join(home, "events")))
