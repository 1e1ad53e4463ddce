"""The feature transforms' settings (transforms/stream.py), built from the event schema.

Composed into DriftlineConfig by pipelines/config.py, which re-exports these names.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from components.config_base import ConfigError
from components.event_schema import EventSchema


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
