"""The one configuration object of driftline.

Every default lives here. Components take these dataclasses (or the plain
values in them) so that a setting has exactly one home; the CLI and
`create_pipeline(config)` build them, and nothing else invents values.
This module imports nothing heavy, so it is cheap to load anywhere.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

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


NUMERIC_MODES = ("log_standardize", "standardize", "bucketize", "tft_z_score")


@dataclasses.dataclass(frozen=True)
class NumericTransform:
    """How one numeric feature is scaled; see transforms/stream.py for which modes are warm-start safe.

    `mean`/`std` are a *reference*: fixed numbers (for `log_standardize`, of
    log1p(x)), not statistics recomputed on each span, so a feature keeps its
    scale from one span to the next.
    """

    mode: str = "log_standardize"
    mean: float = 0.0
    std: float = 1.0
    boundaries: Tuple[float, ...] = ()

    def validate(self, name: str) -> None:
        if self.mode not in NUMERIC_MODES:
            raise ConfigError(f"transform.numeric[{name!r}].mode must be one of {NUMERIC_MODES}, got {self.mode!r}")
        if self.std <= 0:
            raise ConfigError(f"transform.numeric[{name!r}].std must be > 0, got {self.std}")
        if self.mode == "bucketize" and (not self.boundaries or list(self.boundaries) != sorted(self.boundaries)):
            raise ConfigError(f"transform.numeric[{name!r}]: bucketize needs sorted, non-empty boundaries")


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """Feature transforms built from the event schema (used through stock TFX Transform)."""

    # Buckets for a categorical field whose schema entry sets no hash_buckets.
    default_hash_buckets: int = 1000
    # Per numeric field; a numeric field not listed here gets NumericTransform().
    numeric: Dict[str, NumericTransform] = dataclasses.field(default_factory=lambda: {
        # Reference scale of log1p(price) on the built-in stream (log-normal prices around 1).
        "price": NumericTransform(mode="log_standardize", mean=0.74, std=0.32),
    })

    def validate(self, schema: EventSchema) -> None:
        if self.default_hash_buckets < 1:
            raise ConfigError("transform.default_hash_buckets must be >= 1")
        numeric_fields = {f.name for f in schema.feature_fields("numeric")}
        for name, spec in self.numeric.items():
            if name not in numeric_fields:
                raise ConfigError(f"transform.numeric names {name!r}, which is not a numeric feature of event "
                                  f"schema {schema.name!r} (numeric features: {sorted(numeric_fields)})")
            spec.validate(name)

    def for_field(self, name: str) -> NumericTransform:
        return self.numeric.get(name, NumericTransform())

    @property
    def uses_analyzers(self) -> bool:
        return any(spec.mode == "tft_z_score" for spec in self.numeric.values())

    def to_dict(self) -> dict:
        return {"default_hash_buckets": self.default_hash_buckets,
                "numeric": {k: dataclasses.asdict(v) for k, v in sorted(self.numeric.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> "TransformConfig":
        return cls(default_hash_buckets=d["default_hash_buckets"],
                   numeric={k: NumericTransform(**{**v, "boundaries": tuple(v.get("boundaries", ()))})
                            for k, v in d["numeric"].items()})


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
    transform: TransformConfig = dataclasses.field(default_factory=TransformConfig)
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
        self.transform.validate(self.source.schema)
        return self

    def replace(self, **changes) -> "DriftlineConfig":
        return dataclasses.replace(self, **changes)


def default_config(home: str, log_dir: Optional[str] = None) -> DriftlineConfig:
    """The configuration `make demo` uses: the built-in stream under `home`."""
    return DriftlineConfig(home=home, source=SourceConfig(log_dir=log_dir or os.path.join(home, "events")))
